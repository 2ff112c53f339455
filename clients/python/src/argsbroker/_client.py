"""The gRPC channel, the exact JSON decoding, and the one-shot client."""
from __future__ import annotations

import json
import logging
import os
import random
import time
import warnings
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Dict, Generic, Optional, TypeVar, Union

import grpc

from ._errors import (
    ArgsNotFound,
    ArgsRejected,
    BrokerError,
    BrokerUnavailable,
    InvalidPointer,
    RevisionConflict,
)
from ._pb import args_pb2, args_pb2_grpc

log = logging.getLogger("argsbroker")

#: The type of a snapshot's ``typed`` value: the model given to follow().
T = TypeVar("T")

#: The broker's own default for --socket.
DEFAULT_SOCKET = "/tmp/argsbroker.sock"
#: How long connect() and follow() wait for a broker that is not there yet.
DEFAULT_TIMEOUT = 10.0

#: Channel options every argsbroker client needs.
CHANNEL_OPTIONS = (
    # grpcio 1.57+ would send the socket path as the HTTP/2 :authority on a
    # unix: target; the broker's HTTP/2 layer rejects that as malformed.
    ("grpc.default_authority", "localhost"),
    # The broker bounds the document's size; take whatever it sends.
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    # Do not share connection state (and its reconnect backoff) with other
    # channels to the same socket, and reconnect within a second.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


def socket_from_env(socket_path: Optional[str] = None) -> str:
    """The socket to use: the argument, else $ARGSBROKER_SOCKET, else the broker's default."""
    return socket_path or os.environ.get("ARGSBROKER_SOCKET") or DEFAULT_SOCKET


def target(socket_path: str) -> str:
    """The gRPC target for a socket path."""
    return f"unix:{os.path.abspath(socket_path)}"


def open_channel(socket_path: str) -> grpc.Channel:
    """A gRPC channel to the broker's Unix socket, with the options it needs."""
    return grpc.insecure_channel(target(socket_path), options=CHANNEL_OPTIONS)


def stub(channel: Any) -> Any:
    """The generated stub (untyped code) for a sync or grpc.aio channel."""
    return args_pb2_grpc.ArgsBrokerStub(channel)  # type: ignore[no-untyped-call]


def _parse_int(text: str) -> Union[int, Decimal]:
    # Python refuses to convert integers of more than 4300 digits by default;
    # such a number stays exact as a Decimal instead of failing the document.
    try:
        return int(text)
    except ValueError:
        return Decimal(text)


def loads(text: Union[str, bytes]) -> Any:
    """Parses JSON text keeping every number exact: ints as int, the rest as Decimal."""
    return json.loads(text, parse_float=Decimal, parse_int=_parse_int)


@dataclass(frozen=True, eq=False)
class Snapshot(Generic[T]):
    """One revision of the args (or of the value at a pointer), as the broker
    sent it. ``Snapshot[Settings]``: one whose ``typed`` is a Settings."""

    __module__ = "argsbroker"

    #: The broker's revision; revisions only grow, and one names one document.
    revision: int
    #: The exact, compact JSON text the broker sent: numbers, key order and
    #: Unicode as the broker holds them. Serve this to echo the args exactly.
    json: str
    #: Hex SHA-256 of the whole document's text at this revision.
    sha256: str
    #: The parsed value: dicts, lists, str, bool, None, int, Decimal.
    #: Shared by every reader of this snapshot: treat it as read-only.
    value: Any
    #: The lineage of the broker's state this revision belongs to (an opaque
    #: id; "" from a broker that predates lineages). Revisions are ordered
    #: only within one lineage.
    lineage: str = ""
    #: ``value`` validated by the model given to follow() or args_lifespan()
    #: (a pydantic model instance, say); None without a model.
    typed: Optional[T] = None

    @classmethod
    def from_message(cls, message: args_pb2.Args) -> "Snapshot[Any]":
        return cls(
            revision=message.revision,
            json=message.json,
            sha256=message.sha256,
            value=loads(message.json),
            lineage=message.lineage,
        )


def translate(err: grpc.RpcError, socket_path: str, what: str) -> BrokerError | InvalidPointer | ArgsRejected:
    """A gRPC error as this package's exception for its cause: the same cause
    raises the same class on every path, with the broker's message (what the
    Rust CLI prints)."""
    code = err.code() if callable(getattr(err, "code", None)) else None
    details = (err.details() if callable(getattr(err, "details", None)) else None) or str(err)
    if code == grpc.StatusCode.NOT_FOUND:
        return ArgsNotFound(details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        if what == "GetArgs":
            return InvalidPointer(details)
        return ArgsRejected(details, details)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return RevisionConflict(details, _current_revision(err))
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return BrokerUnavailable(f"cannot connect to the broker at {socket_path}: {details}")
    name = code.name if code is not None else "error"
    return BrokerError(f"the broker at {socket_path} answered {what} with {name}: {details}")


#: Set by the broker on a revision conflict (and only then): its current revision.
CONFLICT_METADATA = "argsbroker-current-revision"


def _current_revision(err: grpc.RpcError) -> Optional[int]:
    """The revision a conflict's trailers name; None on any other refusal
    (a canary running, none running, read-only...)."""
    # (key, value) pairs: namedtuples from grpc, a Metadata from grpc.aio.
    trailers: Any = err.trailing_metadata() if callable(getattr(err, "trailing_metadata", None)) else None
    for key, value in trailers or ():
        if key == CONFLICT_METADATA:
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    return None


class Backoff:
    """Capped exponential backoff with jitter (half to all of each step), so that
    many workers that lost one broker do not all come back at the same instant."""

    def __init__(self, base: float, cap: float) -> None:
        self.base = base
        self.cap = cap
        self.step = base

    def reset(self) -> None:
        self.step = self.base

    def next(self) -> float:
        step = self.step
        self.step = min(self.step * 2, self.cap)
        return random.uniform(step / 2, step)


R = TypeVar("R")

#: The hint a BrokerUnavailable carries, as the Rust CLI gives it.
HINT = "(is the broker running? --socket / ARGSBROKER_SOCKET)"


def gave_up(socket_path: str, timeout: float, last: BaseException) -> BrokerUnavailable:
    return BrokerUnavailable(
        f"no broker answered at {socket_path} within {timeout:g} s {HINT} (last error: {last})"
    )


def wait_for_broker(
    socket_path: str, timeout: float, attempt: Callable[[float], R]
) -> R:
    """Calls ``attempt(seconds_left)`` until it stops raising BrokerUnavailable,
    for at most ``timeout`` seconds; then raises one clear BrokerUnavailable."""
    deadline = time.monotonic() + timeout
    backoff = Backoff(0.01, 1.0)
    warned = False
    while True:
        left = deadline - time.monotonic()
        try:
            return attempt(max(left, 0.1))
        except BrokerUnavailable as err:
            last = err
        left = deadline - time.monotonic()
        if left <= 0:
            raise gave_up(socket_path, timeout, last) from None
        if not warned:
            log.warning("no broker at %s yet; waiting up to %g s", socket_path, timeout)
            warned = True
        time.sleep(min(backoff.next(), left))


class Client:
    """A connection to the broker for one-off reads and writes (one RPC each).

    To read args on every request, use follow() instead: it keeps a local
    copy fresh and reads need no RPC.
    """

    def __init__(self, socket_path: str, channel: grpc.Channel) -> None:
        self.socket_path = socket_path
        self._channel = channel
        self._stub = stub(channel)

    def snapshot(self, pointer: str = "", timeout: Optional[float] = 10.0) -> Snapshot[Any]:
        """The document (or the value at an RFC 6901 pointer) with its revision."""
        try:
            reply = self._stub.GetArgs(args_pb2.GetArgsRequest(pointer=pointer), timeout=timeout)
        except grpc.RpcError as err:
            raise translate(err, self.socket_path, "GetArgs") from None
        return Snapshot.from_message(reply)

    def get(self, pointer: str = "", timeout: Optional[float] = 10.0) -> Any:
        """The document, or the value at an RFC 6901 pointer ("/model/name"), as
        Python objects with exact numbers. Raises ArgsNotFound for a missing value."""
        return self.snapshot(pointer, timeout).value

    def set(
        self,
        document: Any,
        expected_revision: Optional[int] = None,
        timeout: Optional[float] = 10.0,
        *,
        canary: Selector = None,
        bake: Optional[float] = None,
        force: bool = False,
    ) -> Snapshot[Any]:
        """Replaces the whole document (a dict, or JSON text). Returns the new snapshot.

        With ``canary`` (a selector: ``2``, ``"25%"``, ``"name=api-*"``) the
        result is a candidate that only the selected followers get; see
        ``patch``."""
        request = set_request(document, expected_revision, canary, bake, force)
        try:
            return Snapshot.from_message(self._stub.SetArgs(request, timeout=timeout))
        except grpc.RpcError as err:
            raise translate(err, self.socket_path, "SetArgs") from None

    def patch(
        self,
        merge_patch: Any,
        expected_revision: Optional[int] = None,
        timeout: Optional[float] = 10.0,
        *,
        canary: Selector = None,
        bake: Optional[float] = None,
        force: bool = False,
    ) -> Snapshot[Any]:
        """Applies an RFC 7386 merge patch (a dict, or JSON text): None removes a key.
        Returns the new snapshot.

        ``canary``: start a canary instead: the result (the candidate, a new
        revision, which is returned) goes only to the followers the selector
        picks (``2``: that many; ``"25%"``: a stable share by a hash of their
        names; ``"name=GLOB"``), while every other follower and every plain
        read keeps the stable revision, until ``promote()`` or ``abort()``.
        ``bake`` (seconds): the broker promotes it by itself once every
        selected follower has applied it for that long, and aborts it at the
        first rejection. ``force``: while a canary runs, abort it first
        instead of being refused (RevisionConflict, naming the canary)."""
        request = patch_request(merge_patch, expected_revision, canary, bake, force)
        try:
            return Snapshot.from_message(self._stub.PatchArgs(request, timeout=timeout))
        except grpc.RpcError as err:
            raise translate(err, self.socket_path, "PatchArgs") from None

    def rollback(
        self,
        to_revision: int,
        expected_revision: Optional[int] = None,
        timeout: Optional[float] = 10.0,
        *,
        canary: Selector = None,
        bake: Optional[float] = None,
        force: bool = False,
    ) -> Snapshot[Any]:
        """Makes a new revision with the content of retained revision
        ``to_revision`` (ArgsNotFound if it is not retained). ``canary``,
        ``bake`` and ``force`` as for ``patch``."""
        request = rollback_request(to_revision, expected_revision, canary, bake, force)
        try:
            return Snapshot.from_message(self._stub.Rollback(request, timeout=timeout))
        except grpc.RpcError as err:
            raise translate(err, self.socket_path, "Rollback") from None

    def promote(self, candidate_revision: Optional[int] = None, timeout: Optional[float] = 10.0) -> Snapshot[Any]:
        """Ends the running canary by giving its candidate to every follower and
        reader, as the same revision (returned). RevisionConflict if no canary
        runs, or ``candidate_revision`` is given and is not its candidate."""
        request = promote_request(candidate_revision)
        try:
            return Snapshot.from_message(self._stub.PromoteCanary(request, timeout=timeout))
        except grpc.RpcError as err:
            raise translate(err, self.socket_path, "PromoteCanary") from None

    def abort(
        self, reason: str = "", candidate_revision: Optional[int] = None, timeout: Optional[float] = 10.0
    ) -> Snapshot[Any]:
        """Drops the running canary: a new revision (returned) with the stable
        document, which every follower moves forward to. ``reason`` goes into
        the history (``aborted canary 12: REASON``). RevisionConflict as for
        ``promote``."""
        request = abort_request(reason, candidate_revision)
        try:
            return Snapshot.from_message(self._stub.AbortCanary(request, timeout=timeout))
        except grpc.RpcError as err:
            raise translate(err, self.socket_path, "AbortCanary") from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: A canary selector: a count (``2`` or ``"2"``), a share (``"25%"``),
#: ``"name=GLOB"`` or, with etcd, ``"host=NAME[,NAME...]"``; None: no canary.
Selector = Union[str, int, None]

#: The longest bake the broker takes (its bake_ms is a uint32).
_MAX_BAKE_MS = 2**32 - 1


def _canary_fields(canary: Selector, bake: Optional[float], force: bool) -> Dict[str, Any]:
    """A write's canary, bake_ms and force fields, checked as the CLI checks
    them (``bake`` only with ``canary``)."""
    if isinstance(canary, bool) or not isinstance(canary, (str, int, type(None))):
        raise TypeError(f"canary must be a selector (2, '25%', 'name=GLOB') or None, not {type(canary).__name__}")
    selector = "" if canary is None else str(canary)
    fields: Dict[str, Any] = {"canary": selector, "force": bool(force)}
    if bake is not None:
        if not selector:
            raise ValueError("bake= needs canary=: it is how long a canary's followers run it before it is promoted")
        bake_ms = round(float(bake) * 1000)
        if not 0 < bake_ms <= _MAX_BAKE_MS:
            raise ValueError(f"bake must be more than 0 and at most {_MAX_BAKE_MS // 1000} seconds, not {bake!r}")
        fields["bake_ms"] = bake_ms
    return fields


def set_request(
    document: Any,
    expected_revision: Optional[int],
    canary: Selector = None,
    bake: Optional[float] = None,
    force: bool = False,
) -> args_pb2.SetArgsRequest:
    """The SetArgs request of the sync and async clients."""
    request = args_pb2.SetArgsRequest(json=_encode_exact(document), **_canary_fields(canary, bake, force))
    if expected_revision is not None:
        request.expected_revision = expected_revision
    return request


def patch_request(
    merge_patch: Any,
    expected_revision: Optional[int],
    canary: Selector = None,
    bake: Optional[float] = None,
    force: bool = False,
) -> args_pb2.PatchArgsRequest:
    """The PatchArgs request of the sync and async clients."""
    request = args_pb2.PatchArgsRequest(merge_patch=_encode_exact(merge_patch), **_canary_fields(canary, bake, force))
    if expected_revision is not None:
        request.expected_revision = expected_revision
    return request


def rollback_request(
    to_revision: int,
    expected_revision: Optional[int],
    canary: Selector = None,
    bake: Optional[float] = None,
    force: bool = False,
) -> args_pb2.RollbackRequest:
    """The Rollback request of the sync and async clients."""
    request = args_pb2.RollbackRequest(to_revision=to_revision, **_canary_fields(canary, bake, force))
    if expected_revision is not None:
        request.expected_revision = expected_revision
    return request


def promote_request(candidate_revision: Optional[int]) -> args_pb2.PromoteCanaryRequest:
    request = args_pb2.PromoteCanaryRequest()
    if candidate_revision is not None:
        request.candidate_revision = candidate_revision
    return request


def abort_request(reason: str, candidate_revision: Optional[int]) -> args_pb2.AbortCanaryRequest:
    request = args_pb2.AbortCanaryRequest(reason=reason)
    if candidate_revision is not None:
        request.candidate_revision = candidate_revision
    return request


def _encode_exact(document: Any) -> str:
    """JSON text for a write: text passes through; Python objects are encoded
    compactly, with Decimal values written digit for digit."""
    if isinstance(document, bytes):
        return document.decode("utf-8")
    if isinstance(document, str):
        return document
    return _dump(document)


def _dump(value: Any) -> str:
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be str, not {type(key).__name__}")
            items.append(json.dumps(key, ensure_ascii=False) + ":" + _dump(item))
        return "{" + ",".join(items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_dump(item) for item in value) + "]"
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} is not a JSON number")
        return str(value)
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def connect(
    socket: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT, *, socket_path: Optional[str] = None
) -> Client:
    """Connects to the broker at ``socket`` ($ARGSBROKER_SOCKET, else
    /tmp/argsbroker.sock), waiting up to ``timeout`` seconds for it to answer.

    Raises BrokerUnavailable, naming the socket, if no broker answers in time.
    In async code use ``connect_async`` (an AsyncClient, on grpc.aio).
    (``socket_path=`` is the deprecated name of ``socket``.)
    """
    if socket_path is not None:
        warnings.warn("connect(socket_path=...) is deprecated; use connect(socket=...)", DeprecationWarning, stacklevel=2)
    path = socket_from_env(socket or socket_path)

    def attempt(left: float) -> Client:
        # A fresh channel per attempt: each try connects now, not after
        # grpc's own reconnect backoff.
        channel = open_channel(path)
        try:
            stub(channel).GetArgs(
                args_pb2.GetArgsRequest(pointer=""), timeout=min(left, 2.0)
            )
        except grpc.RpcError as err:
            channel.close()
            raise translate(err, path, "GetArgs") from None
        return Client(path, channel)

    return wait_for_broker(path, timeout, attempt)
