"""Typed args (a pydantic model) and async waits, in-process through httpx's
ASGI transport, against the real broker; and a worker whose args do not fit
its model, under a real uvicorn."""
import asyncio
import logging
import os
import subprocess
import sys
import textwrap
from decimal import Decimal

import httpx
import pytest
from fastapi import Depends, FastAPI
from pydantic import BaseModel

import argsbroker
from argsbroker.fastapi import args_lifespan, current_args
from conftest import BIG_INT, Proc, eventually, loopback_socket


class Model(BaseModel):
    name: str
    max_batch: int


class Settings(BaseModel):
    model: Model
    arg1: str
    exact: dict


def test_a_model_types_the_args_and_rejects_a_bad_revision(broker, caplog):
    """current_args hands a validated Settings; a later revision that fails the
    model is logged and not served (the previous one stays), and the next good
    one is served again."""
    caplog.set_level(logging.WARNING, logger="argsbroker")
    broker.start()
    app = FastAPI(lifespan=args_lifespan(model=Settings, socket=broker.socket))

    @app.get("/hello")
    async def hello(settings: Settings = Depends(current_args)):
        assert isinstance(settings, Settings)
        return {"model": settings.model.name, "batch": settings.model.max_batch, "big": str(settings.exact["big"])}

    async def scenario():
        async with app.router.lifespan_context(app):
            live = app.state.args
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
                assert (await client.get("/hello")).json() == {"model": "sentiment-zh", "batch": 32, "big": BIG_INT}
                good = live.revision

                bad = await asyncio.to_thread(broker.patch, {"model": {"max_batch": "many"}})
                await asyncio.to_thread(
                    eventually, "the rejection", lambda: live.rejected if live.rejected else None
                )
                assert live.rejected.revision == bad
                assert "1 validation error for Settings" in live.rejected.reason
                assert "model.max_batch" in live.rejected.reason
                assert live.revision == good
                assert (await client.get("/hello")).json()["batch"] == 32
                messages = [r.getMessage() for r in caplog.records if "rejected revision" in r.getMessage()]
                assert len(messages) == 1
                assert messages[0].startswith(
                    f"rejected revision {bad} from the broker at {broker.socket}: 1 validation error for Settings; "
                    "model.max_batch; Input should be a valid integer"
                ), messages[0]
                assert "\n" not in messages[0]  # pydantic's lines in one record, on one line
                assert messages[0].endswith(f"; still serving revision {good}")

                fixed = await asyncio.to_thread(broker.patch, {"model": {"max_batch": 64}})
                assert await live.wait_for_async(fixed, timeout=5)
                assert (await client.get("/hello")).json()["batch"] == 64
                assert live.rejected is None

    asyncio.run(scenario())


def test_args_that_fail_the_model_at_startup_fail_with_pydantics_message(broker):
    """follow(model=...) on a document that does not fit raises ArgsRejected
    carrying pydantic's own message."""
    broker.start()

    class Strict(BaseModel):
        arg1: int

    with pytest.raises(argsbroker.ArgsRejected) as caught:
        argsbroker.follow(broker.socket, model=Strict)
    text = str(caught.value)
    assert text.startswith("the broker's args at revision 1 do not fit Strict: 1 validation error for Strict\narg1\n")
    assert "Input should be a valid integer" in text


def test_a_uvicorn_worker_whose_args_fail_its_model_does_not_start(broker, tmp_path):
    """Under real uvicorn, a worker whose model refuses the broker's args exits
    at startup with pydantic's message in its log, and never serves."""
    broker.start()
    (tmp_path / "strict.py").write_text(textwrap.dedent("""
        from fastapi import FastAPI
        from pydantic import BaseModel
        from argsbroker.fastapi import args_lifespan

        class Strict(BaseModel):
            arg1: int

        app = FastAPI(lifespan=args_lifespan(model=Strict))
    """))
    with loopback_socket() as listener:
        proc = Proc(
            [sys.executable, "-m", "uvicorn", "strict:app", "--fd", str(listener.fileno())],
            tmp_path / "uvicorn.log", cwd=tmp_path,
            env={**os.environ, "ARGSBROKER_SOCKET": broker.socket}, pass_fds=(listener.fileno(),),
        )
    try:
        status = proc.popen.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.stop()
        raise AssertionError("uvicorn kept running with args that fail its model")
    log = proc.log.read_text()
    assert status != 0
    assert "1 validation error for Strict" in log
    assert "Application startup failed" in log


def test_wait_for_async_is_awaitable_and_leaves_the_loop_free(broker):
    """await live.wait_for_async(n) resolves when revision n arrives while
    other tasks keep running on the same loop, and returns False on timeout."""
    broker.start()

    async def scenario():
        with argsbroker.follow(broker.socket) as live:
            assert await live.wait_for_async(live.revision, timeout=0.01)  # already there
            assert await live.wait_for_async(live.revision + 1, timeout=0.05) is False
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.005)

            ticking = asyncio.create_task(ticker())
            waiting = asyncio.create_task(live.wait_for_async(live.revision + 1, timeout=10))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            written = await asyncio.to_thread(broker.patch, {"exact": {"pi": Decimal("3.5")}})
            assert await waiting is True
            assert live.revision == written and str(live.get("/exact/pi")) == "3.5"
            ticking.cancel()
            assert ticks >= 5

    asyncio.run(scenario())
