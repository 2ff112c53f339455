"""The article's program, end to end: `python test.py` (examples/test.py, the
program README opens with) under uvicorn with workers=5, and the same with
gunicorn -k uvicorn.workers.UvicornWorker -w 4, each with the broker that
argsbroker.serve() starts. Which worker answered a request is read from
/proc (the process holding the accepted connection), so the program's
answer stays exactly {"args": ...}."""
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import pytest

from conftest import CLIENT, REPO, eventually, log_tail, loopback_socket, port_of

PROGRAM = (CLIENT / "examples" / "test.py").read_text()

# The test's only addition to the program: the handle, and a thread that
# applies each JSON line of stdin as handle.patch() and answers with the
# revision on its own pipe (stdout carries the servers' access logs).
PATCHER = '''\
import json, os, sys, threading

def start(handle):
    answers = os.fdopen(int(os.environ["PATCHER_FD"]), "w")
    def run():
        for line in sys.stdin:
            print("patched", handle.patch(json.loads(line)).revision, file=answers, flush=True)
    threading.Thread(target=run, daemon=True).start()
'''

GUNICORN_RUN = """\
        sys.argv = ['gunicorn', '-k', 'uvicorn.workers.UvicornWorker', '-w', '4', '-b', 'fd://{fd}', 'test:app']
        gunicorn.app.wsgiapp.run()
"""


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"examples/test.py no longer has {old!r}"
    return text.replace(old, new)


def program(fd: int, server: str) -> str:
    """examples/test.py serving on the loopback socket it inherits as ``fd``
    (instead of 0.0.0.0:9880), with the handle kept for patches."""
    text = replace_once(PROGRAM, "    with argsbroker.serve(args):", "    with argsbroker.serve(args) as handle:\n        import patcher; patcher.start(handle)")
    run = "        uvicorn.run('test:app', host='0.0.0.0', port=9880, workers=5)\n"
    if server == "uvicorn":
        return replace_once(text, run, run.replace("host='0.0.0.0', port=9880", f"fd={fd}"))
    text = replace_once(text, "import uvicorn\n", "import sys\nimport gunicorn.app.wsgiapp\n")
    return replace_once(text, run, GUNICORN_RUN.format(fd=fd))


