"""argsbroker: one live, exact set of args shared by every worker process of
an app (uvicorn or gunicorn workers included), served by a small broker.

    import argsbroker

    with argsbroker.serve({"arg1": "arg1"}) as handle:   # a broker owned by this process
        uvicorn.run("test:app", workers=5)                # every worker sees the args
        # handle.patch({"arg1": "changed"}) from any thread: every worker follows

    live = argsbroker.follow()             # in a worker: a live local copy
    live.value, live.get("/model/name")    # local reads, always the newest revision
    live.get(min_revision=7)               # once revision 7 (or newer) is here (1 s at most)

    client = argsbroker.connect()          # one-shot reads and writes (one RPC each)
    client = await argsbroker.connect_async()   # the same, on asyncio (grpc.aio)

Every exception it raises on purpose is an ``argsbroker.Error``.

For FastAPI, see argsbroker.fastapi (args_lifespan, current_args).
"""
__version__ = "0.1.0"

from ._aio import AsyncClient, connect_async
from ._client import (
    CHANNEL_OPTIONS,
    DEFAULT_SOCKET,
    DEFAULT_TIMEOUT,
    Client,
    Snapshot,
    connect,
    loads,
    open_channel,
)
from ._errors import (
    ArgsNotFound,
    ArgsRejected,
    BrokerError,
    BrokerFailed,
    BrokerUnavailable,
    Error,
    InvalidPointer,
    RevisionConflict,
    RevisionNotReached,
)
from ._live import LiveArgs, Rejection, follow
from ._serve import ServedArgs, broker_executable, serve

__all__ = [
    "CHANNEL_OPTIONS",
    "DEFAULT_SOCKET",
    "DEFAULT_TIMEOUT",
    "ArgsNotFound",
    "ArgsRejected",
    "AsyncClient",
    "BrokerError",
    "BrokerFailed",
    "BrokerUnavailable",
    "Client",
    "Error",
    "InvalidPointer",
    "LiveArgs",
    "Rejection",
    "RevisionConflict",
    "RevisionNotReached",
    "ServedArgs",
    "Snapshot",
    "__version__",
    "broker_executable",
    "connect",
    "connect_async",
    "follow",
    "loads",
    "open_channel",
    "serve",
]
