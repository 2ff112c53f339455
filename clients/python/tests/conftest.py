"""Helpers: the real broker binary and real uvicorn/gunicorn servers, each in a
temp dir, stopped by pid (servers by process group, so their workers die too),
and polling with deadlines instead of fixed sleeps."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple, TypeVar

import httpx
import pytest

import argsbroker

CLIENT = Path(__file__).resolve().parent.parent  # clients/python
EXAMPLES = CLIENT / "examples"
REPO = CLIENT.parent.parent
BROKER_BIN = Path(os.environ.get("ARGSBROKER_BIN") or REPO / "target" / "debug" / "broker")

#: The longest any wait in a test may take before the test fails.
PATIENCE = 20.0

#: Args with numbers that a float would not keep: a 30-digit integer and a
#: float with 30 significant digits.
BIG_INT = "123456789012345678901234567890"
BIG_FLOAT = "3.14159265358979323846264338327"
ARGS_TEXT = (
    '{"model": {"name": "sentiment-zh", "max_batch": 32},\n'
    ' "arg1": "arg1",\n'
    ' "features": {"new_ranker": false, "beta_banner": true},\n'
    ' "list": [1, 2, {"a/b": "slash", "m~n": "tilde"}],\n'
    f' "exact": {{"big": {BIG_INT}, "pi": {BIG_FLOAT}}},\n'
    ' "greeting": "你好, 世界 ✓"}\n'
)

T = TypeVar("T")


def eventually(what: str, probe: Callable[[], Optional[T]], patience: float = PATIENCE) -> T:
    """Polls ``probe`` until it returns something other than None."""
    deadline = time.monotonic() + patience
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {patience:g} s waiting for {what}")
        time.sleep(0.02)


def loopback_socket() -> socket.socket:
    """A TCP socket bound to a port the kernel picks on 127.0.0.1, not listening
    yet, for a child to serve on: uvicorn --fd N, uvicorn.run(fd=N), gunicorn
    -b fd://N (with Proc's pass_fds). The child inherits the bound socket
    itself, so no other process can take the port between the test learning
    it and the child listening (as it could if the test bound port 0, closed
    it and told the child the number). Until the child listens, connections
    to it are refused, so readiness is polled as for any server. Close the
    test's copy once the child started."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.set_inheritable(True)
    return sock


def port_of(sock: socket.socket) -> int:
    return sock.getsockname()[1]


def log_tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except FileNotFoundError:
        return "(no log)"


class Proc:
    """A child process in its own process group, logging to a file."""

    def __init__(self, argv: List[str], log: Path, cwd: Path, env: Optional[dict] = None,
                 pass_fds: Tuple[int, ...] = ()) -> None:
        self.argv = argv
        self.log = log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=pass_fds,
            )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise AssertionError(
                f"{self.argv[0]} exited with status {self.popen.returncode}:\n{log_tail(self.log)}"
            )

    def stop(self, group: bool = False, patience: float = 10.0) -> Optional[int]:
        """SIGTERM (to the process group when ``group``), then SIGKILL if it lingers.
        Returns the exit status, None if it had to be killed."""
        if self.popen.poll() is not None:
            return self.popen.returncode
        send = (lambda sig: os.killpg(self.pid, sig)) if group else (lambda sig: os.kill(self.pid, sig))
        try:
            send(signal.SIGTERM)
            return self.popen.wait(timeout=patience)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            self.popen.wait(timeout=patience)
            return None
        except ProcessLookupError:
            return self.popen.wait(timeout=patience)
        finally:
            if group:
                # Workers left behind by a parent that died first.
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


