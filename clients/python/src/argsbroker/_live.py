"""A local copy of the args that a background thread keeps fresh by following
the broker (Follow, reporting what it applied; WatchArgs from a broker without it)."""
from __future__ import annotations

import asyncio
import dataclasses
import os
import queue
import sys
import threading
import warnings
import weakref
from typing import Any, Callable, Generic, Iterator, List, Optional, Tuple, Type, TypeVar, cast, overload

import grpc

from ._client import (
    DEFAULT_TIMEOUT,
    Backoff,
    Snapshot,
    log,
    open_channel,
    socket_from_env,
    stub,
    translate,
    wait_for_broker,
)
from ._errors import ArgsRejected, BrokerError, BrokerUnavailable, RevisionNotReached
from ._model import Validator, validator
from ._pb import args_pb2
from ._pointer import resolve

T = TypeVar("T")
M = TypeVar("M")

#: How long one attempt may wait for the first message of a watch.
_FIRST_MESSAGE_LIMIT = 5.0

#: What a user's validate callable may be: it takes the Snapshot (``typed``
#: set when there is a model) and rejects it by raising, or by returning an
#: error string (or False); None or True accepts it.
Validate = Callable[[Snapshot[Any]], Any]


#: Names a follower when the program does not (``follow(name=)``): set it
#: per worker process (e.g. ``api-3``) so that a canary selects workers by
#: names that survive their restarts.
NAME_VARIABLE = "ARGSBROKER_NAME"


def default_name() -> str:
    """How a follower names itself unless told: $ARGSBROKER_NAME, else this
    program's file name (``app.py``, ``uvicorn``; the package for ``python
    -m pkg``), else "python"."""
    named = os.environ.get(NAME_VARIABLE)
    if named:
        return named
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 in ("", "-c", "-m", "-"):
        return "python"
    base = os.path.basename(argv0)
    if base == "__main__.py":
        return os.path.basename(os.path.dirname(argv0)) or "python"
    return base or "python"


class _Reports:
    """The request side of one Follow call: FollowRequests queued for grpc's
    sending thread, until closed."""

    def __init__(self) -> None:
        self._queue: "queue.SimpleQueue[Optional[args_pb2.FollowRequest]]" = queue.SimpleQueue()

    def send(self, request: args_pb2.FollowRequest) -> None:
        self._queue.put(request)

    def close(self) -> None:
        """Ends the request stream, so that grpc's thread reading it stops."""
        self._queue.put(None)

    def __iter__(self) -> Iterator[args_pb2.FollowRequest]:
        while True:
            request = self._queue.get()
            if request is None:
                return
            yield request


def _one_line(text: str) -> str:
    """A multi-line message (pydantic's) as one line, for one log record."""
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _first_message(call: Any, limit: float) -> Any:
    """The first message of a stream; a timer cancels one that stays silent."""
    guard = threading.Timer(limit, call.cancel)
    guard.daemon = True
    guard.start()
    try:
        return next(call)
    finally:
        guard.cancel()


def _open_watch(
    socket_path: str,
    limit: float,
    name: str,
    position: Optional[args_pb2.FollowRequest] = None,
) -> Tuple[grpc.Channel, Any, Snapshot[Any], Optional[_Reports]]:
    """Opens Follow on a fresh channel (its first request names this follower
    and states ``position``, if any) and reads its first message, the broker's
    current snapshot, giving up after ``limit`` seconds. A broker without
    Follow (UNIMPLEMENTED) is watched with WatchArgs instead, and gets no
    reports (None)."""
    channel = open_channel(socket_path)
    broker = stub(channel)
    follow_reports = _Reports()
    reports: Optional[_Reports] = follow_reports
    hello = args_pb2.FollowRequest()
    if position is not None:
        hello.CopyFrom(position)
    hello.name = name
    follow_reports.send(hello)
    what = "Follow"
    try:
        try:
            call = broker.Follow(iter(follow_reports))
            first = _first_message(call, limit)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            # A broker from before Follow: watch, without reports.
            follow_reports.close()
            reports, what = None, "WatchArgs"
            call = broker.WatchArgs(args_pb2.WatchArgsRequest())
            first = _first_message(call, limit)
    except StopIteration:
        _close(channel, reports)
        raise BrokerUnavailable(f"the broker ended {what} before sending a snapshot") from None
    except grpc.RpcError as err:
        _close(channel, reports)
        if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise BrokerUnavailable(f"{err.code().name}: {err.details()}") from None
        raise translate(err, socket_path, what) from None
    try:
        snapshot = Snapshot.from_message(first)
    except ValueError as err:
        call.cancel()
        _close(channel, reports)
        raise BrokerError(f"the broker at {socket_path} sent args that are not valid JSON: {err}") from None
    return channel, call, snapshot, reports


