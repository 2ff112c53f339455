"""The live copy follows the broker on Follow: it names itself, reports the
revision it applied and the one it rejected (what ListFollowers and `broker
status` show), falls back to WatchArgs on a broker without Follow, and
get(min_revision=N) waits for a revision."""
import asyncio
import json
import os
import queue
import subprocess
import sys
import threading
import time
from concurrent import futures

import grpc
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

import argsbroker
from argsbroker._live import default_name
from argsbroker._pb import args_pb2, args_pb2_grpc
from argsbroker.fastapi import args_lifespan
from conftest import BROKER_BIN, eventually


def followers(socket_path):
    """The broker's ListFollowers reply, through the generated stubs."""
    channel = argsbroker.open_channel(socket_path)
    try:
        stub = args_pb2_grpc.ArgsBrokerStub(channel)
        return stub.ListFollowers(args_pb2.ListFollowersRequest(), timeout=5)
    finally:
        channel.close()


def the_follower(socket_path, **expected):
    """Waits until the broker lists exactly one follower whose fields have the
    expected values; returns it."""

    def probe():
        listed = followers(socket_path).followers
        if len(listed) == 1 and all(getattr(listed[0], k) == v for k, v in expected.items()):
            return listed[0]
        return None

    return eventually(f"one follower with {expected}", probe)


def test_a_follower_names_itself_and_reports_each_revision_it_applies(broker):
    """The broker lists the live copy under its name, with this process's pid
    and uid and the revision it applied, in ListFollowers and in `broker status
    --json`; a patch moves it on; closing it removes it."""
    broker.start()
    with argsbroker.follow(broker.socket, name="pytest follower") as live:
        assert live.name == "pytest follower" and live.reporting
        listed = the_follower(broker.socket, applied_revision=1)
        assert listed.name == "pytest follower"
        assert (listed.pid, listed.uid) == (os.getpid(), os.getuid())
        assert (listed.rejected_revision, listed.rejected_reason) == (0, "")

        written = broker.patch({"arg1": "second"})
        assert written == 2
        listed = the_follower(broker.socket, applied_revision=2)
        assert live.revision == 2 and live.get("/arg1") == "second"
        assert followers(broker.socket).revision == 2

        status = subprocess.run(
            [str(BROKER_BIN), "status", "--socket", broker.socket, "--json"],
            capture_output=True, text=True, timeout=30, check=True,
        )
        [shown] = json.loads(status.stdout)["followers"]
        assert {k: shown[k] for k in ("name", "pid", "uid", "applied_revision", "rejected_revision", "rejected_reason")} == {
            "name": "pytest follower", "pid": os.getpid(), "uid": os.getuid(),
            "applied_revision": 2, "rejected_revision": 0, "rejected_reason": "",
        }
    eventually("the follower to leave the list", lambda: True if not followers(broker.socket).followers else None)


def test_the_default_name_is_the_programs_file_name(broker, tmp_path):
    """A follower in a script started as `python follower.py` is listed as
    follower.py, with that process's pid."""
    broker.start()
    script = tmp_path / "follower.py"
    script.write_text(
        "import sys, argsbroker\n"
        "live = argsbroker.follow(sys.argv[1])\n"
        "print('following', live.revision, flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, str(script), broker.socket],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tmp_path,
    )
    try:
        assert proc.stdout.readline() == "following 1\n"
        listed = the_follower(broker.socket, applied_revision=1)
        assert (listed.name, listed.pid) == ("follower.py", proc.pid)
    finally:
        proc.stdin.close()
        proc.wait(timeout=20)


@pytest.mark.parametrize(
    "argv, name",
    [
        (["/srv/app/app.py", "--port", "1"], "app.py"),
        (["/venv/bin/uvicorn", "app:app"], "uvicorn"),
        (["/venv/lib/python3/site-packages/pytest/__main__.py", "-q"], "pytest"),
        (["-c"], "python"),
        ([""], "python"),
        ([], "python"),
    ],
)
def test_default_name_cases(monkeypatch, argv, name):
    monkeypatch.setattr(sys, "argv", argv)
    assert default_name() == name


def reject_bad(snapshot):
    """A validate callable: an error string for arg1 "bad", an exception for
    a batch over 100, None for anything else."""
    if snapshot.value.get("arg1") == "bad":
        return "arg1 must not be 'bad'"
    if snapshot.value["model"]["max_batch"] > 100:
        raise ValueError(f"max_batch {snapshot.value['model']['max_batch']} is over 100")
    return None


