"""FastAPI (Starlette) glue: a lifespan that follows the broker, and dependencies.

    from fastapi import Depends, FastAPI
    from argsbroker_client.fastapi import args_lifespan, current_args

    app = FastAPI(lifespan=args_lifespan())

    @app.get("/hello")
    async def hello(args: dict = Depends(current_args)):
        return {"model": args["model"]["name"]}

Each worker process runs the lifespan, so each one waits for the broker at
startup and then keeps its own live copy; a request reads that copy with no RPC.
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Optional

from starlette.requests import HTTPConnection

from ._client import DEFAULT_TIMEOUT, Snapshot
from ._live import LiveArgs, follow


def args_lifespan(
    socket_path: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT
) -> Callable[[Any], Any]:
    """A lifespan that waits for the broker ($ARGSBROKER_SOCKET by default, up
    to ``timeout`` seconds), stores a LiveArgs as ``app.state.args``, and stops
    following on shutdown. To combine it with your own: ``async with
    args_lifespan()(app): ...`` inside your lifespan."""

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        live = await asyncio.to_thread(follow, socket_path, timeout)
        app.state.args = live
        try:
            yield
        finally:
            await asyncio.to_thread(live.close)

    return lifespan


# async so that FastAPI calls them inline, not on its thread pool.
async def live_args(connection: HTTPConnection) -> LiveArgs:
    """Dependency: the app's LiveArgs."""
    return connection.app.state.args


async def current_snapshot(connection: HTTPConnection) -> Snapshot:
    """Dependency: the newest Snapshot (revision, exact JSON text, value)."""
    return connection.app.state.args.snapshot


async def current_args(connection: HTTPConnection) -> Any:
    """Dependency: the newest document as Python objects (exact numbers; read-only)."""
    return connection.app.state.args.value