def _close(channel: grpc.Channel, reports: Optional[_Reports]) -> None:
    if reports is not None:
        reports.close()
    channel.close()


#: What a follower does with a snapshot the broker offers (see _verdict).
NEWER, SAME, OLDER, NEW_LINEAGE = "newer", "same", "older", "new lineage"


def _verdict(held: Snapshot[Any], offered: Snapshot[Any]) -> str:
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
    """A revision the broker served that this follower refused (its model or
    its validate said no); the previous one is kept."""

    __module__ = "argsbroker"

    revision: int
    lineage: str
    #: Why: pydantic's message for a model, validate's error otherwise; what
    #: the broker is told (rejected_reason).
    reason: str

    @property
    def error(self) -> str:
        """Deprecated: the same as ``reason``."""
        warnings.warn("Rejection.error is deprecated; use Rejection.reason", DeprecationWarning, stacklevel=2)
        return self.reason


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=3)


def checker(model: Any = None, validate: Optional[Validate] = None) -> Optional[Validator]:
    """One Validator for a model and a user's validate: returns the typed
    value (None without a model) or raises ArgsRejected with the reason."""
    typed_by = validator(model) if model is not None else None
    if typed_by is None and validate is None:
        return None

    def check(snapshot: Snapshot[Any]) -> Any:
        typed = typed_by(snapshot) if typed_by is not None else None
        if validate is None:
            return typed
        try:
            verdict = validate(dataclasses.replace(snapshot, typed=typed))
        except ArgsRejected:
            raise
        except Exception as err:  # the user's check said no by raising
            reason = str(err) or type(err).__name__
        else:
            if verdict is None or verdict is True:
                return typed
            reason = verdict if isinstance(verdict, str) and verdict else "rejected by validate"
        raise ArgsRejected(f"validate rejected the broker's args at revision {snapshot.revision}: {reason}", reason)

    return check


