"""The lineage rule: within one lineage of the broker's state the client never
goes back; a broker whose state was replaced is followed at once."""
import logging

import argsbroker
from argsbroker._live import NEW_LINEAGE, NEWER, OLDER, SAME, _verdict
from conftest import Broker, eventually

NEW_LINEAGE_WARNING = (
    "the broker's args have a new lineage (its state was reset or replaced); serving its revision 1"
)


def test_a_broker_restarted_with_another_file_and_state_is_followed_at_once(broker, tmp_path, caplog):
    """kill -9 of the broker, then a broker on the same socket with another args
    file in another directory (fresh state: revision 1 of a new lineage): the
    live copy, at revision 3 of the old lineage, adopts it and says so."""
    caplog.set_level(logging.WARNING, logger="argsbroker")
    broker.start()
    with argsbroker.follow(broker.socket) as live:
        old_lineage = live.lineage
        assert len(old_lineage) == 32
        broker.patch({"arg1": "second"})
        third = broker.patch({"arg1": "third"})
        assert live.wait_for(third, timeout=5)
        assert third == 3

        broker.kill()
        other_dir = tmp_path / "other"
        other_dir.mkdir()
        replacement = Broker(other_dir, '{"arg1": "from b.json", "only_in_b": 1}\n', socket=broker.socket)
        replacement.start()
        try:
            served = replacement.document()
            assert served.revision == 1 and served.lineage != old_lineage

            def converged():
                snapshot = live.snapshot
                return snapshot if snapshot.lineage == served.lineage else None

            snapshot = eventually("the live copy to adopt the new lineage", converged)
            assert snapshot.revision == 1
            assert snapshot.json == '{"arg1":"from b.json","only_in_b":1}'
            assert snapshot.sha256 == served.sha256
            assert live.value == {"arg1": "from b.json", "only_in_b": 1}
            assert live.connected
            warnings = [r.getMessage() for r in caplog.records if "new lineage" in r.getMessage()]
            assert warnings == [NEW_LINEAGE_WARNING]

            # Within the new lineage, revisions go forward as usual.
            second = replacement.patch({"arg1": "patched in b"})
            assert live.wait_for(second, timeout=5)
            assert live.get("/arg1") == "patched in b" and live.lineage == served.lineage
        finally:
            replacement.stop()


def snapshot(revision, sha256="a" * 64, lineage="L1"):
    return argsbroker.Snapshot(revision=revision, json="{}", sha256=sha256, value={}, lineage=lineage)


def test_the_rule_compares_lineage_revision_and_sha256():
    """Older within a lineage is kept out; a new lineage, or the same revision
    with another sha256, is adopted; the same snapshot again changes nothing."""
    held = snapshot(5)
    assert _verdict(held, snapshot(6)) == NEWER
    assert _verdict(held, snapshot(5)) == SAME
    assert _verdict(held, snapshot(4)) == OLDER
    assert _verdict(held, snapshot(1, lineage="L2")) == NEW_LINEAGE
    assert _verdict(held, snapshot(5, sha256="b" * 64)) == NEW_LINEAGE
    assert _verdict(snapshot(5, lineage=""), snapshot(5)) == NEW_LINEAGE