def descendants(pid: int) -> List[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except FileNotFoundError:
                continue
            found.extend(children)
            todo.extend(children)
    return found


def cmdline(pid: int) -> List[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except FileNotFoundError:
        return []


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def in_group(pid: int, group: int) -> bool:
    try:
        return not gone(pid) and os.getpgid(pid) == group
    except ProcessLookupError:
        return False


def socket_inodes(pid: int) -> Set[str]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except (FileNotFoundError, PermissionError):
        pass
    return inodes


def accepted_inode(server_port: int, client_port: int) -> Optional[str]:
    """The inode of the server's end of the TCP connection from client_port."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if int(local.rsplit(":", 1)[1], 16) == server_port and int(remote.rsplit(":", 1)[1], 16) == client_port:
                return inode
    return None


class Program:
    """`python test.py` in a temp dir, in its own session (so that the test
    can signal its whole process group, as a terminal's Ctrl-C does)."""

    def __init__(self, tmp: Path, server: str) -> None:
        listener = loopback_socket()
        self.port = port_of(listener)
        self.dir = tmp
        (tmp / "test.py").write_text(program(listener.fileno(), server))
        (tmp / "patcher.py").write_text(PATCHER)
        self.log = tmp / "program.log"
        env = {k: v for k, v in os.environ.items() if k != "ARGSBROKER_SOCKET"}
        env["PYTHONUNBUFFERED"] = "1"
        answers, env["PATCHER_FD"] = os.pipe(), ""
        env["PATCHER_FD"] = str(answers[1])
        with open(self.log, "wb") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "test.py"], cwd=tmp, env=env, stdin=subprocess.PIPE,
                stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                pass_fds=(answers[1], listener.fileno()),
            )
        os.close(answers[1])
        listener.close()
        self.answers = os.fdopen(answers[0], "r")
        self.pid = self.popen.pid
        self.broker_pid: Optional[int] = None
        self.socket: Optional[str] = None

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise AssertionError(f"test.py exited with {self.popen.returncode}:\n{log_tail(self.log)}")

    def find_broker(self) -> Tuple[int, str]:
        def probe():
            self.check_alive()
            for pid in descendants(self.pid):
                argv = cmdline(pid)
                if argv and os.path.basename(argv[0]) in ("argsbroker-broker", "broker") and "--socket" in argv:
                    return pid, argv[argv.index("--socket") + 1]
            return None

        self.broker_pid, self.socket = eventually("the broker started by serve()", probe)
        return self.broker_pid, self.socket

    def workers(self) -> List[int]:
        """The server's worker processes: every descendant but the broker (and
        the resource tracker that multiprocessing's spawn starts)."""
        return [
            p for p in descendants(self.pid)
            if p != self.broker_pid and not gone(p)
            and not any("multiprocessing.resource_tracker" in arg for arg in cmdline(p))
        ]

    def get(self) -> Tuple[int, bytes, int]:
        """GET /args on a new connection: (status, body, pid of the worker that answered)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.connect()
            client_port = conn.sock.getsockname()[1]
            conn.request("GET", "/args")
            response = conn.getresponse()
            body = response.read()
            # The connection is still open (keep-alive): find who holds its server end.
            inode = accepted_inode(self.port, client_port)
            owner = next((pid for pid in self.workers() if inode in socket_inodes(pid)), -1)
            return response.status, body, owner
        finally:
            conn.close()

    def try_get(self) -> Optional[Tuple[int, bytes, int]]:
        self.check_alive()
        try:
            return self.get()
        except OSError:
            return None

    def patch(self, merge_patch: dict) -> int:
        self.popen.stdin.write(json.dumps(merge_patch) + "\n")
        self.popen.stdin.flush()
        line = self.answers.readline()
        found = re.fullmatch(r"patched (\d+)\n", line)
        assert found, f"the program printed {line!r}:\n{log_tail(self.log)}"
        return int(found.group(1))

    def cleanup(self) -> None:
        """Whatever a failed test left: the process group, and the private dir."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(timeout=10)
        self.answers.close()
        if self.broker_pid and not gone(self.broker_pid):
            os.kill(self.broker_pid, signal.SIGKILL)
        if self.socket:
            shutil.rmtree(os.path.dirname(self.socket), ignore_errors=True)


@pytest.fixture
def article(tmp_path):
    started: List[Program] = []

    def start(server: str) -> Program:
        p = Program(tmp_path, server)
        started.append(p)
        return p

    yield start
    for p in started:
        p.cleanup()


ARTICLE_BODY = b'{"args":{"arg1":"arg1"}}'


def serves_from_workers(p: Program, want: int, expected: bytes, patience: float = 30.0) -> Set[int]:
    """Requests /args, 16 connections at a time, until ``want`` distinct
    workers have answered; every answer must be 200 with ``expected``."""
    seen: Set[int] = set()
    deadline = time.monotonic() + patience
    with ThreadPoolExecutor(max_workers=16) as pool:
        while len(seen) < want:
            assert time.monotonic() < deadline, f"only workers {sorted(seen)} answered within {patience} s"
            for status, body, pid in pool.map(lambda _: p.get(), range(16)):
                assert (status, body) == (200, expected)
                assert pid > 0, "no worker of the program holds the connection"
                seen.add(pid)
    return seen


def patch_reaches_every_worker(p: Program, workers: Set[int]) -> None:
    """handle.patch() in the parent; every worker serves the new args, and no
    request sent more than 1 s after the patch returned sees the old ones."""
    revision = p.patch({"arg1": "patched from the parent"})
    patched_at = time.monotonic()
    assert revision == 2
    new = b'{"args":{"arg1":"patched from the parent"}}'
    updated: Set[int] = set()
    deadline = patched_at + 30
    with ThreadPoolExecutor(max_workers=16) as pool:
        while updated != workers:
            assert time.monotonic() < deadline, f"workers {sorted(workers - updated)} never served revision 2"

            def one(_):
                sent = time.monotonic()
                return sent, p.get()

            for sent, (status, body, pid) in pool.map(one, range(16)):
                assert status == 200 and pid in workers
                if body == new:
                    updated.add(pid)
                else:
                    assert body == ARTICLE_BODY
                    assert sent - patched_at < 1.0, f"worker {pid} served the old args {sent - patched_at:.2f} s after the patch"


def stopped_cleanly_by_ctrl_c(p: Program) -> None:
    """SIGINT to the program's process group, as Ctrl-C in its terminal: the
    program exits; no broker, socket, private directory or worker is left."""
    broker_pid, socket_path, workers = p.broker_pid, p.socket, p.workers()
    os.killpg(p.pid, signal.SIGINT)
    status = p.popen.wait(timeout=30)
    assert status == 0, log_tail(p.log)
    assert gone(broker_pid)
    assert not os.path.exists(socket_path)
    assert not os.path.exists(os.path.dirname(socket_path))
    eventually("every worker to exit", lambda: True if all(gone(w) for w in workers) else None)
    # A member still exiting (its cmdline already empty) may outlive the
    # program by a moment; one that stays is a leak.
    def group_left() -> List[int]:
        return [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if in_group(pid, p.pid)]

    try:
        eventually("every process of the program's group to exit", lambda: True if not group_left() else None)
    except AssertionError:
        left = group_left()
        assert left == [], [cmdline(pid) for pid in left]


def broker_dies_with_a_killed_program(p: Program) -> None:
    """SIGKILL of the program (the parent alone): its broker is gone within 2 s."""
    broker_pid = p.broker_pid
    os.kill(p.pid, signal.SIGKILL)
    p.popen.wait(timeout=10)
    killed = time.monotonic()
    eventually("the broker to exit after its owner was killed", lambda: True if gone(broker_pid) else None, 2.0)
    assert time.monotonic() - killed < 2.0


def wait_serving(p: Program) -> None:
    eventually(f"test.py to serve on port {p.port}", lambda: True if p.try_get() else None)


@pytest.mark.parametrize("server,workers", [("uvicorn", 5), ("gunicorn", 4)])
def test_the_article_program_serves_one_args_to_every_worker(article, server, workers):
    """`python test.py`: /args answers {"args": {"arg1": "arg1"}} from at least
    4 distinct workers; a handle.patch() from the parent reaches every worker
    within 1 s; Ctrl-C leaves no broker, socket, temp directory or worker."""
    p = article(server)
    p.find_broker()
    wait_serving(p)
    eventually(f"{workers} workers", lambda: True if len(p.workers()) == workers else None)
    answered = serves_from_workers(p, 4, ARTICLE_BODY)
    assert len(answered) >= 4
    patch_reaches_every_worker(p, set(p.workers()))
    if server == "gunicorn":
        a_new_worker_forked_after_the_patch_serves_it(p)
    stopped_cleanly_by_ctrl_c(p)


def a_new_worker_forked_after_the_patch_serves_it(p: Program) -> None:
    """gunicorn forks a replacement for a killed worker from the parent, which
    has used gRPC for handle.patch() by then: the new worker serves the patch."""
    before = set(p.workers())
    victim = min(before)
    os.kill(victim, signal.SIGKILL)

    def replaced():
        now = set(p.workers())
        fresh = now - before
        return fresh.pop() if len(now) == len(before) and victim not in now and fresh else None

    newcomer = eventually("gunicorn to fork a replacement worker", replaced)
    new = b'{"args":{"arg1":"patched from the parent"}}'
    with ThreadPoolExecutor(max_workers=16) as pool:
        def answered():
            for status, body, pid in pool.map(lambda _: p.get(), range(16)):
                assert (status, body) == (200, new)
                if pid == newcomer:
                    return True
            return None

        eventually(f"the new worker {newcomer} to answer", answered, 30)


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_no_broker_outlives_the_article_program_killed_with_sigkill(article, server):
    """kill -9 of `python test.py` leaves no broker behind within 2 s."""
    p = article(server)
    p.find_broker()
    wait_serving(p)
    broker_dies_with_a_killed_program(p)


class Load:
    """GET /args from 8 threads, new connection each, until stopped: every
    answer and every failure with the time it happened."""

    def __init__(self, p: Program) -> None:
        import threading

        self.p = p
        self.answers: List[Tuple[float, int, bytes]] = []
        self.failures: List[Tuple[float, str]] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(8)]
        for t in self.threads:
            t.start()

    def run(self) -> None:
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.p.port, timeout=5)
                try:
                    conn.request("GET", "/args", headers={"Connection": "close"})
                    response = conn.getresponse()
                    self.answers.append((started, response.status, response.read()))
                finally:
                    conn.close()
            except (OSError, http.client.HTTPException) as err:
                self.failures.append((started, repr(err)))

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=10)


