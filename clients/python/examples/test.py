import uvicorn
from fastapi import Depends, FastAPI

import argsbroker
from argsbroker.fastapi import args_lifespan, current_args

app = FastAPI(lifespan=args_lifespan())

@app.get("/args")
async def get_args(args: dict = Depends(current_args)):
    return {"args": args}

if __name__ == '__main__':
    args = {'arg1': 'arg1'}
    with argsbroker.serve(args):          # a broker owned by this process, for its workers
        uvicorn.run('test:app', host='0.0.0.0', port=9880, workers=5)