class LiveArgs(Generic[T]):
    """The broker's args, kept fresh in the background: reading them is one
    attribute load, with no RPC and no lock.

    A daemon thread follows the broker on a Follow stream, naming this
    follower (``name``) and telling the broker, after each revision, which one
    it serves and the last one it rejected (see ``broker status``); from a
    broker without Follow it watches WatchArgs and reports nothing. When the
    broker goes away, the last args stay readable and the thread reconnects
    with jittered, capped exponential backoff (at most 1 s between tries).
    Within one lineage of the broker's state what it holds never goes back to
    an older revision; a new lineage (the broker's state was reset or
    replaced) is adopted at once. With a model or a validate callable, a
    revision that fails is rejected (logged, kept in ``rejected``, reported to
    the broker) and the previous one stays. Create it in each worker process
    (in the lifespan hook, not before a fork); one created before a fork is
    re-armed in the child (a new connection and thread, one warning).

    ``LiveArgs[Settings]`` (what ``follow(model=Settings)`` returns): ``typed``
    and ``snapshot.typed`` are Settings instances.
    """

    __module__ = "argsbroker"

    def __init__(
        self,
        socket_path: str,
        channel: grpc.Channel,
        call: Any,
        first: Snapshot[Any],
        validate: Optional[Validator] = None,
        *,
        name: Optional[str] = None,
        reports: Optional[_Reports] = None,
    ) -> None:
        self.socket_path = socket_path
        #: How this follower names itself to the broker.
        self.name = name or default_name()
        self._validate = validate
        self._snapshot = first
        self._connected = True
        self._channel = channel
        self._call = call
        self._reports = reports
        self._listeners: List[Callable[[Snapshot[T]], None]] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._waiters: List[Tuple[asyncio.AbstractEventLoop, "asyncio.Future[bool]", int]] = []
        self._rejected: Optional[Rejection] = None
        self._closed = threading.Event()
        #: The pid that made it; in a forked child it no longer follows.
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._follow, name="argsbroker-watch", daemon=True)
        self._thread.start()
        _FOLLOWERS.add(self)

    @property
    def snapshot(self) -> Snapshot[T]:
        """The newest accepted snapshot: revision, lineage, exact JSON text,
        parsed value (and ``typed``, with a model)."""
        return self._snapshot

    @property
    def value(self) -> Any:
        """The whole document as Python objects (exact numbers). Read-only."""
        return self._snapshot.value

    @property
    def typed(self) -> T:
        """The document validated by the model (None without one). Read-only."""
        return cast(T, self._snapshot.typed)

    @property
    def revision(self) -> int:
        """The revision this follower serves: during a canary, the candidate
        if the broker selected this follower (by ``name``), else the stable one."""
        return self._snapshot.revision

    @property
    def lineage(self) -> str:
        return self._snapshot.lineage

    @property
    def connected(self) -> bool:
        """Whether the watch on the broker is up right now (never, in a process
        forked after the follower was made)."""
        return self._connected

    @property
    def forked(self) -> bool:
        """Whether this process was forked after the follower was made: it then
        keeps the last args it had but follows nothing (``connected`` is False)."""
        return self._pid != os.getpid()

    @property
    def reporting(self) -> bool:
        """Whether the broker hears what this follower applies (it has Follow)."""
        return self._reports is not None

    @property
    def rejected(self) -> Optional[Rejection]:
        """The last revision the model or validate refused, until a newer one is served."""
        return self._rejected

    def get(self, pointer: str = "", *, min_revision: Optional[int] = None, timeout: Optional[float] = 1.0) -> Any:
        """The value at an RFC 6901 pointer in the local copy (no RPC).
        Raises ArgsNotFound if there is none.

        With ``min_revision``: first waits (blocking this thread, woken by the
        watcher, no polling) until the copy is at that revision or newer, for at
        most ``timeout`` seconds (None: no limit); RevisionNotReached otherwise.
        In async code use ``get_async``."""
        if min_revision is not None and not self.wait_for(min_revision, timeout):
            raise self._not_reached(min_revision, timeout)
        held = self._snapshot
        return resolve(held.value, pointer, held.revision)

    async def get_async(
        self, pointer: str = "", *, min_revision: Optional[int] = None, timeout: Optional[float] = 1.0
    ) -> Any:
        """``get``, waiting for ``min_revision`` without blocking the event loop."""
        if min_revision is not None and not await self.wait_for_async(min_revision, timeout):
            raise self._not_reached(min_revision, timeout)
        held = self._snapshot
        return resolve(held.value, pointer, held.revision)

    def _not_reached(self, wanted: int, timeout: Optional[float]) -> RevisionNotReached:
        serving = self._snapshot.revision
        message = (
            f"revision {wanted} or newer did not arrive within {timeout:g} s: "
            f"still serving revision {serving} from the broker at {self.socket_path}"
        )
        rejected = self._rejected
        if rejected is not None and rejected.revision >= wanted:
            message += f" (revision {rejected.revision} was rejected: {rejected.reason})"
        return RevisionNotReached(message, wanted, serving)

    def on_change(self, listener: Callable[[Snapshot[T]], None]) -> None:
        """Calls ``listener(snapshot)`` on the watcher thread for each revision adopted."""
        self._listeners.append(listener)

    async def wait_for_async(self, revision: int, timeout: Optional[float] = None) -> bool:
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

    def wait_for(self, revision: int, timeout: Optional[float] = None) -> bool:
        """Blocks the calling thread until the local copy is at ``revision`` or
        newer; False on timeout. (In async code, await wait_for_async.)"""
        with self._changed:
            return self._changed.wait_for(lambda: self._snapshot.revision >= revision, timeout)

    async def wait_for_revision(self, revision: int, timeout: Optional[float] = None) -> bool:
        """Deprecated name of ``wait_for_async``."""
        _deprecated("LiveArgs.wait_for_revision", "LiveArgs.wait_for_async")
        return await self.wait_for_async(revision, timeout)

    def wait_for_revision_blocking(self, revision: int, timeout: Optional[float] = None) -> bool:
        """Deprecated name of ``wait_for``."""
        _deprecated("LiveArgs.wait_for_revision_blocking", "LiveArgs.wait_for")
        return self.wait_for(revision, timeout)

    def close(self) -> None:
        """Stops following the broker. The last args stay readable."""
        _FOLLOWERS.discard(self)
        self._closed.set()
        if self.forked:
            return  # the channel and thread belong to the parent
        with self._lock:
            self._call.cancel()
            _close(self._channel, self._reports)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=2.0)

    async def close_async(self) -> None:
        """``close`` without blocking the event loop."""
        await asyncio.to_thread(self.close)

    def __enter__(self) -> "LiveArgs[T]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _position(self) -> args_pb2.FollowRequest:
        """What this follower tells the broker: the revision it serves, and
        the last one it rejected."""
        held, rejected = self._snapshot, self._rejected
        return args_pb2.FollowRequest(
            name=self.name,
            applied_revision=held.revision,
            applied_lineage=held.lineage,
            rejected_revision=rejected.revision if rejected else 0,
            rejected_reason=rejected.reason if rejected else "",
        )

    def _report(self) -> None:
        reports = self._reports
        if reports is not None:
            reports.send(self._position())

    def _follow(self) -> None:
        backoff = Backoff(0.02, 1.0)
        while True:
            # Every watch starts by stating where this follower is.
            self._report()
            reason = self._drain(self._call)
            if self._closed.is_set():
                return
            self._connected = False
            log.warning(
                "lost the broker at %s (%s); serving revision %d while reconnecting",
                self.socket_path,
                reason,
                self._snapshot.revision,
            )
            _close(self._channel, self._reports)
            backoff.reset()
            while True:
                if self._closed.wait(backoff.next()):
                    return
                try:
                    channel, call, first, reports = _open_watch(
                        self.socket_path, _FIRST_MESSAGE_LIMIT, self.name, self._position()
                    )
                except BrokerError as err:
                    log.debug("the broker at %s is still unreachable: %s", self.socket_path, err)
                    continue
                with self._lock:
                    if self._closed.is_set():
                        call.cancel()
                        _close(channel, reports)
                        return
                    self._channel, self._call, self._reports = channel, call, reports
                self._apply(first)
                log.warning(
                    "reconnected to the broker at %s; serving revision %d",
                    self.socket_path,
                    self._snapshot.revision,
                )
                break

    def _drain(self, call: Any) -> str:
        """Applies every message of an open watch, reporting each revision
        applied or rejected; returns why it ended."""
        try:
            for message in call:
                try:
                    snapshot = Snapshot.from_message(message)
                except ValueError as err:
                    log.warning("ignoring revision %d: not valid JSON: %s", message.revision, err)
                    continue
                if self._apply(snapshot):
                    self._report()
            return "the broker ended the watch"
        except grpc.RpcError as err:
            return f"{err.code().name}: {err.details()}"

    def _apply(self, snapshot: Snapshot[Any]) -> bool:
        """Adopts ``snapshot`` if the lineage rule says so and the model and
        validate accept it. Returns whether what this follower reports
        changed (a revision applied, or another one rejected)."""
        self._connected = True
        held = self._snapshot
        verdict = _verdict(held, snapshot)
        if verdict == SAME:
            return False
        if verdict == OLDER:
            log.warning(
                "argsbroker: the broker at %s offers revision %d, older than the %d held; keeping the newer one",
                self.socket_path,
                snapshot.revision,
                held.revision,
            )
            return False
        if self._validate is not None:
            try:
                snapshot = dataclasses.replace(snapshot, typed=self._validate(snapshot))
            except ArgsRejected as err:
                rejection = Rejection(snapshot.revision, snapshot.lineage, err.details)
                changed = rejection != self._rejected
                if changed:
                    log.warning(
                        "rejected revision %d from the broker at %s: %s; still serving revision %d",
                        snapshot.revision,
                        self.socket_path,
                        _one_line(err.details),
                        held.revision,
                    )
                self._rejected = rejection
                return changed
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
                log.exception("an on_change listener failed")
        return True


