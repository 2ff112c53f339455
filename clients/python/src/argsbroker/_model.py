"""Typed args: a pydantic model (or any type pydantic validates) applied to each revision."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ._client import Snapshot


from ._errors import ArgsRejected

#: Turns a snapshot into the model's value, or raises ArgsRejected.
Validator = Callable[["Snapshot[Any]"], Any]


def model_name(model: Any) -> str:
    return getattr(model, "__name__", None) or repr(model)


def validator(model: Any) -> Validator:
    """A Validator for ``model``: pydantic parses the broker's exact JSON text
    (so a Decimal field keeps every digit, an int field takes a 30-digit integer)."""
    try:
        from pydantic import TypeAdapter, ValidationError
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "argsbroker: a model needs pydantic 2 (pip install 'argsbroker[fastapi]' or pydantic)"
        ) from err
    adapter = TypeAdapter(model)
    name = model_name(model)

    def validate(snapshot: "Snapshot[Any]") -> Any:
        try:
            return adapter.validate_json(snapshot.json)
        except ValidationError as err:
            raise ArgsRejected(
                f"the broker's args at revision {snapshot.revision} do not fit {name}: {err}", str(err)
            ) from None

    return validate


def check(model: Any, text: str, what: str) -> Any:
    """Validates JSON ``text`` against ``model`` before it is published; raises ArgsRejected."""
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(model).validate_json(text)
    except ValidationError as err:
        raise ArgsRejected(f"{what} do not fit {model_name(model)}: {err}", str(err)) from None
