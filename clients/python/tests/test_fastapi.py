"""argsbroker.fastapi: the lifespan and dependencies the README's
"four lines" use, in-process through httpx's ASGI transport."""
import asyncio

import httpx
from fastapi import Depends, FastAPI

from argsbroker.fastapi import args_lifespan, current_args, current_snapshot
from conftest import BIG_INT


def test_the_four_lines_serve_live_args(broker):
    """A FastAPI app built with args_lifespan() and Depends(current_args) reads
    the broker's args per request with exact numbers, and sees a patch."""
    broker.start()

    app = FastAPI(lifespan=args_lifespan(socket=broker.socket))

    @app.get("/hello")
    async def hello(args: dict = Depends(current_args)):
        return {"model": args["model"]["name"], "big": str(args["exact"]["big"])}

    @app.get("/revision")
    async def current_revision(snapshot=Depends(current_snapshot)):
        return {"revision": snapshot.revision}

    async def scenario() -> int:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                assert (await client.get("/hello")).json() == {"model": "sentiment-zh", "big": BIG_INT}
                revision = await asyncio.to_thread(broker.patch, {"model": {"name": "sentiment-en"}})
                assert await app.state.args.wait_for_async(revision, 5)
                assert (await client.get("/hello")).json()["model"] == "sentiment-en"
                assert (await client.get("/revision")).json() == {"revision": revision}
                assert app.state.args.connected
                return revision

    revision = asyncio.run(scenario())
    assert app.state.args.revision == revision  # stopped on shutdown; the last args stay
