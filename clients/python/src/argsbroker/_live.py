"""A local copy of the args that a background thread keeps fresh by following WatchArgs."""
from __future__ import annotations

import asyncio
import dataclasses
import threading
from typing import Any, Callable, List, Optional, Tuple

import grpc

from ._client import (
    DEFAULT_TIMEOUT,
    Backoff,
    BrokerError,
    BrokerUnavailable,
    Snapshot,
    log,
    open_channel,
    socket_from_env,
    translate,
    wait_for_broker,
)
from ._model import ArgsRejected, Validator, validator
from ._pb import args_pb2, args_pb2_grpc
from ._pointer import resolve

#: How long one attempt may wait for the first message of a watch.
_FIRST_MESSAGE_LIMIT = 5.0


def _open_watch(socket_path: str, limit: float) -> Tuple[grpc.Channel, Any, Snapshot]:
    """Opens WatchArgs on a fresh channel and reads its first message, the
    broker's current snapshot, giving up after ``limit`` seconds."""
    channel = open_channel(socket_path)
    call = args_pb2_grpc.ArgsBrokerStub(channel).WatchArgs(args_pb2.WatchArgsRequest())
    # A stream has no per-message deadline; a timer cancels a silent one.
    guard = threading.Timer(limit, call.cancel)
    guard.daemon = True
    guard.start()
    try:
        first = next(call)
    except StopIteration:
        channel.close()
        raise BrokerUnavailable("the broker ended the watch before sending a snapshot") from None
    except grpc.RpcError as err:
        channel.close()
        if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise BrokerUnavailable(f"{err.code().name}: {err.details()}") from None
        raise translate(err, socket_path, "WatchArgs") from None
    finally:
        guard.cancel()
    try:
        snapshot = Snapshot.from_message(first)
    except ValueError as err:
        channel.close()
        raise BrokerError(f"the broker at {socket_path} sent args that are not valid JSON: {err}") from None
    return channel, call, snapshot


#: What a follower does with a snapshot the broker offers (see _verdict).
NEWER, SAME, OLDER, NEW_LINEAGE = "newer", "same", "older", "new lineage"


def _verdict(held: Snapshot, offered: Snapshot) -> str:
    """The lineage rule every follower keeps: within one lineage never go back
    to an older revision; a different lineage, or the same revision with a
    different sha256, means the broker's state was reset or replaced, and its
    document is adopted at once."""
    if offered.lineage != held.lineage:
        return NEW_LINEAGE
    if offered.revision == held.revision:
        return SAME if offered.sha256 == held.sha256 else NEW_LINEAGE
    return NEWER if offered.revision > held.revision else OLDER


@dataclasses.dataclass(frozen=True)
class Rejection:
    """A revision the broker served that the model refused; the previous one is kept."""

    revision: int
    lineage: str
    #: The validation error's text (pydantic's message).
    error: str


