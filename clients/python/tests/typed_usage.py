"""Not a test module: what check-types runs `mypy --strict` and pyright on beside the
package, to prove that a user's typo in a model's field is caught."""
from typing import Annotated

from fastapi import Depends, FastAPI
from pydantic import BaseModel

import argsbroker
from argsbroker.fastapi import args_lifespan, typed_args


class Settings(BaseModel):
    model_path: str
    batch_size: int = 32


SettingsArg = Annotated[Settings, Depends(typed_args(Settings))]
app = FastAPI(lifespan=args_lifespan(model=Settings))


@app.get("/predict")
async def predict(settings: SettingsArg) -> dict[str, int]:
    return {"batch": settings.batch_size}


def live_reads() -> int:
    live = argsbroker.follow(model=Settings)
    snapshot: argsbroker.Snapshot[Settings] = live.snapshot
    return live.typed.batch_size + snapshot.revision


def typo() -> object:
    live = argsbroker.follow(model=Settings)
    return live.typed.batch_sise  # TYPO: mypy and pyright must report this line
