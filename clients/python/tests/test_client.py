"""The Python client against the real broker: exact reads, pointers, the live cache."""
from decimal import Decimal

import pytest

import argsbroker
from conftest import BIG_FLOAT, BIG_INT, eventually


def test_reads_whole_document_and_pointers_with_exact_numbers(broker):
    """get() returns the document and pointer values as Python objects, with a
    30-digit integer and a 30-digit float kept exactly."""
    broker.start()
    with argsbroker.connect(broker.socket) as client:
        doc = client.get()
        assert list(doc) == ["model", "arg1", "features", "list", "exact", "greeting"]
        assert doc["exact"]["big"] == int(BIG_INT)
        assert type(doc["exact"]["big"]) is int
        assert doc["exact"]["pi"] == Decimal(BIG_FLOAT)
        assert str(doc["exact"]["pi"]) == BIG_FLOAT
        assert doc["greeting"] == "你好, 世界 ✓"

        assert client.get("/exact/big") == int(BIG_INT)
        assert str(client.get("/exact/pi")) == BIG_FLOAT
        assert client.get("/model/name") == "sentiment-zh"
        assert client.get("/list/2/a~1b") == "slash"
        assert client.get("/list/2/m~0n") == "tilde"
        assert client.get("/features") == {"new_ranker": False, "beta_banner": True}
        with pytest.raises(argsbroker.ArgsNotFound):
            client.get("/nope")

        snapshot = client.snapshot()
        assert f'"big":{BIG_INT},"pi":{BIG_FLOAT}' in snapshot.json
        assert len(snapshot.sha256) == 64


def test_live_copy_follows_changes_and_reads_locally(broker):
    """follow() holds the document and resolves pointers locally; a patch
    (exact Decimal included) reaches it without a new request."""
    broker.start()
    with argsbroker.follow(broker.socket) as live, argsbroker.connect(broker.socket) as client:
        first = live.revision
        assert live.get("/exact/big") == int(BIG_INT)
        assert live.get("/list/2/a~1b") == "slash"
        with pytest.raises(argsbroker.ArgsNotFound):
            live.get("/list/3")
        with pytest.raises(argsbroker.InvalidPointer):
            live.get("model")

        new_pi = Decimal("2.718281828459045235360287471352")
        written = client.patch({"exact": {"pi": new_pi}, "arg1": None})
        assert written.revision > first
        assert live.wait_for(written.revision, timeout=5)
        assert live.get("/exact/pi") == new_pi and str(live.get("/exact/pi")) == str(new_pi)
        assert "arg1" not in live.value
        assert live.snapshot.json == client.snapshot().json


def test_no_broker_is_a_clear_error_naming_the_socket(tmp_path):
    """Waiting for a broker that never comes ends with an error that names the socket."""
    missing = str(tmp_path / "nobody.sock")
    with pytest.raises(argsbroker.BrokerUnavailable) as caught:
        argsbroker.connect(missing, timeout=0.5)
    assert str(caught.value).startswith(
        f"no broker answered at {missing} within 0.5 s (is the broker running? --socket / ARGSBROKER_SOCKET) "
        f"(last error: cannot connect to the broker at {missing}: "
    ), caught.value
    assert isinstance(caught.value, argsbroker.Error) and isinstance(caught.value, ConnectionError)
    with pytest.raises(argsbroker.BrokerUnavailable, match=missing):
        argsbroker.follow(missing, timeout=0.3)


def test_live_copy_survives_a_broker_restart(broker):
    """The live copy keeps its args while the broker is down, reconnects by
    itself, and never goes back to an older revision."""
    broker.start()
    with argsbroker.follow(broker.socket) as live:
        revision = broker.patch({"arg1": "before restart"})
        assert live.wait_for(revision, timeout=5)
        assert broker.stop() == 0
        eventually("the watcher to notice", lambda: True if not live.connected else None)
        assert live.get("/arg1") == "before restart"
        broker.start()
        after = broker.patch({"arg1": "after restart"})
        assert after > revision
        assert live.wait_for(after, timeout=5)
        assert live.get("/arg1") == "after restart"


def test_set_is_compare_and_set_and_listeners_hear_of_it(broker):
    """set() with a stale expected_revision raises RevisionConflict and changes
    nothing; a current one replaces the document and on_change listeners see it."""
    broker.start()
    seen = []
    with argsbroker.follow(broker.socket) as live, argsbroker.connect(broker.socket) as client:
        live.on_change(lambda snapshot: seen.append(snapshot.revision))
        current = client.snapshot().revision
        with pytest.raises(argsbroker.RevisionConflict):
            client.set({"arg1": "stale"}, expected_revision=current + 5)
        assert client.snapshot().revision == current
        written = client.set({"arg1": "fresh", "n": Decimal("1.50")}, expected_revision=current)
        assert written.json == '{"arg1":"fresh","n":1.50}'
        assert live.wait_for(written.revision, timeout=5)
        eventually("the listener", lambda: True if seen == [written.revision] else None)