@pytest.mark.parametrize("server,workers", [("uvicorn", 5), ("gunicorn", 4)])
def test_serve_restarts_a_killed_broker_under_load(article, server, workers):
    """kill -9 of the broker serve() started, under load: the program logs it
    at once (exit status) and restarts it on the same socket and state, so
    writes resume at the next revision of the same lineage and every worker
    follows; then a killed worker is replaced and serves the new args. No
    request fails but the ones in flight to the killed worker, and Ctrl-C
    still ends the program with status 0."""
    p = article(server)
    first_broker, socket_path = p.find_broker()
    wait_serving(p)
    eventually(f"{workers} workers", lambda: True if len(p.workers()) == workers else None)
    load = Load(p)
    try:
        eventually("answers under load", lambda: True if len(load.answers) > 50 else None)
        os.kill(first_broker, signal.SIGKILL)
        # gunicorn's arbiter reaps every child of its process (waitpid(-1)): when
        # it takes the broker's exit status first, the line says so instead.
        # Which waiter wins is a race, so under gunicorn either line is right.
        killed = "was killed by SIGKILL"
        reaped = ("exited (its exit status went to another waiter in this program, "
                  "as gunicorn's arbiter reaps every child)")
        hows = [killed] if server == "uvicorn" else [killed, reaped]
        lines = [f"the broker serve() started (pid {first_broker}) {how}; restarting it on {socket_path}"
                 for how in hows]
        eventually("the program to log the broker's death",
                   lambda: True if any(line in log_tail(p.log, 1_000_000) for line in lines) else None, 10)

        def restarted():
            p.check_alive()
            for pid in descendants(p.pid):
                argv = cmdline(pid)
                if pid != first_broker and not gone(pid) and argv and \
                        os.path.basename(argv[0]) == "argsbroker-broker":
                    return pid, argv[argv.index("--socket") + 1]
            return None

        second_broker, second_socket = eventually("a new broker", restarted)
        assert second_socket == socket_path
        p.broker_pid = second_broker
        revision = p.patch({"arg1": "after the restart"})
        assert revision == 2, "the revision did not continue from the broker's state"
        new = b'{"args":{"arg1":"after the restart"}}'
        serving = set(p.workers()) - {second_broker}

        def all_follow():
            seen = {pid for status, body, pid in (p.get() for _ in range(24)) if body == new}
            return True if seen >= serving else None

        eventually("every worker to serve the write made after the restart", all_follow, 30)

        victim = min(serving)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)

        def replaced():
            now = set(p.workers()) - {second_broker}
            return True if victim not in now and len(now) == workers else None

        eventually("the server to replace the killed worker", replaced, 30)
        newcomer = (set(p.workers()) - {second_broker} - serving).pop()

        def newcomer_serves():
            for _ in range(24):
                status, body, pid = p.get()
                assert (status, body) == (200, new)
                if pid == newcomer:
                    return True
            return None

        eventually(f"the new worker {newcomer} to serve the new args", newcomer_serves, 30)
    finally:
        load.stop()
    assert not gone(second_broker), "the restarted broker did not survive"
    for _, status, body in load.answers:
        assert (status, body) in ((200, ARTICLE_BODY), (200, new)), (status, body)
    # Only requests started around the worker's death (in flight to it) may fail.
    late = [(round(at - killed_at, 3), what) for at, what in load.failures if not -5.5 < at - killed_at < 1.0]
    assert late == [], late
    assert len(load.failures) <= 8, load.failures
    assert sum(log_tail(p.log, 1_000_000).count(f"{how}; restarting it") for how in hows) == 1
    stopped_cleanly_by_ctrl_c(p)
