"""Which fields two configs (plain nested dicts) disagree on, by dotted path.

Example:
    >>> old = {"optim": {"lr": 0.2, "kind": "sgd"}, "model": {"conv": [{"channels": 8}]}}
    >>> new = {"optim": {"lr": 0.3, "kind": "sgd"}, "model": {"conv": [{"channels": 16}]}}
    >>> differences(old, new)
    ['model.conv[0].channels: 8 -> 16', 'optim.lr: 0.2 -> 0.3']
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from eqprop.core.validation import show

__all__ = ["INCIDENTAL", "changed_paths", "differences", "flatten"]

#: Fields that do not change what a run computes: names, where data and devices are, logging.
INCIDENTAL = (
    "name", "description", "data.root", "data.download", "train.device", "train.num_threads",
    "log.progress", "log.tensorboard", "log.plots",
)  # fmt: skip

_MISSING = object()


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [{"d": 2}]}`` -> ``{"a.b": 1, "c[0].d": 2}``; other lists stay
    values."""
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(data, list | tuple) and data and all(isinstance(v, Mapping) for v in data):
        out = {}
        for i, value in enumerate(data):
            out.update(flatten(value, f"{prefix}[{i}]"))
        return out
    return {prefix: list(data) if isinstance(data, tuple) else data}


def changed_paths(
    old: Mapping[str, Any], new: Mapping[str, Any], ignore: Iterable[str] = ()
) -> list[str]:
    """Sorted dotted paths whose values differ (present in one only counts), minus ``ignore``."""
    a, b = flatten(old), flatten(new)
    skip = set(ignore)
    return sorted(
        k for k in a.keys() | b.keys() if k not in skip and a.get(k, _MISSING) != b.get(k, _MISSING)
    )


def differences(
    old: Mapping[str, Any], new: Mapping[str, Any], ignore: Iterable[str] = ()
) -> list[str]:
    """``path: old -> new`` for every changed path (see :func:`changed_paths`)."""
    a, b = flatten(old), flatten(new)
    return [
        f"{k}: {_show(a.get(k, _MISSING))} -> {_show(b.get(k, _MISSING))}"
        for k in changed_paths(old, new, ignore)
    ]


def _show(value: Any) -> str:
    return "(absent)" if value is _MISSING else show(value)
