"""The article's FastAPI app ("how do several workers share data?"), on argsbroker.

The original put the args in a module global (every worker saw an empty
copy), then in a fixed-size shared-memory buffer. Here one broker process owns
the args; each worker's lifespan waits for it, keeps a live local copy, and
GET /args reads that copy with no RPC and no re-encoding.

Run it (with a broker on the same socket):

    broker --args args.json --socket /tmp/argsbroker.sock &
    ARGSBROKER_SOCKET=/tmp/argsbroker.sock uvicorn app:app --workers 4 --port 9880
    gunicorn -k uvicorn.workers.UvicornWorker -w 4 -b 127.0.0.1:9880 app:app
"""
import asyncio
import functools
import os
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Response
from fastapi.requests import HTTPConnection

import argsbroker_client

SOCKET = os.environ.get("ARGSBROKER_SOCKET", argsbroker_client.DEFAULT_SOCKET)
# How long a starting worker waits for the broker before it gives up.
STARTUP_TIMEOUT = float(os.environ.get("ARGSBROKER_TIMEOUT", argsbroker_client.DEFAULT_TIMEOUT))


@asynccontextmanager
async def lifespan(app: FastAPI):
    # Runs in every worker: wait for the broker, then follow it in the background.
    app.state.args = await asyncio.to_thread(argsbroker_client.follow, SOCKET, STARTUP_TIMEOUT)
    try:
        yield
    finally:
        await asyncio.to_thread(app.state.args.close)


app = FastAPI(lifespan=lifespan)


async def get_api_shared_args(connection: HTTPConnection) -> argsbroker_client.LiveArgs:
    return connection.app.state.args


@functools.lru_cache(maxsize=2)
def args_body(snapshot: argsbroker_client.Snapshot) -> bytes:
    """{"args": <document>}, built once per revision from the broker's exact text
    (re-encoding the parsed value would turn exact Decimals into floats)."""
    return b'{"args":' + snapshot.json.encode("utf-8") + b"}"


@app.get("/args")
async def get_args(args: argsbroker_client.LiveArgs = Depends(get_api_shared_args)):
    snapshot = args.snapshot
    return Response(
        content=args_body(snapshot),
        media_type="application/json",
        headers={"X-Args-Revision": str(snapshot.revision), "X-Worker-Pid": str(os.getpid())},
    )
