"""The article's FastAPI app ("how do several workers share data?"), on argsbroker,
for a broker that runs on its own (`broker --args args.json`, systemd, ...).

The original put the args in a module global (every worker saw an empty
copy), then in a fixed-size shared-memory buffer. Here one broker process owns
the args; each worker's lifespan waits for it, keeps a live local copy, and
GET /args answers from that copy with no RPC and no re-encoding (the broker's
exact text, so a 30-digit number stays one).

    broker --args args.json --socket /tmp/argsbroker.sock &
    ARGSBROKER_SOCKET=/tmp/argsbroker.sock uvicorn app:app --workers 4 --port 9880
    ARGSBROKER_SOCKET=/tmp/argsbroker.sock gunicorn -k uvicorn.workers.UvicornWorker -w 4 -b 127.0.0.1:9880 app:app

(test.py beside it is the same program with a broker it starts itself.)
"""
import functools
import os

from fastapi import Depends, FastAPI, Response

import argsbroker
from argsbroker.fastapi import args_lifespan, current_snapshot

# Socket: $ARGSBROKER_SOCKET; startup wait: $ARGSBROKER_TIMEOUT (default 10 s).
app = FastAPI(lifespan=args_lifespan())


@functools.lru_cache(maxsize=2)
def args_body(snapshot: argsbroker.Snapshot) -> bytes:
    """{"args": <document>}, built once per revision from the broker's exact text
    (re-encoding the parsed value would turn exact Decimals into floats)."""
    return b'{"args":' + snapshot.json.encode("utf-8") + b"}"


@app.get("/args")
async def get_args(snapshot: argsbroker.Snapshot = Depends(current_snapshot)):
    return Response(
        content=args_body(snapshot),
        media_type="application/json",
        headers={"X-Args-Revision": str(snapshot.revision), "X-Worker-Pid": str(os.getpid())},
    )
