"""Typed, self-describing settings: dataclass fields that carry their help text and checks.

Run configs (:mod:`pcpo.trainer.config`), bench files (:mod:`pcpo.eval.bench`) and the real model
families' loader options (:mod:`pcpo.models.diffusers_base`) declare their settings with :func:`spec_field`,
build them from plain data with :func:`from_dict` (unknown keys and wrong types fail naming the key) and
check the declared bounds and choices with :func:`check_fields`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import field
from typing import Any

from .errors import ConfigError

__all__ = ["check_fields", "from_dict", "spec_field"]


def spec_field(default: Any = dataclasses.MISSING, help: str = "", factory: Any = dataclasses.MISSING, **kw):
    """A field with help text and its checks in metadata: ``choices`` (a tuple, or a callable returning
    the registered names), ``gt``/``ge``/``le`` bounds (None values are always allowed)."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check/convert ``value`` against a simple type hint; ConfigError names ``key``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: must be a string, got {value!r}")
    if hint in (dict,) or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"{key}: must be a mapping, got {value!r}")
    if hint is list or origin is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        raise ConfigError(f"{key}: must be a list, got {value!r}")
    if hint in (tuple,) or origin is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(value)
        raise ConfigError(f"{key}: must be a list, got {value!r}")
    return value


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from nested ``data``; unknown keys and bad types raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: must be a mapping, got {data!r}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key; valid keys here: {', '.join(sorted(names))}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        key = prefix + f.name
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = from_dict(hint, data[f.name] or {}, key + ".")
        else:
            kwargs[f.name] = _coerce(key, data[f.name], hint)
    return cls(**kwargs)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _fmt(v: Any) -> str:
    return repr(v) if isinstance(v, str) else str(v)


def check_fields(obj, prefix: str = "") -> None:
    """The generic validator: every field's ``choices`` and bounds from its metadata, recursively."""
    for f in dataclasses.fields(obj):
        key, value, meta = prefix + f.name, getattr(obj, f.name), f.metadata
        if dataclasses.is_dataclass(value):
            check_fields(value, key + ".")
            continue
        if value is None:
            continue
        choices = meta.get("choices")
        if choices is not None:
            names = choices() if callable(choices) else choices
            _check(value in names, f"{key}: must be one of {', '.join(names)}, got {_fmt(value)}")
        for bound, ok, word in (("gt", lambda v, b: v > b, ">"), ("ge", lambda v, b: v >= b, ">="),
                                ("lt", lambda v, b: v < b, "<"), ("le", lambda v, b: v <= b, "<=")):
            if bound in meta:
                _check(ok(value, meta[bound]), f"{key}: must be {word} {meta[bound]}, got {_fmt(value)}")