def test_a_rejected_revision_is_reported_and_the_old_args_stay_served(broker):
    """validate refuses a revision (by returning an error string, or by
    raising): the live copy keeps serving the previous one, keeps the reason in
    live.rejected, and the broker lists the rejection; the next good revision
    clears it."""
    broker.start()
    with argsbroker.follow(broker.socket, name="strict", validate=reject_bad) as live:
        lineage = live.lineage
        the_follower(broker.socket, applied_revision=1)

        assert broker.patch({"arg1": "bad"}) == 2
        listed = the_follower(broker.socket, rejected_revision=2)
        assert (listed.name, listed.applied_revision, listed.rejected_reason) == ("strict", 1, "arg1 must not be 'bad'")
        assert live.rejected == argsbroker.Rejection(2, lineage, "arg1 must not be 'bad'")
        assert live.rejected.reason == "arg1 must not be 'bad'"
        assert (live.revision, live.get("/arg1")) == (1, "arg1")

        assert broker.patch({"arg1": "fine", "model": {"max_batch": 500}}) == 3
        listed = the_follower(broker.socket, rejected_revision=3)
        assert (listed.applied_revision, listed.rejected_reason) == (1, "max_batch 500 is over 100")
        assert live.rejected == argsbroker.Rejection(3, lineage, "max_batch 500 is over 100")
        assert (live.revision, live.get("/arg1"), live.get("/model/max_batch")) == (1, "arg1", 32)
        with pytest.raises(argsbroker.RevisionNotReached) as caught:
            live.get(min_revision=3, timeout=0.1)
        assert str(caught.value) == (
            "revision 3 or newer did not arrive within 0.1 s: still serving revision 1 "
            f"from the broker at {broker.socket} (revision 3 was rejected: max_batch 500 is over 100)"
        )

        assert broker.patch({"model": {"max_batch": 64}}) == 4
        listed = the_follower(broker.socket, applied_revision=4)
        assert (listed.rejected_revision, listed.rejected_reason) == (0, "")
        assert live.rejected is None
        assert live.get("/model/max_batch", min_revision=4) == 64


def test_args_that_fail_validate_at_startup_raise(broker):
    broker.start()
    with pytest.raises(argsbroker.ArgsRejected) as caught:
        argsbroker.follow(broker.socket, validate=lambda snapshot: False)
    assert str(caught.value) == "validate rejected the broker's args at revision 1: rejected by validate"
    assert caught.value.details == "rejected by validate"


class Model(BaseModel):
    name: str
    max_batch: int


class Settings(BaseModel):
    model: Model
    arg1: str


def test_a_revision_that_fails_the_lifespans_model_is_reported(broker):
    """args_lifespan(model=..., name=...): a revision that fails the model is
    not served, and the broker lists the rejection with pydantic's message;
    validate= runs after the model, on the typed value."""
    broker.start()
    app = FastAPI(
        lifespan=args_lifespan(
            model=Settings, socket=broker.socket, name="api",
            validate=lambda s: None if s.typed.model.max_batch <= 100 else "too big",
        )
    )

    async def scenario():
        async with app.router.lifespan_context(app):
            live = app.state.args
            await asyncio.to_thread(the_follower, broker.socket, name="api", applied_revision=1)

            assert await asyncio.to_thread(broker.patch, {"model": {"max_batch": "many"}}) == 2
            listed = await asyncio.to_thread(the_follower, broker.socket, rejected_revision=2)
            assert listed.applied_revision == 1
            assert listed.rejected_reason == live.rejected.reason
            assert listed.rejected_reason.startswith("1 validation error for Settings\nmodel.max_batch\n")
            assert live.typed.model.max_batch == 32

            assert await asyncio.to_thread(broker.patch, {"model": {"max_batch": 101}}) == 3
            listed = await asyncio.to_thread(the_follower, broker.socket, rejected_revision=3)
            assert (listed.applied_revision, listed.rejected_reason) == (1, "too big")

            assert await asyncio.to_thread(broker.patch, {"model": {"max_batch": 100}}) == 4
            assert await live.get_async("/model/max_batch", min_revision=4, timeout=5) == 100
            assert live.typed.model.max_batch == 100
            await asyncio.to_thread(the_follower, broker.socket, applied_revision=4, rejected_revision=0)

    asyncio.run(scenario())