class LiveArgs:
    """The broker's args, kept fresh in the background: reading them is one
    attribute load, with no RPC and no lock.

    A daemon thread follows WatchArgs. When the broker goes away, the last
    args stay readable and the thread reconnects with jittered, capped
    exponential backoff (at most 1 s between tries). Within one lineage of
    the broker's state what it holds never goes back to an older revision; a
    new lineage (the broker's state was reset or replaced) is adopted at once.
    With a model, a revision that fails it is rejected (logged, and kept in
    ``rejected``) and the previous one stays. Create it in each worker process
    (in the lifespan hook, not before a fork).
    """

    def __init__(
        self,
        socket_path: str,
        channel: grpc.Channel,
        call: Any,
        first: Snapshot,
        validate: Optional[Validator] = None,
    ) -> None:
        self.socket_path = socket_path
        self._validate = validate
        self._snapshot = first
        self._connected = True
        self._channel = channel
        self._call = call
        self._listeners: List[Callable[[Snapshot], None]] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._waiters: List[Tuple[asyncio.AbstractEventLoop, "asyncio.Future[bool]", int]] = []
        self._rejected: Optional[Rejection] = None
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="argsbroker-watch", daemon=True)
        self._thread.start()

    @property
    def snapshot(self) -> Snapshot:
        """The newest accepted snapshot: revision, lineage, exact JSON text,
        parsed value (and ``typed``, with a model)."""
        return self._snapshot

    @property
    def value(self) -> Any:
        """The whole document as Python objects (exact numbers). Read-only."""
        return self._snapshot.value

    @property
    def typed(self) -> Any:
        """The document validated by the model (None without one). Read-only."""
        return self._snapshot.typed

    @property
    def revision(self) -> int:
        return self._snapshot.revision

    @property
    def lineage(self) -> str:
        return self._snapshot.lineage

    @property
    def connected(self) -> bool:
        """Whether the watch on the broker is up right now."""
        return self._connected

    @property
    def rejected(self) -> Optional[Rejection]:
        """The last revision the model refused, if it is newer than the one served."""
        return self._rejected

    def get(self, pointer: str = "") -> Any:
        """The value at an RFC 6901 pointer in the local copy (no RPC).
        Raises ArgsNotFound if there is none."""
        return resolve(self._snapshot.value, pointer)

    def on_change(self, listener: Callable[[Snapshot], None]) -> None:
        """Calls ``listener(snapshot)`` on the watcher thread for each revision adopted."""
        self._listeners.append(listener)

    async def wait_for_revision(self, revision: int, timeout: Optional[float] = None) -> bool:
        """Waits (without blocking the event loop, and without a thread) until
        the local copy is at ``revision`` or newer; False on timeout."""
        loop = asyncio.get_running_loop()
        future: "asyncio.Future[bool]" = loop.create_future()
        with self._changed:
            if self._snapshot.revision >= revision:
                return True
            waiter = (loop, future, revision)
            self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            return False
        finally:
            with self._changed:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def wait_for_revision_blocking(self, revision: int, timeout: Optional[float] = None) -> bool:
        """Blocks the calling thread until the local copy is at ``revision`` or
        newer; False on timeout. (In async code, await wait_for_revision.)"""
        with self._changed:
            return self._changed.wait_for(lambda: self._snapshot.revision >= revision, timeout)

    def close(self) -> None:
        """Stops following the broker. The last args stay readable."""
        self._closed.set()
        with self._lock:
            self._call.cancel()
            self._channel.close()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=2.0)

    def __enter__(self) -> "LiveArgs":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _follow(self) -> None:
        backoff = Backoff(0.02, 1.0)
        while True:
            reason = self._drain(self._call)
            if self._closed.is_set():
                return
            self._connected = False
            log.warning(
                "argsbroker: lost the broker at %s (%s); serving revision %d while reconnecting",
                self.socket_path,
                reason,
                self._snapshot.revision,
            )
            self._channel.close()
            backoff.reset()
            while True:
                if self._closed.wait(backoff.next()):
                    return
                try:
                    channel, call, first = _open_watch(self.socket_path, _FIRST_MESSAGE_LIMIT)
                except BrokerError as err:
                    log.debug("argsbroker: broker at %s still unreachable: %s", self.socket_path, err)
                    continue
                with self._lock:
                    if self._closed.is_set():
                        call.cancel()
                        channel.close()
                        return
                    self._channel, self._call = channel, call
                self._apply(first)
                log.warning(
                    "argsbroker: reconnected to the broker at %s; serving revision %d",
                    self.socket_path,
                    self._snapshot.revision,
                )
                break

    def _drain(self, call: Any) -> str:
        """Applies every message of an open watch; returns why it ended."""
        try:
            for message in call:
                try:
                    snapshot = Snapshot.from_message(message)
                except ValueError as err:
                    log.warning("argsbroker: ignoring revision %d: not valid JSON: %s", message.revision, err)
                    continue
                self._apply(snapshot)
            return "the broker ended the watch"
        except grpc.RpcError as err:
            return f"{err.code().name}: {err.details()}"

    def _apply(self, snapshot: Snapshot) -> None:
        """Adopts ``snapshot`` if the lineage rule says so and the model accepts it."""
        self._connected = True
        held = self._snapshot
        verdict = _verdict(held, snapshot)
        if verdict == SAME:
            return
        if verdict == OLDER:
            log.warning(
                "argsbroker: the broker at %s offers revision %d, older than the %d held; keeping the newer one",
                self.socket_path,
                snapshot.revision,
                held.revision,
            )
            return
        if self._validate is not None:
            try:
                snapshot = dataclasses.replace(snapshot, typed=self._validate(snapshot))
            except ArgsRejected as err:
                rejection = Rejection(snapshot.revision, snapshot.lineage, err.details)
                if rejection != self._rejected:
                    log.warning(
                        "argsbroker: rejected revision %d from the broker at %s: %s; still serving revision %d",
                        snapshot.revision,
                        self.socket_path,
                        err,
                        held.revision,
                    )
                self._rejected = rejection
                return
        if verdict == NEW_LINEAGE:
            log.warning(
                "the broker's args have a new lineage (its state was reset or replaced); serving its revision %d",
                snapshot.revision,
            )
        self._rejected = None
        with self._changed:
            self._snapshot = snapshot
            self._changed.notify_all()
            ready = [w for w in self._waiters if snapshot.revision >= w[2]]
            for waiter in ready:
                self._waiters.remove(waiter)
        for loop, future, _ in ready:
            try:
                loop.call_soon_threadsafe(_settle, future)
            except RuntimeError:  # that event loop is closed: nobody waits any more
                pass
        for listener in list(self._listeners):
            try:
                listener(snapshot)
            except Exception:  # a listener's bug must not stop the watch
                log.exception("argsbroker: an on_change listener failed")


def _settle(future: "asyncio.Future[bool]") -> None:
    if not future.done():
        future.set_result(True)


def follow(
    socket_path: Optional[str] = None,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    model: Any = None,
) -> LiveArgs:
    """Waits up to ``timeout`` seconds for the broker at ``socket_path``
    ($ARGSBROKER_SOCKET, else /tmp/argsbroker.sock), takes its current args and
    keeps them fresh in a background thread.

    With ``model`` (a pydantic model, or any type pydantic can validate), every
    revision is validated before it is served: ``live.typed`` is the model
    instance. A first document that fails raises ArgsRejected with pydantic's
    message; a later one is rejected and the previous one kept.

    Raises BrokerUnavailable, naming the socket, if no broker answers in time.
    """
    path = socket_from_env(socket_path)
    validate = validator(model) if model is not None else None
    channel, call, first = wait_for_broker(
        path, timeout, lambda left: _open_watch(path, min(left, _FIRST_MESSAGE_LIMIT))
    )
    if validate is not None:
        try:
            first = dataclasses.replace(first, typed=validate(first))
        except ArgsRejected:
            call.cancel()
            channel.close()
            raise
    return LiveArgs(path, channel, call, first, validate)
