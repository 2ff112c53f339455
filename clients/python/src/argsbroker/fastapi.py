"""FastAPI (Starlette) glue: a lifespan that follows the broker, and dependencies.

    from fastapi import Depends, FastAPI
    from argsbroker.fastapi import args_lifespan, current_args

    app = FastAPI(lifespan=args_lifespan())

    @app.get("/args")
    async def get_args(args: dict = Depends(current_args)):
        return {"args": args}

Each worker process runs the lifespan, so each one waits for the broker at
startup and then keeps its own live copy; a request reads that copy with no RPC.
With ``args_lifespan(model=Settings)`` (a pydantic model) ``current_args``
hands out a validated ``Settings`` instead of a dict; for a typed parameter,
``SettingsArg = Annotated[Settings, Depends(typed_args(Settings))]``.
"""
from __future__ import annotations

import asyncio
import os
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, Optional, Type, TypeVar, cast

from starlette.requests import HTTPConnection

from ._client import DEFAULT_TIMEOUT, Snapshot
from ._live import LiveArgs, Validate, follow

T = TypeVar("T")

#: Seconds a starting worker waits for the broker, unless args_lifespan() is told.
TIMEOUT_VARIABLE = "ARGSBROKER_TIMEOUT"


def args_lifespan(
    model: Any = None,
    *,
    socket: Optional[str] = None,
    timeout: Optional[float] = None,
    name: Optional[str] = None,
    validate: Optional[Validate] = None,
) -> Callable[[Any], Any]:
    """A lifespan that waits for the broker (``socket``, else $ARGSBROKER_SOCKET,
    which argsbroker.serve() sets; ``timeout`` seconds, else $ARGSBROKER_TIMEOUT,
    else 10), keeps a LiveArgs as ``app.state.args``, and stops following on
    shutdown.

    With ``model`` (a pydantic model, or any type pydantic validates), a
    document that fails it at startup fails the worker with pydantic's message
    (ArgsRejected); a later revision that fails it is logged and not served
    (the worker keeps the previous one; ``live.rejected`` says which, and the
    broker is told: ``broker status``). ``validate`` (a callable taking the
    Snapshot) rejects a revision the same way when it raises, returns an
    error string or returns False.

    ``name`` is how each worker appears in ``broker status``, and what a
    canary selects it by (default: $ARGSBROKER_NAME, else the program's name,
    e.g. ``uvicorn``; the broker adds each worker's pid).

    To combine it with your own lifespan: ``async with args_lifespan()(app): ...``.
    """

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        wait = timeout if timeout is not None else float(os.environ.get(TIMEOUT_VARIABLE) or DEFAULT_TIMEOUT)
        live = await asyncio.to_thread(
            lambda: follow(socket, wait, model=model, name=name, validate=validate)
        )
        app.state.args = live
        try:
            yield
        finally:
            await asyncio.to_thread(live.close)

    return lifespan


def _live(connection: HTTPConnection) -> LiveArgs[Any]:
    return cast(LiveArgs[Any], connection.app.state.args)


# async so that FastAPI calls them inline, not on its thread pool.
async def live_args(connection: HTTPConnection) -> LiveArgs[Any]:
    """Dependency: the app's LiveArgs."""
    return _live(connection)


async def current_snapshot(connection: HTTPConnection) -> Snapshot[Any]:
    """Dependency: the newest Snapshot (revision, lineage, exact JSON text, value, typed)."""
    return _live(connection).snapshot


async def current_args(connection: HTTPConnection) -> Any:
    """Dependency: the newest document: the model's instance with a model,
    else Python objects (exact numbers). Read-only."""
    snapshot = _live(connection).snapshot
    return snapshot.typed if snapshot.typed is not None else snapshot.value


def typed_args(model: Type[T]) -> Callable[[HTTPConnection], Awaitable[T]]:
    """A dependency giving the newest document as ``model`` (the model given
    to ``args_lifespan``), typed for mypy and pyright:

        SettingsArg = Annotated[Settings, Depends(typed_args(Settings))]

        @app.get("/predict")
        async def predict(settings: SettingsArg): ...

    TypeError if the lifespan validates with another model (or none)."""

    async def dependency(connection: HTTPConnection) -> T:
        typed = _live(connection).snapshot.typed
        if not isinstance(typed, model):
            raise TypeError(
                f"typed_args({model.__name__}): the app's args_lifespan validates with "
                f"{type(typed).__name__ if typed is not None else 'no model'}, not {model.__name__}"
            )
        return typed

    return dependency
