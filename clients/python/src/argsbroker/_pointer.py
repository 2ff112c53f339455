"""RFC 6901 JSON pointers, resolved on the local copy (no RPC)."""
from __future__ import annotations

import re
from typing import Any

from ._client import ArgsNotFound

_INDEX = re.compile(r"0|[1-9][0-9]*")


class InvalidPointer(ValueError):
    """Not an RFC 6901 pointer: it must be "" or start with "/"; "~" only as "~0" or "~1"."""


def resolve(document: Any, pointer: str) -> Any:
    """The value at ``pointer`` in ``document``; ArgsNotFound if there is none."""
    if pointer == "":
        return document
    if not pointer.startswith("/"):
        raise InvalidPointer(f"JSON pointer {pointer!r} must be empty or start with '/'")
    value = document
    for token in pointer[1:].split("/"):
        if re.search(r"~(?![01])", token):
            raise InvalidPointer(f"JSON pointer {pointer!r} has a '~' not followed by 0 or 1")
        key = token.replace("~1", "/").replace("~0", "~")
        if isinstance(value, dict):
            if key not in value:
                raise ArgsNotFound(f"no value at JSON pointer {pointer!r}")
            value = value[key]
        elif isinstance(value, list):
            if not _INDEX.fullmatch(key) or int(key) >= len(value):
                raise ArgsNotFound(f"no value at JSON pointer {pointer!r}")
            value = value[int(key)]
        else:
            raise ArgsNotFound(f"no value at JSON pointer {pointer!r}")
    return value