class Broker:
    """The real broker binary serving an args file on a socket in a temp dir."""

    def __init__(self, tmp: Path, args_text: str = ARGS_TEXT, socket: Optional[str] = None) -> None:
        if not BROKER_BIN.is_file():
            pytest.fail(f"no broker binary at {BROKER_BIN}: run `cargo build` or set ARGSBROKER_BIN")
        self.dir = tmp
        self.args_file = tmp / "args.json"
        self.args_file.write_text(args_text, encoding="utf-8")
        self.socket = socket or str(tmp / "b.sock")
        self.proc: Optional[Proc] = None
        self.starts = 0

    def start(self, wait: bool = True) -> "Broker":
        self.starts += 1
        self.proc = Proc(
            [str(BROKER_BIN), "--args", str(self.args_file), "--socket", self.socket],
            self.dir / f"broker-{self.starts}.log",
            cwd=self.dir,
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        def answers() -> Optional[bool]:
            self.proc.check_alive()
            if not os.path.exists(self.socket):
                return None
            try:
                with argsbroker.connect(self.socket, timeout=0.2):
                    return True
            except argsbroker.BrokerUnavailable:
                return None

        eventually(f"the broker to answer on {self.socket}", answers)

    def stop(self) -> Optional[int]:
        return self.proc.stop() if self.proc else None

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, the socket file stays behind."""
        self.proc.popen.kill()
        self.proc.popen.wait(timeout=10)

    def patch(self, merge_patch: dict) -> int:
        """Applies a merge patch with this package's client; returns the new revision."""
        with argsbroker.connect(self.socket, timeout=5) as client:
            return client.patch(merge_patch).revision

    def cli_patch(self, merge_patch: dict) -> int:
        """Applies a merge patch with the broker's own command line
        (`broker patch --socket PATH JSON`); returns the new revision it prints."""
        run = subprocess.run(
            [str(BROKER_BIN), "patch", "--socket", self.socket, json.dumps(merge_patch)],
            capture_output=True, text=True, timeout=30, check=False,
        )
        assert run.returncode == 0, f"broker patch failed ({run.returncode}): {run.stderr}"
        found = re.search(r"\brevision (\d+)", run.stdout)
        assert found, f"broker patch printed no revision: {run.stdout!r}"
        return int(found.group(1))

    def document(self) -> argsbroker.Snapshot:
        with argsbroker.connect(self.socket, timeout=5) as client:
            return client.snapshot()


@pytest.fixture
def broker(tmp_path: Path):
    b = Broker(tmp_path)
    yield b
    b.stop()


class Server:
    """The example app under uvicorn or gunicorn, on a 127.0.0.1 port it is
    handed already bound (loopback_socket), or on a Unix socket."""

    def __init__(self, tmp: Path, socket_path: str, kind: str = "uvicorn", workers: int = 4,
                 timeout: float = 10.0, uds: bool = False) -> None:
        self.uds = str(tmp / f"app-{kind}.sock") if uds else None
        listener = None if uds else loopback_socket()
        self.port = port_of(listener) if listener else None
        self.url = "http://app" if uds else f"http://127.0.0.1:{self.port}"
        fd = listener.fileno() if listener else -1
        env = dict(os.environ, ARGSBROKER_SOCKET=socket_path, ARGSBROKER_TIMEOUT=str(timeout), PYTHONUNBUFFERED="1")
        if kind == "uvicorn":
            bind = ["--uds", self.uds] if uds else ["--fd", str(fd)]
            argv = [sys.executable, "-m", "uvicorn", "app:app", *bind,
                    "--workers", str(workers), "--log-level", "warning"]
        else:
            address = f"unix:{self.uds}" if uds else f"fd://{fd}"
            argv = [sys.executable, "-m", "gunicorn", "-k", "uvicorn.workers.UvicornWorker",
                    "-w", str(workers), "-b", address, "--log-level", "warning",
                    "--graceful-timeout", "5", "app:app"]
        try:
            self.proc = Proc(argv, tmp / f"{kind}-{self.port or 'uds'}.log", cwd=EXAMPLES, env=env,
                             pass_fds=(fd,) if listener else ())
        finally:
            if listener:
                listener.close()

    def get(self, timeout: float = 2.0) -> httpx.Response:
        # A new connection per request, so that any worker may take it.
        transport = httpx.HTTPTransport(uds=self.uds) if self.uds else None
        with httpx.Client(timeout=timeout, transport=transport) as client:
            return client.get(f"{self.url}/args", headers={"Connection": "close"})

    def try_get(self, timeout: float = 2.0) -> Optional[httpx.Response]:
        self.proc.check_alive()
        try:
            return self.get(timeout)
        except httpx.TransportError:
            return None

    def wait_ready(self, patience: float = PATIENCE) -> httpx.Response:
        def ok() -> Optional[httpx.Response]:
            r = self.try_get()
            return r if r is not None and r.status_code == 200 else None

        return eventually(f"{self.url}/args to answer 200", ok, patience)

    def worker_pids(self, count: int) -> List[int]:
        """The pids of the server's ``count`` worker processes (its children that
        have loaded the app), found through /proc."""

        def children() -> Optional[List[int]]:
            self.proc.check_alive()
            found = []
            for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
                text = (task / "children").read_text().split()
                found.extend(int(pid) for pid in text)
            # uvicorn on spawn also has a resource-tracker child; keep python workers.
            workers = [pid for pid in found if b"multiprocessing.resource_tracker" not in _cmdline(pid)]
            return workers if len(workers) == count else None

        return sorted(eventually(f"{count} worker processes", children))

    def stop(self) -> Optional[int]:
        return self.proc.stop(group=True)

    def log_text(self) -> str:
        return log_tail(self.proc.log, 100_000)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


@pytest.fixture
def servers(tmp_path: Path):
    """Starts example-app servers; stops them all at the end of the test."""
    started: List[Server] = []

    def start(socket_path: str, **kw) -> Server:
        s = Server(tmp_path, socket_path, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def body_for(snapshot) -> bytes:
    """The body GET /args must answer for a broker snapshot."""
    return b'{"args":' + snapshot.json.encode("utf-8") + b"}"


def parse(body: bytes):
    return argsbroker.loads(body)


