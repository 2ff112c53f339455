"""The gRPC channel, the exact JSON decoding, and the one-shot client."""
from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Optional, TypeVar, Union

import grpc

from ._pb import args_pb2, args_pb2_grpc

log = logging.getLogger("argsbroker")

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


class BrokerError(RuntimeError):
    """The broker refused a request, or could not be reached."""


class BrokerUnavailable(BrokerError):
    """No broker answered on the socket (within the wait, where there was one)."""


class ArgsNotFound(BrokerError, LookupError):
    """The JSON pointer names nothing in the document."""


class RevisionConflict(BrokerError):
    """A write's expected_revision was not the broker's current revision."""


def socket_from_env(socket_path: Optional[str] = None) -> str:
    """The socket to use: the argument, else $ARGSBROKER_SOCKET, else the broker's default."""
    return socket_path or os.environ.get("ARGSBROKER_SOCKET") or DEFAULT_SOCKET


def open_channel(socket_path: str) -> grpc.Channel:
    """A gRPC channel to the broker's Unix socket, with the options it needs."""
    return grpc.insecure_channel(f"unix:{os.path.abspath(socket_path)}", options=CHANNEL_OPTIONS)


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
class Snapshot:
    """One revision of the args (or of the value at a pointer), as the broker sent it."""

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
    typed: Any = None

    @classmethod
    def from_message(cls, message: args_pb2.Args) -> "Snapshot":
        return cls(
            revision=message.revision,
            json=message.json,
            sha256=message.sha256,
            value=loads(message.json),
            lineage=message.lineage,
        )


def translate(err: grpc.RpcError, socket_path: str, what: str) -> BrokerError:
    """A gRPC error as one of this package's exceptions."""
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else str(err)
    if code == grpc.StatusCode.NOT_FOUND:
        return ArgsNotFound(details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return BrokerError(f"{what}: invalid argument: {details}")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return RevisionConflict(details)
    if code == grpc.StatusCode.UNAVAILABLE:
        return BrokerUnavailable(f"no broker answered at {socket_path}: {details}")
    name = code.name if code is not None else "error"
    return BrokerError(f"{what} at {socket_path} failed: {name}: {details}")


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


T = TypeVar("T")


def wait_for_broker(
    socket_path: str, timeout: float, attempt: Callable[[float], T]
) -> T:
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
            raise BrokerUnavailable(
                f"no argsbroker answered at {socket_path} within {timeout:g} s "
                f"(is the broker running with --socket {socket_path}?); last error: {last}"
            ) from None
        if not warned:
            log.warning("argsbroker: no broker at %s yet; waiting up to %g s", socket_path, timeout)
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
        self._stub = args_pb2_grpc.ArgsBrokerStub(channel)

    def snapshot(self, pointer: str = "", timeout: Optional[float] = 10.0) -> Snapshot:
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

    def set(self, document: Any, expected_revision: Optional[int] = None, timeout: Optional[float] = 10.0) -> Snapshot:
        """Replaces the whole document (a dict, or JSON text). Returns the new snapshot."""
        request = args_pb2.SetArgsRequest(json=_encode_exact(document))
        if expected_revision is not None:
            request.expected_revision = expected_revision
        try:
            return Snapshot.from_message(self._stub.SetArgs(request, timeout=timeout))
        except grpc.RpcError as err:
            raise translate(err, self.socket_path, "SetArgs") from None

    def patch(self, merge_patch: Any, expected_revision: Optional[int] = None, timeout: Optional[float] = 10.0) -> Snapshot:
        """Applies an RFC 7386 merge patch (a dict, or JSON text): None removes a key.
        Returns the new snapshot."""
        request = args_pb2.PatchArgsRequest(merge_patch=_encode_exact(merge_patch))
        if expected_revision is not None:
            request.expected_revision = expected_revision
        try:
            return Snapshot.from_message(self._stub.PatchArgs(request, timeout=timeout))
        except grpc.RpcError as err:
            raise translate(err, self.socket_path, "PatchArgs") from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


def connect(socket_path: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT) -> Client:
    """Connects to the broker at ``socket_path`` ($ARGSBROKER_SOCKET, else
    /tmp/argsbroker.sock), waiting up to ``timeout`` seconds for it to answer.

    Raises BrokerUnavailable, naming the socket, if no broker answers in time.
    """
    path = socket_from_env(socket_path)

    def attempt(left: float) -> Client:
        # A fresh channel per attempt: each try connects now, not after
        # grpc's own reconnect backoff.
        channel = open_channel(path)
        try:
            args_pb2_grpc.ArgsBrokerStub(channel).GetArgs(
                args_pb2.GetArgsRequest(pointer=""), timeout=min(left, 2.0)
            )
        except grpc.RpcError as err:
            channel.close()
            if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise BrokerUnavailable(f"{err.code().name}: {err.details()}") from None
            raise translate(err, path, "GetArgs") from None
        return Client(path, channel)

    return wait_for_broker(path, timeout, attempt)
