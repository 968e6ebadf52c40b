"""Strict request bodies that still accept every JSON value their schema allows."""

from __future__ import annotations

import functools
import typing
from typing import Any

from pydantic import BaseModel, model_validator


class IntegralFloats(BaseModel):
    """JSON Schema's "integer" includes 6.0: integer fields take integral floats as ints, while 6.5, "6" and true
    stay refused (strict models otherwise refuse every float)."""

    @model_validator(mode="before")
    @classmethod
    def _integral_floats(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        names = _integer_fields(cls)
        return {k: int(v) if k in names and isinstance(v, float) and v.is_integer() else v for k, v in data.items()}


@functools.cache
def _integer_fields(model: type[BaseModel]) -> frozenset[str]:
    def integer(annotation: Any) -> bool:
        kinds = typing.get_args(annotation) or (annotation,)
        return int in kinds and float not in kinds

    return frozenset(name for name, f in model.model_fields.items() if integer(f.annotation))
