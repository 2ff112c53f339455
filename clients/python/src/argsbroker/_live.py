"""A local copy of the args that a background thread keeps fresh by following WatchArgs."""
from __future__ import annotations

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


class LiveArgs:
    """The broker's args, kept fresh in the background: reading them is one
    attribute load, with no RPC and no lock.

    A daemon thread follows WatchArgs. When the broker goes away, the last
    args stay readable and the thread reconnects with jittered, capped
    exponential backoff (at most 1 s between tries). What it holds never goes
    back to an older revision. Create it in each worker process (in the
    lifespan hook, not before a fork).
    """

    def __init__(self, socket_path: str, channel: grpc.Channel, call: Any, first: Snapshot) -> None:
        self.socket_path = socket_path
        self._snapshot = first
        self._connected = True
        self._channel = channel
        self._call = call
        self._listeners: List[Callable[[Snapshot], None]] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="argsbroker-watch", daemon=True)
        self._thread.start()

    @property
    def snapshot(self) -> Snapshot:
        """The newest snapshot: revision, exact JSON text, and parsed value."""
        return self._snapshot

    @property
    def value(self) -> Any:
        """The whole document as Python objects (exact numbers). Read-only."""
        return self._snapshot.value

    @property
    def revision(self) -> int:
        return self._snapshot.revision

    @property
    def connected(self) -> bool:
        """Whether the watch on the broker is up right now."""
        return self._connected

    def get(self, pointer: str = "") -> Any:
        """The value at an RFC 6901 pointer in the local copy (no RPC).
        Raises ArgsNotFound if there is none."""
        return resolve(self._snapshot.value, pointer)

    def on_change(self, listener: Callable[[Snapshot], None]) -> None:
        """Calls ``listener(snapshot)`` on the watcher thread for each newer revision."""
        self._listeners.append(listener)

    def wait_for_revision(self, revision: int, timeout: Optional[float] = None) -> bool:
        """Blocks until the local copy is at ``revision`` or newer; False on timeout."""
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
        """Publishes ``snapshot`` if it is newer than the one held."""
        self._connected = True
        held = self._snapshot.revision
        if snapshot.revision < held:
            log.warning(
                "argsbroker: the broker at %s offers revision %d, older than the %d held; keeping the newer one",
                self.socket_path,
                snapshot.revision,
                held,
            )
            return
        if snapshot.revision == held:
            return
        with self._changed:
            self._snapshot = snapshot
            self._changed.notify_all()
        for listener in list(self._listeners):
            try:
                listener(snapshot)
            except Exception:  # a listener's bug must not stop the watch
                log.exception("argsbroker: an on_change listener failed")


def follow(socket_path: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT) -> LiveArgs:
    """Waits up to ``timeout`` seconds for the broker at ``socket_path``
    ($ARGSBROKER_SOCKET, else /tmp/argsbroker.sock), takes its current args and
    keeps them fresh in a background thread.

    Raises BrokerUnavailable, naming the socket, if no broker answers in time.
    """
    path = socket_from_env(socket_path)
    channel, call, first = wait_for_broker(
        path, timeout, lambda left: _open_watch(path, min(left, _FIRST_MESSAGE_LIMIT))
    )
    return LiveArgs(path, channel, call, first)
