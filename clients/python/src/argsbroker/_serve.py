"""serve(): a broker owned by this process, for the workers it starts."""
from __future__ import annotations

import atexit
import collections
import os
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
from pathlib import Path
from typing import IO, Any, Deque, Optional, Union

from ._client import (
    BrokerError,
    RevisionConflict,
    Snapshot,
    _encode_exact,
    connect,
    loads,
)
from ._model import check

#: How long serve() waits for its broker to serve.
START_TIMEOUT = 20.0
#: How long the broker gets to stop cleanly before SIGKILL.
STOP_TIMEOUT = 10.0
#: Names the broker executable to use instead of the one installed with this package.
BROKER_BIN_VARIABLE = "ARGSBROKER_BROKER_BIN"

ArgsSource = Union[dict, str, bytes, "os.PathLike[str]"]


def broker_executable() -> str:
    """The `broker` installed with this package (the environment's bin/,
    beside this interpreter), else one on PATH; $ARGSBROKER_BROKER_BIN wins."""
    named = os.environ.get(BROKER_BIN_VARIABLE)
    if named:
        return named
    looked = []
    for directory in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        candidate = os.path.join(directory, "broker")
        looked.append(directory)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("broker")
    if found:
        return found
    raise BrokerError(
        f"argsbroker: no broker executable in {' or '.join(dict.fromkeys(looked))} or on PATH; "
        f"install this package with pip (it brings the executable), or set {BROKER_BIN_VARIABLE}"
    )


