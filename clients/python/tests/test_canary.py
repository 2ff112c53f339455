"""Canary rollouts from Python (issue 20): a serve() handle starts a canary
(`handle.patch(..., canary=..., bake=...)`), promotes or aborts it; live
copies in this process, each with its own name, serve what their selection
says (`live.revision`), while plain reads keep the stable revision. Refusals
are RevisionConflict, the package's FAILED_PRECONDITION class."""
import asyncio
import json
import subprocess

import pytest
from pydantic import BaseModel

import argsbroker
from conftest import BROKER_BIN, PATIENCE, eventually


def status(socket_path):
    """`broker status --json`, parsed."""
    run = subprocess.run(
        [str(BROKER_BIN), "status", "--socket", socket_path, "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def history(socket_path):
    run = subprocess.run(
        [str(BROKER_BIN), "history", "--socket", socket_path],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


def selected(socket_path):
    """The names `broker status` marks as selected by the running canary."""
    return sorted(f["name"] for f in status(socket_path)["followers"] if f["canary"])


def listed(socket_path, count):
    eventually(f"{count} followers listed", lambda: len(status(socket_path)["followers"]) == count or None)


def test_a_canary_goes_to_the_selected_followers_then_promote_gives_it_to_everyone():
    with argsbroker.serve({"v": 1}) as handle:
        with argsbroker.follow(handle.socket, name="api-1") as api1, \
                argsbroker.follow(handle.socket, name="api-2") as api2, \
                argsbroker.follow(handle.socket, name="batch") as batch:
            listed(handle.socket, 3)
            candidate = handle.patch({"v": 2}, canary="name=api-*")
            assert (candidate.revision, candidate.value) == (2, {"v": 2})
            assert selected(handle.socket) == ["api-1", "api-2"]
            for live in (api1, api2):
                assert live.wait_for(2, timeout=PATIENCE)
                assert (live.revision, live.value) == (2, {"v": 2})
            # Followers outside the canary, and plain reads, keep the stable revision.
            assert (batch.revision, batch.value) == (1, {"v": 1})
            assert handle.snapshot().revision == 1
            assert handle.get() == {"v": 1}
            canary = status(handle.socket)["canary"]
            assert (canary["stable_revision"], canary["candidate_revision"], canary["selector"]) == (1, 2, "name=api-*")

            # A plain write while it runs is refused, naming the canary; nothing changes.
            with pytest.raises(argsbroker.RevisionConflict) as refused:
                handle.patch({"v": 3})
            assert str(refused.value) == (
                "a canary runs (candidate revision 2 to name=api-*): promote or abort it first, "
                "or write with --force, which aborts it"
            )
            assert refused.value.current_revision is None
            with pytest.raises(argsbroker.RevisionConflict, match=r"^a canary runs \(candidate revision 2"):
                handle.set({"v": 3}, canary="50%")
            assert handle.snapshot().revision == 1

            promoted = handle.promote(candidate_revision=2)
            assert (promoted.revision, promoted.value) == (2, {"v": 2})
            assert batch.wait_for(2, timeout=PATIENCE)
            assert [live.revision for live in (api1, api2, batch)] == [2, 2, 2]
            assert handle.snapshot().revision == 2
            assert status(handle.socket)["canary"] is None
            assert history(handle.socket).splitlines()[-1].endswith("patch     canary to name=api-*; promoted")
            with pytest.raises(argsbroker.RevisionConflict, match="^no canary runs$"):
                handle.promote()
            # A compare-and-set conflict says which revision is current; a canary's refusals do not.
            with pytest.raises(argsbroker.RevisionConflict) as conflict:
                handle.set({"v": 3}, expected_revision=1)
            assert conflict.value.current_revision == 2


def test_abort_moves_every_follower_forward_to_the_stable_document_and_force_replaces_a_canary():
    with argsbroker.serve({"v": 1}) as handle:
        with argsbroker.follow(handle.socket, name="api-1") as api1, \
                argsbroker.follow(handle.socket, name="batch") as batch:
            listed(handle.socket, 2)
            assert handle.patch({"v": 2}, canary="name=api-1").revision == 2
            assert api1.wait_for(2, timeout=PATIENCE)
            aborted = handle.abort(reason="looks slow")
            assert (aborted.revision, aborted.value) == (3, {"v": 1})
            for live in (api1, batch):
                assert live.wait_for(3, timeout=PATIENCE)
                assert (live.revision, live.value) == (3, {"v": 1})
            assert history(handle.socket).splitlines()[-1].endswith("abort     aborted canary 2: looks slow")

            # A rollback can start a canary too; force=True replaces it.
            assert handle.rollback(2, canary="name=api-*").revision == 4
            assert api1.wait_for(4, timeout=PATIENCE)
            assert api1.value == {"v": 2}
            forced = handle.set({"v": 6}, force=True)
            assert (forced.revision, forced.value) == (6, {"v": 6})
            assert batch.wait_for(6, timeout=PATIENCE) and api1.wait_for(6, timeout=PATIENCE)
            assert "abort     aborted canary 4: replaced by a forced write" in history(handle.socket)


def test_a_baked_canary_is_promoted_by_the_broker_and_bake_needs_a_canary():
    with argsbroker.serve({"v": 1}) as handle:
        with argsbroker.follow(handle.socket, name="api-1") as api1, \
                argsbroker.follow(handle.socket, name="batch") as batch:
            listed(handle.socket, 2)
            with pytest.raises(ValueError, match="^bake= needs canary="):
                handle.patch({"v": 2}, bake=30)
            with pytest.raises(ValueError, match="^bake must be more than 0"):
                handle.patch({"v": 2}, canary=1, bake=0)
            assert handle.snapshot().revision == 1
            # canary=1: one follower, chosen by the broker; promoted once it applied it for 0.2 s.
            assert handle.patch({"v": 2}, canary=1, bake=0.2).revision == 2
            for live in (api1, batch):
                assert live.wait_for(2, timeout=PATIENCE)
            eventually("the broker to promote the baked canary", lambda: status(handle.socket)["canary"] is None or None)
            assert handle.snapshot().revision == 2


def test_no_follower_selected_and_a_bad_selector_are_refused():
    with argsbroker.serve({"v": 1}) as handle:
        with pytest.raises(argsbroker.RevisionConflict) as refused:
            handle.patch({"v": 2}, canary=2)
        assert str(refused.value) == "--canary 2 selects none of the 0 followers connected; nothing was changed"
        with pytest.raises(argsbroker.ArgsRejected, match=r'^--canary "everyone": not a selector'):
            handle.patch({"v": 2}, canary="everyone")
        with pytest.raises(TypeError):
            handle.patch({"v": 2}, canary=True)  # type: ignore[arg-type]
        assert handle.snapshot().revision == 1


def test_with_a_model_a_canary_running_is_refused_at_once_not_retried():
    class Settings(BaseModel):
        v: int

    with argsbroker.serve({"v": 1}, model=Settings) as handle:
        with argsbroker.follow(handle.socket, name="api-1") as api1:
            listed(handle.socket, 1)
            assert handle.patch({"v": 2}, canary="name=api-1").revision == 2
            assert api1.wait_for(2, timeout=PATIENCE)
            with pytest.raises(argsbroker.RevisionConflict, match=r"^a canary runs"):
                handle.patch({"v": 3})
            with pytest.raises(argsbroker.ArgsRejected):
                handle.patch({"v": "x"}, force=True)
            assert handle.patch({"v": 3}, force=True).revision == 4


def test_the_name_comes_from_ARGSBROKER_NAME_and_selects_the_follower(monkeypatch):
    monkeypatch.setenv("ARGSBROKER_NAME", "api-from-env")
    with argsbroker.serve({"v": 1}) as handle:
        with argsbroker.follow(handle.socket) as named, argsbroker.follow(handle.socket, name="other") as other:
            assert (named.name, other.name) == ("api-from-env", "other")
            listed(handle.socket, 2)
            handle.patch({"v": 2}, canary="name=api-*")
            assert selected(handle.socket) == ["api-from-env"]
            assert named.wait_for(2, timeout=PATIENCE)
            assert other.revision == 1


def test_the_async_client_and_handle_start_promote_and_abort_canaries():
    with argsbroker.serve({"v": 1}) as handle:
        with argsbroker.follow(handle.socket, name="api-1") as api1:
            listed(handle.socket, 1)

            async def main():
                async with await argsbroker.connect_async(handle.socket) as client:
                    assert (await client.patch({"v": 2}, canary="name=api-1", bake=3600)).revision == 2
                    assert await api1.wait_for_async(2, timeout=PATIENCE)
                    assert (await client.snapshot()).revision == 1
                    with pytest.raises(argsbroker.RevisionConflict, match="^revision 9 is not the candidate"):
                        await client.promote(candidate_revision=9)
                    assert (await client.abort(reason="async")).revision == 3
                    assert (await client.set({"v": 4}, canary="name=api-1")).revision == 4
                    assert (await client.promote()).revision == 4
                    assert (await client.rollback(3, canary="name=api-1")).revision == 5
                assert (await handle.abort_async()).revision == 6
                assert (await handle.patch_async({"v": 7}, canary="name=api-1")).revision == 7
                assert (await handle.promote_async()).revision == 7
                assert (await handle.set_async({"v": 8}, canary="name=api-1")).revision == 8
                # force: the canary is aborted (9), then the rollback is made (10).
                assert (await handle.rollback_async(3, force=True)).revision == 10

            asyncio.run(main())
            assert api1.wait_for(10, timeout=PATIENCE)
            assert api1.value == {"v": 1}
