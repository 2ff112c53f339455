"""The example FastAPI app (app.py) under real uvicorn and gunicorn workers,
against the real broker."""
import time

from conftest import BIG_INT, Server, body_for, eventually, parse


def distinct_pids(server: Server, want: int, patience: float = 20.0, check=None) -> set:
    """Sends GET /args on new connections, several at a time, until ``want``
    distinct workers have answered; each response goes through ``check``."""
    from concurrent.futures import ThreadPoolExecutor

    seen = set()
    deadline = time.monotonic() + patience
    with ThreadPoolExecutor(max_workers=8) as pool:
        while len(seen) < want:
            assert time.monotonic() < deadline, f"only workers {sorted(seen)} answered within {patience} s"
            for r in pool.map(lambda _: server.get(), range(16)):
                assert r.status_code == 200, r.text
                if check:
                    check(r)
                seen.add(int(r.headers["X-Worker-Pid"]))
    return seen


def test_uvicorn_workers_all_serve_the_brokers_document(broker, servers):
    """Under `uvicorn --workers 4`, at least 3 distinct workers answer GET /args,
    every body is exactly {"args": <the broker's document>}."""
    broker.start()
    expected = body_for(broker.document())
    server = servers(broker.socket, workers=4)
    first = server.wait_ready()
    assert first.headers["content-type"] == "application/json"
    assert parse(first.content)["args"]["exact"]["big"] == int(BIG_INT)

    def same_document(r):
        assert r.content == expected
        assert r.headers["X-Args-Revision"] == str(broker.document().revision)

    assert len(distinct_pids(server, 3, check=same_document)) >= 3


def test_a_broker_patch_reaches_every_uvicorn_worker_within_a_second(broker, servers):
    """After `broker patch`, every one of the 4 workers serves the new revision,
    and no request sent more than one second after the patch sees the old one."""
    broker.start()
    server = servers(broker.socket, workers=4)
    server.wait_ready()
    workers = set(server.worker_pids(4))
    old = parse(server.get().content)["args"]

    patched_at = time.monotonic()
    revision = broker.cli_patch({"arg1": "patched", "features": {"new_ranker": True}})
    expected = body_for(broker.document())

    updated = set()
    deadline = patched_at + 20
    while updated != workers:
        assert time.monotonic() < deadline, f"workers {sorted(workers - updated)} never served revision {revision}"
        sent = time.monotonic()
        r = server.get()
        pid = int(r.headers["X-Worker-Pid"])
        assert pid in workers
        if int(r.headers["X-Args-Revision"]) >= revision:
            assert r.content == expected
            updated.add(pid)
        else:
            assert parse(r.content)["args"] == old
            assert sent - patched_at < 1.0, f"worker {pid} still served the old args {sent - patched_at:.2f} s after the patch"


def test_workers_keep_serving_through_a_broker_restart(broker, servers):
    """With the broker stopped (SIGTERM) the workers keep serving the last args;
    started again on the same socket, its next change reaches every worker."""
    broker.start()
    server = servers(broker.socket, workers=2)
    server.wait_ready()
    workers = set(server.worker_pids(2))
    before = broker.document()

    assert broker.stop() == 0
    for _ in range(20):
        r = server.get()
        assert r.status_code == 200 and r.content == body_for(before)

    broker.start()
    revision = broker.patch({"arg1": "after restart"})
    assert revision > before.revision
    expected = body_for(broker.document())

    updated = set()

    def all_updated():
        r = server.get()
        assert r.status_code == 200
        if int(r.headers["X-Args-Revision"]) >= revision:
            assert r.content == expected
            updated.add(int(r.headers["X-Worker-Pid"]))
        else:
            assert int(r.headers["X-Args-Revision"]) == before.revision
        return True if updated == workers else None

    eventually("every worker to serve the change made after the restart", all_updated)


def test_app_waits_for_a_broker_that_starts_later(broker, servers):
    """Started before the broker, the app waits for it (not crashing), then
    serves the document once the broker appears."""
    server = servers(broker.socket, workers=2, timeout=30)
    eventually(
        "the workers to say they are waiting for the broker",
        lambda: True if server.log_text().count(f"no broker at {broker.socket} yet") >= 2 else None,
    )
    assert server.try_get(timeout=0.3) is None  # not serving without args
    broker.start()
    r = server.wait_ready()
    assert r.content == body_for(broker.document())


def test_gunicorn_with_uvicorn_workers_serves_args(broker, servers):
    """`gunicorn -k uvicorn.workers.UvicornWorker` serves GET /args with the broker's document."""
    broker.start()
    expected = body_for(broker.document())
    server = servers(broker.socket, kind="gunicorn", workers=2)
    r = server.wait_ready()
    assert r.content == expected
    assert r.headers["X-Args-Revision"] == str(broker.document().revision)
    assert int(r.headers["X-Worker-Pid"]) in server.worker_pids(2)


def test_uvicorn_on_a_unix_socket_serves_args(broker, servers):
    """`uvicorn --uds PATH --workers 2` serves GET /args with the broker's document."""
    broker.start()
    expected = body_for(broker.document())
    server = servers(broker.socket, workers=2, uds=True)
    assert server.wait_ready().content == expected
    for _ in range(10):
        r = server.get()
        assert r.status_code == 200 and r.content == expected
