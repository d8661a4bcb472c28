"""The validation every config dataclass shares: field types checked on construction."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the reason."""


def _matches(value: Any, annotation: Any) -> bool:
    """Whether `value` fits the (simple) type annotation; int is accepted where float is asked."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is Literal:
        return value in typing.get_args(annotation)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(args) == len(value) and all(_matches(v, a) for v, a in zip(value, args))
    if origin is dict:
        key_t, val_t = typing.get_args(annotation)
        return isinstance(value, dict) and all(
            _matches(k, key_t) and _matches(v, val_t) for k, v in value.items())
    return isinstance(value, origin or annotation)


def _expected(annotation: Any, value: Any) -> str:
    """Why ``value`` does not fit ``annotation``: the choices of a Literal, else the type."""
    if typing.get_origin(annotation) is Literal:
        return f"choose one of {typing.get_args(annotation)}"
    return f"expected {annotation}, got {type(value).__name__}"


def _freeze(value: Any) -> Any:
    """Gin and JSON hand over lists; fields are tuples so the configs stay hashable and frozen."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


@dataclasses.dataclass(frozen=True)
class _Validated:
    """Base: checks every field against its annotation, then runs the class's `_validate`."""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = _freeze(getattr(self, field.name))
            object.__setattr__(self, field.name, value)
            if not _matches(value, hints[field.name]):
                self._fail(field.name, value, _expected(hints[field.name], value))
        self._validate()

    def _validate(self) -> None:
        pass

    def _fail(self, name: str, value: Any, reason: str) -> typing.NoReturn:
        raise ConfigError(f"{type(self).__name__}.{name} = {value!r}: {reason}")

    def _require(self, ok: bool, name: str, reason: str) -> None:
        if not ok:
            self._fail(name, getattr(self, name), reason)

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain Python values (JSON-able), for checkpoints and logs."""
        return dataclasses.asdict(self)
