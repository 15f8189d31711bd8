"""Conversion between plain data (parsed YAML) and typed settings dataclasses.

Type-directed and strict: a bool is not an int, a string is not a number; lenient only where
YAML cannot express the Python type (a list becomes a tuple, a mapping becomes a section, an int
is a valid float). Works on any dataclass, so the core's own settings (``ConvLayer``, the
network settings, ``Solver``) serve as config sections unchanged: this module coerces types,
their ``__post_init__`` checks values, and errors get the dotted path of the field.

Why not pydantic: the core dataclasses would have to become pydantic models (a dependency of
the layer that imports only torch), and its multi-line error reports would need rewriting
into the one-line ``path: value is not valid; expected ...`` form with "did you mean"
suggestions that users rely on; the coercion rules here are a hundred lines.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from eqprop.core.validation import SettingError, check_choice, invalid, show, suggest

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "INT_GE0",
    "INT_GE1",
    "NON_NEGATIVE",
    "POSITIVE",
    "UNIT_INTERVAL",
    "ConfigError",
    "Section",
    "coerce",
    "config_to_dict",
    "describe_type",
    "from_mapping",
    "hints",
    "is_seq",
    "union_args",
    "unknown_key",
]

#: Every config problem is a :class:`~eqprop.core.validation.SettingError`: one line,
#: ``"<dotted.path>: <problem>"``.
ConfigError = SettingError


def unknown_key(key: object, valid: list[str], path: str = "") -> ConfigError:
    """``<path>.<key>: unknown key (did you mean ...?); valid keys: ...``."""
    return ConfigError(
        f"unknown key{suggest(key, valid)}; valid keys: {', '.join(valid)}",
        f"{path}.{key}" if path else str(key),
    )


# --------------------------------------------------------------------------------------------
# Per-field range checks, attached to dataclass fields as metadata and applied to each element
# of a tuple value.


@dataclass(frozen=True)
class _Check:
    expected: str
    ok: Callable[[Any], bool]


def _range(expected: str, ok: Callable[[Any], bool]) -> dict[str, _Check]:
    return {"check": _Check(expected, ok)}


INT_GE0 = _range("an integer >= 0", lambda v: v >= 0)
INT_GE1 = _range("an integer >= 1", lambda v: v >= 1)
POSITIVE = _range("a number > 0", lambda v: v > 0)
NON_NEGATIVE = _range("a number >= 0", lambda v: v >= 0)
UNIT_INTERVAL = _range("a number in [0, 1)", lambda v: 0 <= v < 1)


# --------------------------------------------------------------------------------------------
# Type-directed coercion shared by every section: strict about types (bool is not an int, a
# string is not a number), lenient only where YAML cannot express the Python type (a list
# becomes a tuple, a mapping becomes a section, an int is a valid float).

_NoneType = type(None)


@functools.cache
def hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def union_args(tp: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return None


def is_seq(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def describe_type(tp: Any, plural: bool = False) -> str:
    if tp is int:
        return "integers" if plural else "an integer"
    if tp is float:
        return "numbers" if plural else "a number"
    if tp is str:
        return "strings" if plural else "a string"
    if tp is bool:
        return "booleans" if plural else "true or false"
    if tp is _NoneType:
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mappings" if plural else "a mapping"
    if (args := union_args(tp)) is not None:
        return " or ".join(describe_type(a, plural) for a in args)
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return "a list of " + describe_type(args[0], plural=True)
        if len(set(args)) == 1:
            return f"a list of {len(args)} " + describe_type(args[0], plural=True)
        return "a list of " + ", ".join(describe_type(a) for a in args)
    return getattr(tp, "__name__", str(tp))


class _TypeMismatch(ConfigError):
    """A value of the wrong type (as opposed to a value of the right type out of range)."""


def coerce(value: Any, tp: Any) -> Any:
    """Return ``value`` checked against the annotation ``tp`` and normalised.

    Raises:
        ConfigError: with a path relative to the value ("" or "[i]" or "key...").
    """
    if (args := union_args(tp)) is not None:
        if value is None and _NoneType in args:
            return None
        options = [a for a in args if a is not _NoneType]
        # Dispatch on the value's shape so the error comes from the branch the user meant.
        seq_options = [a for a in options if typing.get_origin(a) is tuple]
        chosen = seq_options if is_seq(value) else [a for a in options if a not in seq_options]
        if len(chosen) == 1:
            try:
                return coerce(value, chosen[0])
            except _TypeMismatch as err:
                if err.path:  # a bad entry inside a list: report that entry
                    raise
        raise _TypeMismatch(f"{show(value)} is not valid; expected {describe_type(tp)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
    elif tp is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise invalid(value, "a finite number")
            return float(value)
    elif tp is str:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(tp):
        cls = cast(type, tp)  # an annotation: the dataclass itself, not an instance
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            return from_mapping(cls, value)
    elif typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        variadic = len(args) == 2 and args[1] is Ellipsis
        if is_seq(value) and (variadic or len(value) == len(args)):
            items = []
            for i, item in enumerate(value):
                try:
                    items.append(coerce(item, args[0] if variadic else args[i]))
                except ConfigError as err:
                    raise err.within(f"[{i}]") from None
            return tuple(items)
    else:  # pragma: no cover - only reachable by adding a field of an unsupported type
        raise TypeError(f"unsupported config annotation {tp!r}")
    raise _TypeMismatch(f"{show(value)} is not valid; expected {describe_type(tp)}")


def _check_field(f: dataclasses.Field[Any], tp: Any, raw: Any) -> Any:
    """``raw`` coerced to the field's type, then checked against its metadata (registry
    ``choices``, range ``check``); errors carry the field's name."""
    try:
        value = coerce(raw, tp)
        if "choices" in f.metadata:
            check_choice(value, f.metadata["choices"], "")
        if "check" in f.metadata:
            _apply_check(value, raw, f.metadata["check"])
    except SettingError as err:
        raise err.within(f.name) from None
    return value


