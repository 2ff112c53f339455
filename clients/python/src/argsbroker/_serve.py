"""serve(): a broker owned by this process, for the workers it starts."""
from __future__ import annotations

import asyncio
import atexit
import collections
import functools
import logging
import os
import re
import select
import shutil
import signal
import socket as socketlib
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import IO, Any, Deque, Dict, List, Optional, Tuple, Union

from ._client import Backoff, Client, Selector, Snapshot, _encode_exact, connect, loads
from ._errors import BrokerError, BrokerFailed, RevisionConflict
from ._model import check

log = logging.getLogger("argsbroker")
#: The broker's own log (its stderr), one record per line it writes.
broker_log = logging.getLogger("argsbroker.broker")

#: How long serve() waits for its broker to serve.
START_TIMEOUT = 20.0
#: How long the broker gets to stop cleanly before SIGKILL.
STOP_TIMEOUT = 10.0
#: Restarts back off from this many seconds, doubling up to RESTART_CAP; a
#: broker that served for RESTART_RESET seconds starts the count over.
RESTART_BASE = 0.1
RESTART_CAP = 5.0
RESTART_RESET = 30.0
#: serve() gives up (the program cannot go on) after this many restarts in a
#: row that never got the broker serving.
FAILED_STARTS_LIMIT = 5
#: Names the broker executable to use instead of the one installed with this package.
BROKER_BIN_VARIABLE = "ARGSBROKER_BROKER_BIN"
#: The installed name serve() looks for first (no other package takes it),
#: then the design's name.
EXECUTABLE_NAMES = ("argsbroker-broker", "broker")

ArgsSource = Union[Dict[str, Any], str, bytes, "os.PathLike[str]"]

#: The broker's log line: timestamp, level, message (tracing's format).
_LOG_LINE = re.compile(r"^\S+\s+(TRACE|DEBUG|INFO|WARN|ERROR)\s+(.*)$")
_LEVELS = {"TRACE": logging.DEBUG, "DEBUG": logging.DEBUG, "INFO": logging.INFO,
           "WARN": logging.WARNING, "ERROR": logging.ERROR}


def broker_executable() -> str:
    """The ``argsbroker-broker`` installed with this package (the environment's
    bin/, beside this interpreter), else one on PATH (else ``broker``);
    $ARGSBROKER_BROKER_BIN wins."""
    named = os.environ.get(BROKER_BIN_VARIABLE)
    if named:
        return named
    looked = []
    for name in EXECUTABLE_NAMES:
        for directory in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
            candidate = os.path.join(directory, name)
            looked.append(directory)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
    for name in EXECUTABLE_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise BrokerFailed(
        f"no argsbroker-broker executable in {' or '.join(dict.fromkeys(looked))} or on PATH; "
        f"install this package with pip (it brings the executable), or set {BROKER_BIN_VARIABLE}"
    )


def _wait_exit(proc: "subprocess.Popen[bytes]") -> Optional[int]:
    """Waits for the broker to exit; its status (negative: killed by that
    signal), or None if another waiter in this process reaped it first.

    The status is read with waitid(WNOWAIT) before reaping: a server that
    reaps every child (gunicorn's arbiter calls waitpid(-1) on SIGCHLD) would
    otherwise leave Popen.wait() an ECHILD and a made-up status 0. waitid
    reads the status in the kernel, while the arbiter's handler still waits
    for the GIL."""
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    except ChildProcessError:
        info = None
    status: Optional[int] = None
    if info is not None:
        status = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
    proc.wait()  # reaps it (or finds that someone else did)
    return status


def _describe(status: Optional[int]) -> str:
    if status is None:
        return "exited (its exit status went to another waiter in this program, as gunicorn's arbiter reaps every child)"
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


def _document_text(args: Any) -> Optional[str]:
    """JSON text for a dict or JSON text; None for a path."""
    if isinstance(args, dict):
        return _encode_exact(args)
    if isinstance(args, bytes):
        args = args.decode("utf-8")
    if isinstance(args, str) and args.lstrip("\ufeff \t\r\n").startswith("{"):
        return args
    if isinstance(args, (str, os.PathLike)):
        return None
    raise TypeError(f"serve() takes args as a dict, JSON text or a path, not {type(args).__name__}")


