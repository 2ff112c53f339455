"""One family of exceptions: every error this package raises on purpose is an
``argsbroker.Error``. Subclasses keep the builtin base that fits the cause
(``ArgsRejected`` is a ``ValueError``, ``RevisionNotReached`` a
``TimeoutError``), so ``except ValueError`` keeps working. Messages are the
broker's own, as the Rust CLI prints them."""
from __future__ import annotations

import json
from typing import Optional


class Error(Exception):
    """Base of every argsbroker exception."""

    __module__ = "argsbroker"


class BrokerError(Error, RuntimeError):
    """The broker refused a request, failed, or could not be reached."""

    __module__ = "argsbroker"


class BrokerUnavailable(BrokerError, ConnectionError):
    """No broker answered on the socket (within the wait, where there was one)."""

    __module__ = "argsbroker"


class BrokerFailed(BrokerError):
    """The broker that serve() owns could not be started (or restarted)."""

    __module__ = "argsbroker"


class ArgsNotFound(BrokerError, LookupError):
    """The JSON pointer names nothing in the document."""

    __module__ = "argsbroker"


class RevisionConflict(BrokerError):
    """The broker refused a write or a canary's end because of its state
    (gRPC FAILED_PRECONDITION): a write's expected_revision was not the
    current revision (``current_revision`` then says which is), or a canary
    runs (a plain write, or a second canary, without ``force=``), or none
    runs (``promote()``, ``abort()``), or a canary selects no follower."""

    __module__ = "argsbroker"

    def __init__(self, message: str, current_revision: Optional[int] = None) -> None:
        super().__init__(message)
        #: On an expected_revision mismatch: the broker's current revision;
        #: None for the other refusals.
        self.current_revision = current_revision


class InvalidPointer(Error, ValueError):
    """Not an RFC 6901 pointer: it must be "" or start with "/"; "~" only as "~0"
    or "~1". Raised the same for a local read and a broker's GetArgs."""

    __module__ = "argsbroker"


class ArgsRejected(Error, ValueError):
    """The args were refused: they do not fit the model (pydantic's message),
    a validate callable said no, or the broker refused a write as invalid
    (not JSON, not an object, its --schema)."""

    __module__ = "argsbroker"

    def __init__(self, message: str, details: str) -> None:
        super().__init__(message)
        #: The reason alone: pydantic's message ("1 validation error for
        #: Settings ..."), validate's, or the broker's.
        self.details = details


class RevisionNotReached(Error, TimeoutError):
    """``get(min_revision=N)`` waited and the follower still serves an older revision."""

    __module__ = "argsbroker"

    def __init__(self, message: str, wanted: int, serving: int) -> None:
        super().__init__(message)
        self.wanted = wanted
        self.serving = serving


def quoted(text: str) -> str:
    """A string quoted as the Rust side prints one (``{:?}``): double quotes."""
    return json.dumps(text, ensure_ascii=False)
