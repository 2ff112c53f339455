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

For FastAPI, see argsbroker.fastapi (args_lifespan, current_args).
"""
from ._client import (
    CHANNEL_OPTIONS,
    DEFAULT_SOCKET,
    DEFAULT_TIMEOUT,
    ArgsNotFound,
    BrokerError,
    BrokerUnavailable,
    Client,
    RevisionConflict,
    Snapshot,
    connect,
    loads,
    open_channel,
)
from ._live import LiveArgs, Rejection, RevisionNotReached, follow
from ._model import ArgsRejected
from ._pointer import InvalidPointer
from ._serve import ServedArgs, broker_executable, serve

__all__ = [
    "CHANNEL_OPTIONS",
    "DEFAULT_SOCKET",
    "DEFAULT_TIMEOUT",
    "ArgsNotFound",
    "ArgsRejected",
    "BrokerError",
    "BrokerUnavailable",
    "Client",
    "InvalidPointer",
    "LiveArgs",
    "Rejection",
    "RevisionConflict",
    "RevisionNotReached",
    "ServedArgs",
    "Snapshot",
    "broker_executable",
    "connect",
    "follow",
    "loads",
    "open_channel",
    "serve",
]
