"""RFC 6901 JSON pointers, resolved on the local copy (no RPC)."""
from __future__ import annotations

import re
from typing import Any

from ._errors import ArgsNotFound, InvalidPointer, quoted

_INDEX = re.compile(r"0|[1-9][0-9]*")


def resolve(document: Any, pointer: str, revision: int) -> Any:
    """The value at ``pointer`` in ``document`` (at ``revision``); ArgsNotFound
    if there is none, InvalidPointer if it is not a pointer. The messages are
    the broker's, so a local read and a GetArgs fail alike."""
    if pointer == "":
        return document
    if not pointer.startswith("/"):
        raise InvalidPointer(f"invalid JSON pointer {quoted(pointer)}: it must be empty or start with '/'")
    if re.search(r"~(?![01])", pointer):
        raise InvalidPointer(f"invalid JSON pointer {quoted(pointer)}: '~' must be followed by '0' or '1'")
    missing = f"no value at JSON pointer {quoted(pointer)} in revision {revision}"
    value = document
    for token in pointer[1:].split("/"):
        key = token.replace("~1", "/").replace("~0", "~")
        if isinstance(value, dict):
            if key not in value:
                raise ArgsNotFound(missing)
            value = value[key]
        elif isinstance(value, list):
            if not _INDEX.fullmatch(key) or int(key) >= len(value):
                raise ArgsNotFound(missing)
            value = value[int(key)]
        else:
            raise ArgsNotFound(missing)
    return value
