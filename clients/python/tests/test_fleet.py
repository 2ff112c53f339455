"""The fleet (issue 14) seen from Python: four Rust workers and a Python live
copy follow one broker; `broker status --json` lists all five with the
revision each applied, and `broker patch --wait` returns only once all five
applied the write. Each worker listens on a port the kernel picks (--listen
127.0.0.1:0) and says which in its log, so no port is ever guessed."""
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Optional

import httpx

import argsbroker
from conftest import BROKER_BIN, Proc, eventually

#: The worker executable that run-tests (ARGSBROKER_BIN) put beside the broker.
WORKER_BIN = BROKER_BIN.with_name("worker")

FOLLOWER_NAME = "pytest fleet follower"


def broker_cli(socket_path, *args):
    """`broker SUBCOMMAND --socket PATH ...`, run to completion."""
    subcommand, *rest = args
    return subprocess.run(
        [str(BROKER_BIN), subcommand, "--socket", socket_path, *rest],
        capture_output=True, text=True, timeout=60, check=False,
    )


def status_followers(socket_path):
    """The followers as `broker status --json` prints them:
    {pid: (name, uid, applied_revision, rejected_revision)}."""
    run = broker_cli(socket_path, "status", "--json")
    assert run.returncode == 0, run.stderr
    listed = json.loads(run.stdout)["followers"]
    by_pid = {f["pid"]: (f["name"], f["uid"], f["applied_revision"], f["rejected_revision"]) for f in listed}
    assert len(by_pid) == len(listed), f"two followers with one pid: {listed}"
    return by_pid


def start_worker(tmp: Path, socket_path: str, index: int) -> Proc:
    return Proc(
        [str(WORKER_BIN), "--broker", socket_path, "--listen", "127.0.0.1:0"],
        tmp / f"worker-{index}.log",
        cwd=tmp,
    )


SERVING = re.compile(r"serving args on http://127\.0\.0\.1:(\d+)/args")


def bound_port(worker: Proc) -> int:
    """The port the worker listens on, from its log line
    `serving args on http://127.0.0.1:PORT/args`."""

    def logged() -> Optional[int]:
        worker.check_alive()
        found = SERVING.search(worker.log.read_text(errors="replace"))
        return int(found.group(1)) if found else None

    return eventually(f"{worker.log.name} to say where it serves", logged)


def test_status_lists_four_workers_and_a_python_follower_and_wait_covers_them_all(broker, tmp_path):
    assert WORKER_BIN.is_file(), f"no worker executable beside {BROKER_BIN}"
    broker.start()
    workers = []
    try:
        for index in range(4):
            workers.append(start_worker(tmp_path, broker.socket, index))
        ports = [bound_port(w) for w in workers]
        assert len(set(ports)) == 4 and 0 not in ports, ports
        with argsbroker.follow(broker.socket, name=FOLLOWER_NAME) as live:

            def expected(revision):
                # A worker is named after the address it listens on (the port the kernel gave it).
                listed = {
                    w.pid: (f"worker 127.0.0.1:{port}", os.getuid(), revision, 0)
                    for w, port in zip(workers, ports)
                }
                listed[os.getpid()] = (FOLLOWER_NAME, os.getuid(), revision, 0)
                return listed

            def all_at(revision):
                for w in workers:
                    w.check_alive()
                got = status_followers(broker.socket)
                return got if got == expected(revision) else None

            eventually("the 4 workers and the Python follower listed at revision 1", lambda: all_at(1))

            run = broker_cli(broker.socket, "patch", "--wait=10", '{"arg1": "fleet"}')
            assert (run.returncode, run.stdout, run.stderr) == (0, "revision 2\n", "")

            # No polling: --wait returned only once every follower applied it.
            assert status_followers(broker.socket) == expected(2)
            assert (live.revision, live.get("/arg1")) == (2, "fleet")
            for port in ports:
                answer = httpx.get(f"http://127.0.0.1:{port}/args/arg1", timeout=5)
                assert (answer.status_code, answer.headers["X-Args-Revision"], answer.json()) == (200, "2", "fleet")
    finally:
        for w in workers:
            w.stop()
