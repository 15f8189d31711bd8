"""One-line errors for bad settings, shared by every settings dataclass and the config loader.

A :class:`SettingError` names the dotted path of the field, the value as the user wrote it and
what is accepted. The core dataclasses (:class:`~eqprop.core.interactions.ConvLayer`, the
network settings, :class:`~eqprop.dynamics.Solver`) validate themselves with these helpers, so a
setting built in Python is as safe as one read from YAML, and the config loader only adds the
section prefix (``dynamics.schedule: ...``).

Example:
    >>> try:
    ...     check_choice("even_od", {"synchronous": 1, "even_odd": 2}, "schedule")
    ... except SettingError as err:
    ...     print(err)
    schedule: 'even_od' is not one of synchronous, even_odd (did you mean 'even_odd'?)
"""

from __future__ import annotations

import difflib
import math
import numbers
import re
from collections.abc import Iterable, Mapping
from typing import Any, cast

__all__ = [
    "SettingError",
    "check_choice",
    "check_int",
    "check_number",
    "invalid",
    "show",
    "suggest",
]


class SettingError(ValueError):
    """An invalid setting; ``str(err)`` is one line: ``"<dotted.path>: <problem>"``.

    Attributes:
        path: dotted path of the offending field ("" when the problem is not about one field).
        problem: what is wrong and what is accepted.
    """

    def __init__(self, problem: str, path: str = "") -> None:
        # Parser messages (YAML) span lines; an error must stay one line for logs and CLIs.
        self.problem = re.sub(r"\s*\n\s*", " ", problem).strip()
        self.path = path
        super().__init__(f"{path}: {self.problem}" if path else self.problem)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.problem, self.path)

    def within(self, prefix: str) -> SettingError:
        """The same error with its path placed under ``prefix``."""
        if not self.path:
            path = prefix
        elif self.path.startswith("["):
            path = prefix + self.path
        else:
            path = f"{prefix}.{self.path}"
        return type(self)(self.problem, path)


def show(value: Any) -> str:
    """A value as the user wrote it (tuples as lists), truncated to stay readable."""
    text = repr(list(value) if isinstance(value, tuple) else value)
    return text if len(text) <= 80 else text[:77] + "..."


def suggest(word: object, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or ""."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def invalid(value: Any, expected: str, path: str = "") -> SettingError:
    """``<path>: <value> is not valid; expected <expected>``."""
    return SettingError(f"{show(value)} is not valid; expected {expected}", path)


def check_choice(value: Any, choices: Mapping[str, Any] | Iterable[str], path: str) -> None:
    """Raise unless ``value`` is a key of the registry ``choices``."""
    names = list(choices)
    if not isinstance(value, str) or value not in names:
        raise SettingError(
            f"{show(value)} is not one of {', '.join(names)}{suggest(value, names)}", path
        )


def check_int(value: Any, path: str, minimum: int = 1) -> None:
    """Raise unless ``value`` is an int (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise invalid(value, f"an integer >= {minimum}", path)


def check_number(value: Any, path: str, *, positive: bool = True) -> None:
    """Raise unless ``value`` is a finite real number (not a bool), > 0 when ``positive``."""
    number = cast(float, value)  # typeshed's numbers.Real has no > or >=; compare as a float
    ok = (
        not isinstance(value, bool)
        and isinstance(value, numbers.Real)
        and math.isfinite(value)
        and (number > 0 if positive else number >= 0)
    )
    if not ok:
        raise invalid(value, "a number > 0" if positive else "a number >= 0", path)