def _document_text(args: ArgsSource) -> Optional[str]:
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
    ``patch()``, ``set()`` and ``get()`` change and read the args live, and
    every worker follows within milliseconds. ``stop()`` (or leaving the
    ``with`` block) stops the broker and removes what serve() created.
    """

    def __init__(
        self,
        args: ArgsSource,
        *,
        socket: Optional[str] = None,
        state_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
        schema: Any = None,
    ) -> None:
        self.schema = schema
        text = _document_text(args)
        if schema is not None:
            check(schema, text if text is not None else Path(args).read_text(encoding="utf-8-sig"), "the args")
        executable = broker_executable()
        #: The private directory (mode 0700) holding what serve() made.
        self.directory = tempfile.mkdtemp(prefix="argsbroker-")
        self._stopped = False
        self._saved_socket_variable = os.environ.get("ARGSBROKER_SOCKET")
        self._stderr_tail: Deque[str] = collections.deque(maxlen=20)
        self._proc: Optional[subprocess.Popen] = None
        try:
            if text is not None:
                args_file = os.path.join(self.directory, "args.json")
                descriptor = os.open(args_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(descriptor, "w", encoding="utf-8") as out:
                    out.write(text)
            else:
                args_file = os.fspath(args)
            #: The broker's socket.
            self.socket = os.path.abspath(socket) if socket else os.path.join(self.directory, "broker.sock")
            state = os.fspath(state_dir) if state_dir is not None else os.path.join(self.directory, "state")
            self._start(executable, args_file, state)
        except BaseException:
            self.stop()
            raise
        os.environ["ARGSBROKER_SOCKET"] = self.socket
        atexit.register(self.stop)

    @property
    def pid(self) -> int:
        """The broker's process id."""
        assert self._proc is not None
        return self._proc.pid

    def _start(self, executable: str, args_file: str, state_dir: str) -> None:
        # The broker says READY=1 on a notify socket (systemd's protocol) once
        # it serves: no polling, and no gRPC in this process before a fork.
        notify_path = os.path.join(self.directory, "notify.sock")
        notify = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_DGRAM | socketlib.SOCK_CLOEXEC)
        try:
            notify.bind(notify_path)
            env = dict(os.environ, NOTIFY_SOCKET=notify_path)
            argv = [
                executable,
                "--args", args_file,
                "--socket", self.socket,
                "--state-dir", state_dir,
                # PR_SET_PDEATHSIG: the broker stops when this process dies,
                # even by SIGKILL. PDEATHSIG follows the thread that forks.
                f"--exit-with-parent={os.getpid()}",
            ]
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
                # Its own session: a Ctrl-C on the terminal reaches this
                # program, which stops the broker after its workers.
                start_new_session=True,
            )
            self._forwarder = threading.Thread(
                target=self._forward_stderr, args=(self._proc.stderr,), name="argsbroker-broker-log", daemon=True
            )
            self._forwarder.start()
            self._wait_ready(notify)
        finally:
            notify.close()
            try:
                os.unlink(notify_path)
            except FileNotFoundError:
                pass

    def _forward_stderr(self, stream: IO[bytes]) -> None:
        """Copies the broker's log to this process's stderr, keeping the last
        lines for an error message."""
        for raw in stream:
            line = raw.decode("utf-8", "replace")
            self._stderr_tail.append(line.rstrip("\n"))
            try:
                sys.stderr.write(line)
                sys.stderr.flush()
            except (OSError, ValueError):  # stderr closed: keep draining the pipe
                pass
        stream.close()

    def _wait_ready(self, notify: socketlib.socket) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        try:
            exited: Optional[int] = os.pidfd_open(self._proc.pid)  # type: ignore[attr-defined]
        except (AttributeError, OSError):  # before Linux 5.3 / Python 3.9: check every 50 ms
            exited = None
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrokerError(
                        f"argsbroker: the broker did not start serving on {self.socket} within {START_TIMEOUT:g} s"
                    )
                watched = [notify] + ([exited] if exited is not None else [])
                readable, _, _ = select.select(watched, [], [], left if exited is not None else min(left, 0.05))
                if notify in readable:
                    message = notify.recv(4096).decode("utf-8", "replace")
                    if "READY=1" in message.split("\n"):
                        return
                if self._proc.poll() is not None:
                    self._forwarder.join(timeout=2.0)
                    said = "; ".join(line for line in self._stderr_tail if line) or "no message"
                    raise BrokerError(
                        f"argsbroker: the broker exited with status {self._proc.returncode} before serving: {said}"
                    )
        finally:
            if exited is not None:
                os.close(exited)

    def _check(self, document: Any) -> None:
        if self.schema is not None:
            check(self.schema, _encode_exact(document), "the new args")

    def get(self, pointer: str = "") -> Any:
        """The document (or the value at an RFC 6901 pointer), exact numbers."""
        with connect(self.socket, timeout=5) as client:
            return client.get(pointer)

    def snapshot(self) -> Snapshot:
        """The current revision, lineage and exact JSON text."""
        with connect(self.socket, timeout=5) as client:
            return client.snapshot()

    def set(self, document: Any, expected_revision: Optional[int] = None) -> Snapshot:
        """Replaces the whole document (a dict, or JSON text); every worker follows.
        With a schema, a document that fails it raises ArgsRejected and changes nothing."""
        self._check(document if not isinstance(document, (str, bytes)) else loads(document))
        with connect(self.socket, timeout=5) as client:
            return client.set(document, expected_revision=expected_revision)

    def patch(self, merge_patch: Any, expected_revision: Optional[int] = None) -> Snapshot:
        """Applies an RFC 7386 merge patch (a dict, or JSON text; None removes a
        key); every worker follows. With a schema, the result is checked first
        and written only if the document did not change meanwhile."""
        with connect(self.socket, timeout=5) as client:
            if self.schema is None:
                return client.patch(merge_patch, expected_revision=expected_revision)
            patch = loads(merge_patch) if isinstance(merge_patch, (str, bytes)) else merge_patch
            for _ in range(10):
                current = client.snapshot()
                if expected_revision is not None and current.revision != expected_revision:
                    raise RevisionConflict(
                        f"revision conflict: expected revision {expected_revision}, "
                        f"but the current revision is {current.revision}"
                    )
                self._check(merge(current.value, patch))
                try:
                    return client.patch(patch, expected_revision=current.revision)
                except RevisionConflict:
                    if expected_revision is not None:
                        raise
            raise RevisionConflict("the args kept changing while this patch was checked; try again")

    def stop(self) -> None:
        """Stops the broker (SIGTERM; SIGKILL after 10 s), restores
        $ARGSBROKER_SOCKET and removes the private directory. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc is not None:
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
    schema: Any = None,
) -> ServedArgs:
    """Starts a broker owned by this process and returns once it serves.

    ``args``: a dict, JSON text, or the path of a JSON file (which the broker
    then serves and rewrites on every change, as `broker --args FILE` does).
    ``socket``: where to serve (default: in a new private 0700 directory).
    ``state_dir``: where revisions are kept (default: in that directory, so a
    new lineage each run; give one to continue revisions across runs).
    ``schema``: a pydantic model (or any type pydantic validates) that the
    args, and every set() and patch() result, must fit; checked here, before
    anything is published.

    $ARGSBROKER_SOCKET is set to the socket, so every worker that uvicorn or
    gunicorn starts from here on finds the broker. Use it as a context
    manager: leaving the block stops the broker, restores the variable and
    removes the private directory. If this process is killed (even with
    SIGKILL) the broker stops by itself (`broker --exit-with-parent`). Call it
    from the main thread: the kernel ties that to the thread that started it.
    """
    return ServedArgs(args, socket=socket, state_dir=state_dir, schema=schema)