def test_get_with_min_revision_at_once_after_a_write_and_on_timeout(broker):
    """get(min_revision=N) answers at once when revision N or newer is served,
    waits for a write that brings it, and raises RevisionNotReached naming both
    revisions after the timeout."""
    broker.start()
    with argsbroker.follow(broker.socket) as live:
        assert live.revision == 1
        started = time.monotonic()
        assert live.get("/arg1", min_revision=1) == "arg1"
        assert live.get("/arg1", min_revision=0, timeout=0) == "arg1"
        assert time.monotonic() - started < 0.5

        writer = threading.Timer(0.2, broker.patch, args=({"arg1": "later"},))
        writer.start()
        try:
            assert live.revision == 1
            assert live.get("/arg1", min_revision=2, timeout=10) == "later"
            assert live.revision == 2
        finally:
            writer.join()

        started = time.monotonic()
        with pytest.raises(argsbroker.RevisionNotReached) as caught:
            live.get(min_revision=5, timeout=0.3)
        assert time.monotonic() - started >= 0.3
        assert isinstance(caught.value, TimeoutError)
        assert (caught.value.wanted, caught.value.serving) == (5, 2)
        assert str(caught.value) == (
            "revision 5 or newer did not arrive within 0.3 s: "
            f"still serving revision 2 from the broker at {broker.socket}"
        )


def test_get_async_with_min_revision(broker):
    broker.start()

    async def scenario():
        with argsbroker.follow(broker.socket) as live:
            assert await live.get_async("/arg1", min_revision=1, timeout=0) == "arg1"
            waiting = asyncio.create_task(live.get_async("/arg1", min_revision=2, timeout=10))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            assert await asyncio.to_thread(broker.patch, {"arg1": "async"}) == 2
            assert await waiting == "async"
            with pytest.raises(argsbroker.RevisionNotReached) as caught:
                await live.get_async(min_revision=3, timeout=0.05)
            assert (caught.value.wanted, caught.value.serving) == (3, 2)

    asyncio.run(scenario())


class OldBroker(args_pb2_grpc.ArgsBrokerServicer):
    """A broker from before Follow: WatchArgs only (Follow is UNIMPLEMENTED)."""

    def __init__(self):
        self.follow_calls = 0
        self.watch_calls = 0
        self.updates = queue.Queue()

    def Follow(self, request_iterator, context):
        self.follow_calls += 1
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")

    def WatchArgs(self, request, context):
        self.watch_calls += 1
        yield args_pb2.Args(revision=7, json='{"arg1":"old broker"}', sha256="a" * 64, lineage="L")
        while context.is_active():
            try:
                yield self.updates.get(timeout=0.05)
            except queue.Empty:
                pass


def test_a_broker_without_follow_is_watched_with_watchargs(tmp_path):
    """Follow answered UNIMPLEMENTED: the live copy watches WatchArgs instead,
    serves and follows the args, and reports nothing."""
    old = OldBroker()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    args_pb2_grpc.add_ArgsBrokerServicer_to_server(old, server)
    socket_path = str(tmp_path / "old.sock")
    server.add_insecure_port(f"unix:{socket_path}")
    server.start()
    try:
        with argsbroker.follow(socket_path, timeout=5) as live:
            assert (live.revision, live.value, live.reporting) == (7, {"arg1": "old broker"}, False)
            assert (old.follow_calls, old.watch_calls) == (1, 1)
            old.updates.put(args_pb2.Args(revision=8, json='{"arg1":"newer"}', sha256="b" * 64, lineage="L"))
            assert live.get("/arg1", min_revision=8, timeout=5) == "newer"
    finally:
        server.stop(grace=None)


def test_uvicorn_workers_are_listed_under_uvicorns_name_with_their_pids(broker, servers):
    """The example app under real uvicorn with 2 workers: each worker follows
    under the default name, uvicorn, with its own pid, and reports a patch."""
    broker.start()
    server = servers(broker.socket, workers=2)
    server.wait_ready()
    pids = server.worker_pids(2)

    def listed(revision):
        got = sorted((f.name, f.pid, f.applied_revision) for f in followers(broker.socket).followers)
        return got if got == [("uvicorn", pid, revision) for pid in pids] else None

    eventually("both workers at revision 1", lambda: listed(1))
    assert broker.patch({"arg1": "to every worker"}) == 2
    eventually("both workers at revision 2", lambda: listed(2))