#: Every open follower of this process, for the fork handler.
_FOLLOWERS: "weakref.WeakSet[LiveArgs[Any]]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A follower made before a fork has no thread in the child, and its gRPC
    channel belongs to the parent (gRPC objects do not survive a fork): mark
    each one disconnected, with fresh locks (the parent's may have been held
    at the fork), and say so once."""
    followers = list(_FOLLOWERS)
    _FOLLOWERS.clear()
    for live in followers:
        live._connected = False
        live._lock = threading.Lock()
        live._changed = threading.Condition()
        live._waiters = []
        live._closed = threading.Event()
        live._closed.set()
    if followers:
        sockets = ", ".join(sorted({live.socket_path for live in followers}))
        log.warning(
            "process %d was forked after follow() (the broker at %s): its %d follower(s) keep their last "
            "args but no longer follow; call follow() (or args_lifespan) in each worker after the fork",
            os.getpid(),
            sockets,
            len(followers),
        )


os.register_at_fork(after_in_child=_after_fork_in_child)


def _settle(future: "asyncio.Future[bool]") -> None:
    if not future.done():
        future.set_result(True)


@overload
def follow(
    socket: Optional[str] = None,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    model: Type[M],
    name: Optional[str] = None,
    validate: Optional[Validate] = None,
    socket_path: Optional[str] = None,
) -> LiveArgs[M]: ...


@overload
def follow(
    socket: Optional[str] = None,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    model: Any = None,
    name: Optional[str] = None,
    validate: Optional[Validate] = None,
    socket_path: Optional[str] = None,
) -> LiveArgs[Any]: ...


def follow(
    socket: Optional[str] = None,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    model: Any = None,
    name: Optional[str] = None,
    validate: Optional[Validate] = None,
    socket_path: Optional[str] = None,
) -> LiveArgs[Any]:
    """Waits up to ``timeout`` seconds for the broker at ``socket``
    ($ARGSBROKER_SOCKET, else /tmp/argsbroker.sock), takes its current args and
    keeps them fresh in a background thread.

    ``name`` is how this follower appears in ``broker status``, and what a
    canary selects it by (default: $ARGSBROKER_NAME, else this program's file
    name, see ``default_name``). During a canary, a follower the broker
    selects gets the candidate: ``live.revision`` says which it serves.

    With ``model`` (a pydantic model, or any type pydantic can validate), every
    revision is validated before it is served: ``live.typed`` is the model
    instance, and the result is a ``LiveArgs[Model]``. With ``validate`` (a
    callable taking the Snapshot, ``typed`` set), a revision is rejected when
    it raises, returns an error string or returns False. A first document
    that fails raises ArgsRejected with the reason; a later one is rejected
    (logged, ``live.rejected``, reported to the broker) and the previous one
    kept.

    Raises BrokerUnavailable, naming the socket, if no broker answers in time.
    (``socket_path=`` is the deprecated name of ``socket``.)
    """
    if socket_path is not None:
        _deprecated("follow(socket_path=...)", "follow(socket=...)")
    path = socket_from_env(socket or socket_path)
    name = name or default_name()
    check = checker(model, validate)
    channel, call, first, reports = wait_for_broker(
        path, timeout, lambda left: _open_watch(path, min(left, _FIRST_MESSAGE_LIMIT), name)
    )
    if check is not None:
        try:
            first = dataclasses.replace(first, typed=check(first))
        except ArgsRejected:
            call.cancel()
            _close(channel, reports)
            raise
    return LiveArgs(path, channel, call, first, check, name=name, reports=reports)