def from_mapping(cls: type, raw: Mapping[Any, Any]) -> Any:
    """Build the dataclass ``cls`` from a mapping, rejecting unknown and missing keys by name."""
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in raw:
        if key not in names:
            raise unknown_key(key, names)
    types_ = hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        missing = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if missing and f.name not in raw:
            raise ConfigError("required key is missing", f.name)
        if f.name in raw:
            values[f.name] = _check_field(f, types_[f.name], raw[f.name])
    try:
        return cls(**values)
    except SettingError as err:  # the dataclass's own value checks (the core's settings)
        raise ConfigError(err.problem, err.path) from None


def _apply_check(value: Any, raw: Any, check: _Check) -> None:
    """Range-check a coerced value (each entry of a tuple), reporting the value as written."""
    if isinstance(value, tuple):
        for i, item in enumerate(value):
            if not check.ok(item):
                raise invalid(raw[i], check.expected, f"[{i}]")
    elif value is not None and not check.ok(value):
        raise invalid(raw, check.expected)


class Section:
    """Mixin for config dataclasses: type-check, normalise and range-check every field when
    built in Python, run the base settings class's own checks, then :meth:`_validate`."""

    def __post_init__(self) -> None:
        cls: type = type(self)  # plain ``type``: mypy does not take type[Section] as Hashable
        types_ = hints(cls)
        for f in dataclasses.fields(cast("DataclassInstance", self)):  # subclasses: dataclasses
            if f.init:
                # Frozen dataclass: normalising (list → tuple, int → float) needs the raw setter.
                object.__setattr__(
                    self, f.name, _check_field(f, types_[f.name], getattr(self, f.name))
                )
        base_check = getattr(super(), "__post_init__", None)
        if base_check is not None:  # e.g. Solver's or NetworkSettings' own value checks
            base_check()
        self._validate()

    def _validate(self) -> None:
        """Cross-field rules; raise ConfigError with a path relative to this section."""


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    return value


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Return a config (or one of its sections) as plain, YAML-ready data.

    ``config_from_dict(config_to_dict(cfg)) == cfg`` for every experiment config.
    """
    return _to_plain(cfg)