class ServedArgs:
    """A running broker owned by this process; returned by serve().

    ``socket`` is where it serves (also exported as $ARGSBROKER_SOCKET);
    ``patch()``, ``set()``, ``rollback()`` and ``get()`` change and read the
    args live (and ``patch_async()``, ``set_async()``, ``get_async()``,
    ``snapshot_async()``... from async code), and every worker follows within
    milliseconds; ``patch(..., canary="25%")`` gives a change to some workers
    first, then ``promote()`` or ``abort()``.

    The broker is looked after: if it exits while the block runs, that is
    logged at once (its exit status and last log line) and it is restarted
    on the same socket, args file and state directory, so the document, its
    revision and lineage survive and workers reconnect by themselves;
    restarts back off while it keeps dying. ``alive``, ``restarts`` and
    ``returncode`` say how it is doing. ``stop()`` (or leaving the ``with``
    block) stops the broker and removes what serve() created.
    """

    __module__ = "argsbroker"

    def __init__(
        self,
        args: ArgsSource,
        *,
        socket: Optional[str] = None,
        state_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
        model: Any = None,
        schema: Any = None,
    ) -> None:
        if schema is not None:
            warnings.warn("serve(schema=...) is deprecated; use serve(model=...)", DeprecationWarning, stacklevel=3)
            model = model if model is not None else schema
        #: The pydantic model (or type) every document must fit, or None.
        self.model = model
        text = _document_text(args)
        if model is not None:
            check(model, text if text is not None else Path(args).read_text(encoding="utf-8-sig"), "the args")  # type: ignore[arg-type]
        self._executable = broker_executable()
        #: The private directory (mode 0700) holding what serve() made.
        self.directory = tempfile.mkdtemp(prefix="argsbroker-")
        self._owner = os.getpid()
        self._stopped = False
        self._stopping = threading.Event()
        self._up = threading.Event()
        self._failure: Optional[str] = None
        self._restarts = 0
        self._returncode: Optional[int] = None
        self._saved_socket_variable = os.environ.get("ARGSBROKER_SOCKET")
        self._stderr_tail: Deque[str] = collections.deque(maxlen=20)
        # The broker's log lines from a start that is not serving yet: logged
        # once it serves, or only at DEBUG if it fails (then BrokerFailed's
        # message carries them), so that a failed start is said once.
        self._held: Optional[List[Tuple[int, str]]] = None
        self._log_lock = threading.Lock()
        self._proc: Optional["subprocess.Popen[bytes]"] = None
        self._forwarder: Optional[threading.Thread] = None
        self._supervisor: Optional[threading.Thread] = None
        try:
            if text is not None:
                args_file = os.path.join(self.directory, "args.json")
                descriptor = os.open(args_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(descriptor, "w", encoding="utf-8") as out:
                    out.write(text)
            else:
                args_file = os.fspath(args)  # type: ignore[arg-type]
            #: The broker's socket.
            self.socket = os.path.abspath(socket) if socket else os.path.join(self.directory, "broker.sock")
            state = os.fspath(state_dir) if state_dir is not None else os.path.join(self.directory, "state")
            self._argv = [
                self._executable,
                "--args", args_file,
                "--socket", self.socket,
                "--state-dir", state,
                # PR_SET_PDEATHSIG: the broker stops when this process dies,
                # even by SIGKILL. PDEATHSIG follows the thread that forks:
                # the first start is this (main) thread, restarts are the
                # supervisor's, which lives until stop().
                f"--exit-with-parent={os.getpid()}",
            ]
            self._start()
            self._up.set()
        except BaseException:
            self.stop()
            raise
        os.environ["ARGSBROKER_SOCKET"] = self.socket
        atexit.register(self.stop)
        self._supervisor = threading.Thread(target=self._supervise, name="argsbroker-serve", daemon=True)
        self._supervisor.start()

    @property
    def schema(self) -> Any:
        """Deprecated name of ``model``."""
        return self.model

    @property
    def pid(self) -> int:
        """The process id of the broker running now (or of the last one)."""
        assert self._proc is not None
        return self._proc.pid

    @property
    def alive(self) -> bool:
        """Whether the broker is running and serving right now."""
        proc = self._proc
        return self._up.is_set() and proc is not None and proc.poll() is None

    @property
    def restarts(self) -> int:
        """How many times the broker was restarted after it exited unexpectedly."""
        return self._restarts

    @property
    def returncode(self) -> Optional[int]:
        """The exit status of the last broker that exited (negative: killed by
        that signal); None while the first one runs."""
        return self._returncode

    @property
    def failed(self) -> Optional[str]:
        """Why the broker could not be restarted (the program cannot go on), or None."""
        return self._failure

    def _start(self) -> None:
        """Starts the broker and returns once it serves; BrokerFailed otherwise."""
        # The broker says READY=1 on a notify socket (systemd's protocol) once
        # it serves: no polling, and no gRPC in this process before a fork.
        notify_path = os.path.join(self.directory, "notify.sock")
        notify = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_DGRAM | socketlib.SOCK_CLOEXEC)
        try:
            try:
                os.unlink(notify_path)
            except FileNotFoundError:
                pass
            notify.bind(notify_path)
            env = dict(os.environ, NOTIFY_SOCKET=notify_path)
            self._stderr_tail.clear()
            with self._log_lock:
                self._held = []
            try:
                proc = subprocess.Popen(
                    self._argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    env=env,
                    # Its own session: a Ctrl-C on the terminal reaches this
                    # program, which stops the broker after its workers.
                    start_new_session=True,
                )
            except OSError as err:
                self._release_held(served=False)
                raise BrokerFailed(f"cannot run the broker {self._executable}: {err.strerror or err}") from err
            self._proc = proc
            assert proc.stderr is not None
            self._forwarder = threading.Thread(
                target=self._forward_stderr, args=(proc.stderr,), name="argsbroker-broker-log", daemon=True
            )
            self._forwarder.start()
            try:
                self._wait_ready(proc, notify)
            except BaseException:
                self._release_held(served=False)
                raise
            self._release_held(served=True)
        finally:
            notify.close()
            try:
                os.unlink(notify_path)
            except FileNotFoundError:
                pass

    def _forward_stderr(self, stream: IO[bytes]) -> None:
        """The broker's log, one record per line on the "argsbroker.broker"
        logger at the line's level; the last lines are kept for error messages."""
        level = logging.INFO
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if not line.strip():
                continue
            found = _LOG_LINE.match(line)
            if found:
                level, message = _LEVELS[found.group(1)], found.group(2)
            else:
                # Not a log line: an error printed before logging started
                # ("error: ..." from the command line) or its continuation.
                message = line
                if re.search(r"\berror\b", line, re.IGNORECASE):
                    level = logging.ERROR
            self._stderr_tail.append(message)
            with self._log_lock:
                if self._held is not None:
                    self._held.append((level, message))
                    continue
            broker_log.log(level, "%s", message)
        stream.close()

    def _release_held(self, served: bool) -> None:
        """Logs the lines the broker wrote before it served: at their levels
        once it serves; at DEBUG when it failed to start, since the
        BrokerFailed raised then quotes them (one line, said once)."""
        with self._log_lock:
            held, self._held = self._held or [], None
            for level, message in held:
                broker_log.log(level if served else logging.DEBUG, "%s", message)

    def _last_words(self) -> str:
        return next((line for line in reversed(self._stderr_tail) if line), "")

    def _wait_ready(self, proc: "subprocess.Popen[bytes]", notify: socketlib.socket) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        try:
            exited: Optional[int] = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):  # before Linux 5.3 / Python 3.9: check every 50 ms
            exited = None
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    proc.kill()
                    proc.wait()
                    raise BrokerFailed(
                        f"the broker did not start serving on {self.socket} within {START_TIMEOUT:g} s"
                    )
                watched: list[Any] = [notify] + ([exited] if exited is not None else [])
                readable, _, _ = select.select(watched, [], [], left if exited is not None else min(left, 0.05))
                if notify in readable:
                    message = notify.recv(4096).decode("utf-8", "replace")
                    if "READY=1" in message.split("\n"):
                        return
                if proc.poll() is not None:
                    self._returncode = proc.returncode
                    if self._forwarder is not None:
                        self._forwarder.join(timeout=2.0)
                    said = "; ".join(line for line in self._stderr_tail if line) or "no message"
                    raise BrokerFailed(
                        f"the broker {_describe(proc.returncode)} before serving on {self.socket}: {said}"
                    )
        finally:
            if exited is not None:
                os.close(exited)

    def _supervise(self) -> None:
        """Waits on the broker; restarts it (backing off) when it exits while
        nobody asked it to. Gives up after FAILED_STARTS_LIMIT restarts in a
        row that never served: then the program is told (SIGTERM to itself,
        so that uvicorn or gunicorn stops) and leaving the ``with`` block exits
        with status 1 and one line."""
        backoff = Backoff(RESTART_BASE, RESTART_CAP)
        failed_starts = 0
        while True:
            proc = self._proc
            assert proc is not None
            started = time.monotonic()
            status = _wait_exit(proc)
            if self._stopping.is_set():
                return
            self._up.clear()
            self._returncode = status
            if self._forwarder is not None:
                self._forwarder.join(timeout=2.0)
            if time.monotonic() - started > RESTART_RESET:
                backoff.reset()
            said = self._last_words()
            log.error(
                "the broker serve() started (pid %d) %s; restarting it on %s%s",
                proc.pid, _describe(status), self.socket, f" (its last line: {said})" if said else "",
            )
            while True:
                if self._stopping.wait(backoff.next()):
                    return
                self._restarts += 1
                try:
                    self._start()
                except BrokerFailed as err:
                    failed_starts += 1
                    log.error("restart %d of the broker failed: %s", self._restarts, err)
                    if failed_starts >= FAILED_STARTS_LIMIT:
                        self._give_up(f"the broker could not be restarted ({failed_starts} tries): {err}")
                        return
                    continue
                failed_starts = 0
                self._up.set()
                log.warning("the broker is serving again on %s (pid %d, restart %d)",
                            self.socket, self.pid, self._restarts)
                break

    def _give_up(self, why: str) -> None:
        self._failure = why
        log.critical("%s; stopping this program", why)
        self._up.set()  # wake writers: they raise BrokerFailed now
        if os.getpid() == self._owner:
            os.kill(os.getpid(), signal.SIGTERM)

    def _client(self) -> Client:
        """A client once the broker serves (waiting while it restarts)."""
        if not self._up.wait(START_TIMEOUT) or self._failure:
            raise BrokerFailed(self._failure or f"the broker on {self.socket} did not come back within {START_TIMEOUT:g} s")
        return connect(self.socket, timeout=START_TIMEOUT)

    def _check(self, document: Any) -> None:
        if self.model is not None:
            check(self.model, _encode_exact(document), "the new args")

    def get(self, pointer: str = "") -> Any:
        """The document (or the value at an RFC 6901 pointer), exact numbers."""
        with self._client() as client:
            return client.get(pointer)

    def snapshot(self) -> Snapshot[Any]:
        """The current revision, lineage and exact JSON text."""
        with self._client() as client:
            return client.snapshot()

    def set(
        self,
        document: Any,
        expected_revision: Optional[int] = None,
        *,
        canary: Selector = None,
        bake: Optional[float] = None,
        force: bool = False,
    ) -> Snapshot[Any]:
        """Replaces the whole document (a dict, or JSON text); every worker follows
        (with ``canary``, only the selected ones: see ``patch``). With a model,
        a document that fails it raises ArgsRejected and changes nothing."""
        self._check(document if not isinstance(document, (str, bytes)) else loads(document))
        with self._client() as client:
            return client.set(document, expected_revision=expected_revision, canary=canary, bake=bake, force=force)

    def patch(
        self,
        merge_patch: Any,
        expected_revision: Optional[int] = None,
        *,
        canary: Selector = None,
        bake: Optional[float] = None,
        force: bool = False,
    ) -> Snapshot[Any]:
        """Applies an RFC 7386 merge patch (a dict, or JSON text; None removes a
        key); every worker follows. With a model, the result is checked first
        and written only if the document did not change meanwhile.

        ``canary="25%"`` (or ``2``, ``"name=api-*"``): the result goes only to
        the workers the selector picks (by the name each follower gives, see
        ``follow(name=)``); the others, and every plain read, keep the stable
        revision until ``promote()`` or ``abort()``. ``bake=30``: the broker
        promotes it by itself once every selected worker has applied it for
        30 s, and aborts it at the first rejection. While a canary runs, a
        write without ``force=True`` raises RevisionConflict."""
        with self._client() as client:
            if self.model is None:
                return client.patch(
                    merge_patch, expected_revision=expected_revision, canary=canary, bake=bake, force=force
                )
            patch = loads(merge_patch) if isinstance(merge_patch, (str, bytes)) else merge_patch
            for _ in range(10):
                current = client.snapshot()
                if expected_revision is not None and current.revision != expected_revision:
                    raise RevisionConflict(
                        f"revision conflict: expected revision {expected_revision}, "
                        f"but the current revision is {current.revision}",
                        current.revision,
                    )
                self._check(merge(current.value, patch))
                try:
                    return client.patch(
                        patch, expected_revision=current.revision, canary=canary, bake=bake, force=force
                    )
                except RevisionConflict as conflict:
                    # Only a change since the snapshot is worth another try;
                    # a canary running (or none) is the answer.
                    if expected_revision is not None or conflict.current_revision is None:
                        raise
            raise RevisionConflict("the args kept changing while this patch was checked; try again")

    def rollback(
        self,
        to_revision: int,
        expected_revision: Optional[int] = None,
        *,
        canary: Selector = None,
        bake: Optional[float] = None,
        force: bool = False,
    ) -> Snapshot[Any]:
        """A new revision with the content of retained revision ``to_revision``
        (ArgsNotFound if it is not retained); ``canary``, ``bake`` and
        ``force`` as for ``patch``."""
        with self._client() as client:
            return client.rollback(
                to_revision, expected_revision=expected_revision, canary=canary, bake=bake, force=force
            )

    def promote(self, candidate_revision: Optional[int] = None) -> Snapshot[Any]:
        """Gives the running canary's candidate to every worker and reader, as
        the same revision (returned): none goes back to an older one.
        RevisionConflict if no canary runs (or ``candidate_revision`` is not
        its candidate)."""
        with self._client() as client:
            return client.promote(candidate_revision)

    def abort(self, reason: str = "", candidate_revision: Optional[int] = None) -> Snapshot[Any]:
        """Drops the running canary: every worker moves forward to a new
        revision (returned) with the stable document. ``reason`` goes into the
        history. RevisionConflict as for ``promote``."""
        with self._client() as client:
            return client.abort(reason, candidate_revision)

    async def get_async(self, pointer: str = "") -> Any:
        """``get`` without blocking the event loop."""
        return await asyncio.to_thread(self.get, pointer)

    async def snapshot_async(self) -> Snapshot[Any]:
        """``snapshot`` without blocking the event loop."""
        return await asyncio.to_thread(self.snapshot)

    async def set_async(
        self,
        document: Any,
        expected_revision: Optional[int] = None,
        *,
        canary: Selector = None,
        bake: Optional[float] = None,
        force: bool = False,
    ) -> Snapshot[Any]:
        """``set`` without blocking the event loop."""
        return await asyncio.to_thread(
            functools.partial(self.set, document, expected_revision, canary=canary, bake=bake, force=force)
        )

    async def patch_async(
        self,
        merge_patch: Any,
        expected_revision: Optional[int] = None,
        *,
        canary: Selector = None,
        bake: Optional[float] = None,
        force: bool = False,
    ) -> Snapshot[Any]:
        """``patch`` without blocking the event loop."""
        return await asyncio.to_thread(
            functools.partial(self.patch, merge_patch, expected_revision, canary=canary, bake=bake, force=force)
        )

    async def rollback_async(
        self,
        to_revision: int,
        expected_revision: Optional[int] = None,
        *,
        canary: Selector = None,
        bake: Optional[float] = None,
        force: bool = False,
    ) -> Snapshot[Any]:
        """``rollback`` without blocking the event loop."""
        return await asyncio.to_thread(
            functools.partial(self.rollback, to_revision, expected_revision, canary=canary, bake=bake, force=force)
        )

    async def promote_async(self, candidate_revision: Optional[int] = None) -> Snapshot[Any]:
        """``promote`` without blocking the event loop."""
        return await asyncio.to_thread(self.promote, candidate_revision)

    async def abort_async(self, reason: str = "", candidate_revision: Optional[int] = None) -> Snapshot[Any]:
        """``abort`` without blocking the event loop."""
        return await asyncio.to_thread(self.abort, reason, candidate_revision)

    def stop(self) -> None:
        """Stops the broker (SIGTERM; SIGKILL after 10 s), restores
        $ARGSBROKER_SOCKET and removes the private directory. Idempotent. In a
        process forked from the owner (a gunicorn worker) it does nothing:
        the broker is the parent's."""
        if self._stopped or os.getpid() != self._owner:
            return
        self._stopped = True
        self._stopping.set()
        atexit.unregister(self.stop)
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(timeout=STOP_TIMEOUT)
        if self._forwarder is not None:
            self._forwarder.join(timeout=2.0)
        if os.environ.get("ARGSBROKER_SOCKET") == getattr(self, "socket", None):
            if self._saved_socket_variable is None:
                os.environ.pop("ARGSBROKER_SOCKET", None)
            else:
                os.environ["ARGSBROKER_SOCKET"] = self._saved_socket_variable
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "ServedArgs":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._failure and os.getpid() == self._owner:
            # The program could not go on without its broker: say why, once, and fail.
            raise SystemExit(f"argsbroker: {self._failure}")


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386: what the broker makes of ``patch`` applied to ``target``."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def serve(
    args: ArgsSource,
    *,
    socket: Optional[str] = None,
    state_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
    model: Any = None,
    schema: Any = None,
) -> ServedArgs:
    """Starts a broker owned by this process and returns once it serves.

    ``args``: a dict, JSON text, or the path of a JSON file (which the broker
    then serves and rewrites on every change, as `broker --args FILE` does).
    ``socket``: where to serve (default: in a new private 0700 directory).
    ``state_dir``: where revisions are kept (default: in that directory, so a
    new lineage each run; give one to continue revisions across runs).
    ``model``: a pydantic model (or any type pydantic validates) that the
    args, and every set() and patch() result, must fit; checked here, before
    anything is published. (``schema=`` is its deprecated name.)

    $ARGSBROKER_SOCKET is set to the socket, so every worker that uvicorn or
    gunicorn starts from here on finds the broker. Use it as a context
    manager: leaving the block stops the broker, restores the variable and
    removes the private directory. A broker that exits unexpectedly is logged
    and restarted (see ServedArgs). If this process is killed (even with
    SIGKILL) the broker stops by itself (`broker --exit-with-parent`). Call it
    from the main thread: the kernel ties that to the thread that started it.

    Raises BrokerFailed (one line: why) if the broker cannot start. If
    nothing catches it, the program exits with status 1 printing that line
    alone (``argsbroker: ...``, no traceback), as it does when the broker
    cannot be restarted later.
    """
    try:
        return ServedArgs(args, socket=socket, state_dir=state_dir, model=model, schema=schema)
    except BrokerFailed as err:
        _one_line_if_uncaught(err)
        raise


def _one_line_if_uncaught(failure: BrokerFailed) -> None:
    """Makes ``failure``, should it end the program uncaught, print as one
    line (``argsbroker: why``) instead of a traceback; Python then exits with
    status 1. The program cannot go on without its broker, and the traceback
    of serve()'s internals would bury the reason. Any other uncaught
    exception (or this one, caught and wrapped) goes to the previous hook."""
    previous = sys.excepthook

    def hook(kind: "type[BaseException]", value: BaseException, traceback: Any) -> None:
        if value is failure:
            sys.stderr.write(f"argsbroker: {failure}\n")
            sys.stderr.flush()
        else:
            previous(kind, value, traceback)

    sys.excepthook = hook
