"""Python client for argsbroker: one live, exact set of args shared by every
worker process on a host, served by the broker over gRPC on a Unix socket.

    import argsbroker_client

    client = argsbroker_client.connect("/tmp/argsbroker.sock")  # waits up to 10 s
    client.get("/model/name")           # one RPC; numbers exact (int, Decimal)

    live = argsbroker_client.follow("/tmp/argsbroker.sock")  # background watcher
    live.value, live.get("/model/name")  # local reads, always the newest revision

For FastAPI, see argsbroker_client.fastapi.
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
from ._live import LiveArgs, follow
from ._pointer import InvalidPointer

__all__ = [
    "CHANNEL_OPTIONS",
    "DEFAULT_SOCKET",
    "DEFAULT_TIMEOUT",
    "ArgsNotFound",
    "BrokerError",
    "BrokerUnavailable",
    "Client",
    "InvalidPointer",
    "LiveArgs",
    "RevisionConflict",
    "Snapshot",
    "connect",
    "follow",
    "loads",
    "open_channel",
]
