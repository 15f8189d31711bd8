"""The GDU check's results: the report's types and the statistics that fill them.

:func:`eqprop.analysis.gdu.check_gdu` adds the per-step increments ΔEP(t) and BPTT(t) (defined
in :mod:`eqprop.analysis.gdu`) to :class:`_Running` sums, which :func:`_summarise` turns into the
first three statistics below; :func:`_fit` fits the slopes of the fourth.

- Relative RMSE of a tensor: sqrt(Σ_t ‖ΔEP(t) − BPTT(t)‖²) / sqrt(Σ_t ‖BPTT(t)‖²), over all steps
  t = 0..T2 and elements at once (a per-step ratio would blow up at steps where BPTT is exactly
  zero, as happens on alternate steps for layered nets). None when BPTT is zero throughout.
- Sign error of a tensor: among elements where both cumulative sums Σ_t ΔEP(t) and Σ_t BPTT(t)
  (the final updates) are non-zero, the fraction with opposite signs.
- Layer ratio: 2‖EP_sym − BPTT‖ / (‖EP_+ − BPTT‖ + ‖EP_− − BPTT‖) on the final updates of a
  weight layer's parameters: below 1 means the symmetric estimate is closer than one-sided ones.
- β sweep: relative error ‖g − g_BPTT‖/‖g_BPTT‖ of the final one-sided (±β) and symmetric estimates
  over all parameters, against the BPTT gradient over T2 steps from s* (the gradient of L(s*)
  when converged); least-squares slopes of log error against log β (bias O(β) gives 1, O(β²) 2).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "VARIANTS",
    "BetaComparison",
    "BetaSweep",
    "Curves",
    "GDUReport",
    "TensorComparison",
]

#: The compared EP variants and how tables and plots label them.
VARIANTS: dict[str, str] = {"plus": "+β", "minus": "−β", "sym": "sym"}

#: Elements per tensor followed step by step for the curves (the plot shows a few of them).
_CANDIDATES = 64

# ----------------------------------------------------------------- report


@dataclass
class TensorComparison:
    """EP against BPTT for one tensor, per variant (keys of :data:`VARIANTS`).

    Attributes:
        rmse: relative RMSE over all steps and elements (None when BPTT is zero throughout).
        sign_error: fraction of sign disagreements of the final updates (None: nothing to
            compare).
    """

    rmse: dict[str, float | None]
    sign_error: dict[str, float | None]


@dataclass
class Curves:
    """Cumulative sums Σ_{τ≤t} of a few elements of one tensor, t = 0..T2.

    Attributes:
        elements: flat indices (row-major, logical order) of the followed elements.
        series: ``"plus"``, ``"minus"``, ``"sym"`` and ``"bptt"`` → one list of T2 + 1 values
            per element.
    """

    elements: list[int]
    series: dict[str, list[list[float]]]


@dataclass
class BetaComparison:
    """The step-by-step comparison at one |β|.

    Attributes:
        beta: |β|.
        tensors: per parameter name and per ``"neurons.n"`` (state index n).
        totals: per variant, over all parameters together: ``"rmse"``, ``"sign_error"`` and
            ``"final_error"`` (relative error of the final update against the BPTT gradient).
        layers: per weight layer (module name), the ratio 2‖sym − BPTT‖/(‖+β − BPTT‖ +
            ‖−β − BPTT‖) of the final updates (None when both one-sided errors are zero).
        curves: per tensor, a few elements' cumulative sums.
    """

    beta: float
    tensors: dict[str, TensorComparison]
    totals: dict[str, dict[str, float | None]]
    layers: dict[str, float | None]
    curves: dict[str, Curves]


@dataclass
class BetaSweep:
    """Relative error of the final EP estimates against BPTT over a range of β.

    Attributes:
        betas: the |β| values.
        errors: per variant, one relative error per β.
        slopes: per variant, least-squares slope of log error against log β (None when fewer
            than two errors are positive).
        intercepts: the matching intercepts (log error at β = 1).
    """

    betas: list[float]
    errors: dict[str, list[float]]
    slopes: dict[str, float | None]
    intercepts: dict[str, float | None]


@dataclass
class GDUReport:
    """What :func:`check_gdu` measured; :meth:`to_dict` gives plain JSON-able data.

    Attributes:
        batch: examples in the batch.
        free_steps: T1 (budget of the free phase).
        free_steps_taken: steps the free phase actually ran (fewer with a tolerance).
        nudged_steps: T2.
        schedule: the solver's schedule.
        dtype: the network's dtype.
        free_residual: largest state change of one more free step from s* (0 at a fixed point;
            GDU assumes one).
        shapes: every compared tensor's shape (neurons include the batch dimension).
        layers: weight layer (module name) → the names of its parameters.
        comparisons: one per |β| of ``betas``.
        sweep: the β sweep, or None when none was asked for.
        seconds: wall time of the check.
    """

    batch: int
    free_steps: int
    free_steps_taken: int
    nudged_steps: int
    schedule: str
    dtype: str
    free_residual: float
    shapes: dict[str, list[int]]
    layers: dict[str, list[str]]
    comparisons: list[BetaComparison]
    sweep: BetaSweep | None
    seconds: float = field(default=0.0)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts, lists, numbers and None: ready for ``json.dumps``."""
        return asdict(self)

    def comparison(self, beta: float) -> BetaComparison:
        """The comparison at |β| = ``beta``.

        Raises:
            KeyError: no comparison at that β (the message lists those available).
        """
        for c in self.comparisons:
            if math.isclose(c.beta, beta, rel_tol=1e-9):
                return c
        raise KeyError(f"beta: no comparison at {beta}; have {[c.beta for c in self.comparisons]}")


# ----------------------------------------------------------------- statistics


class _Running:
    """Running sums of one series of per-step increments, compared with a reference series."""

    def __init__(self, like: dict[str, Tensor], picks: dict[str, Tensor]) -> None:
        self.sq_diff = dict.fromkeys(like, 0.0)
        self.cum = {k: torch.zeros_like(v) for k, v in like.items()}
        self.trace: dict[str, list[Tensor]] = {k: [] for k in like}
        self.picks = picks

    def add(self, inc: dict[str, Tensor], ref: dict[str, Tensor] | None) -> None:
        """Add one step; without ``ref``, ``sq_diff`` accumulates the squared norm itself."""
        for k, cum in self.cum.items():
            v = inc[k]
            diff = v if ref is None else v - ref[k]
            self.sq_diff[k] += float(diff.pow(2).sum())
            cum.add_(v)
            self.trace[k].append(cum.reshape(-1)[self.picks[k]].clone())


def _pick_elements(like: dict[str, Tensor], seed: int) -> dict[str, Tensor]:
    """Per tensor, up to ``_CANDIDATES`` random flat indices: the elements followed per step."""
    gen = torch.Generator().manual_seed(seed)
    return {
        k: torch.randperm(v.numel(), generator=gen)[:_CANDIDATES].to(v.device)
        for k, v in like.items()
    }


def _sq_dist(a: Tensor, b: Tensor) -> float:
    """Squared Euclidean distance of two tensors."""
    return float((a - b).pow(2).sum())


def _ratio(num: float, den: float) -> float | None:
    """sqrt(num / den) from two sums of squares; None when ``den`` is zero."""
    return math.sqrt(num) / math.sqrt(den) if den > 0 else None


def _sign_error(ep: Tensor, ref: Tensor) -> float | None:
    """Fraction of opposite signs where both are non-zero (None: no such element)."""
    e, r = ep.reshape(-1), ref.reshape(-1)
    both = (e != 0) & (r != 0)
    n = int(both.sum())
    return float(((e * r) < 0).sum()) / n if n else None


def _fit(betas: list[float], errors: list[float]) -> tuple[float | None, float | None]:
    """Slope and intercept of log error against log β over the positive errors."""
    pts = [(math.log(b), math.log(e)) for b, e in zip(betas, errors, strict=True) if e > 0]
    if len(pts) < 2 or len({p[0] for p in pts}) < 2:
        return None, None
    xs, ys = zip(*pts, strict=True)
    slope, intercept = np.polyfit(xs, ys, 1)
    return float(slope), float(intercept)


def _summarise(
    beta: float,
    runs: dict[str, _Running],
    bptt: _Running,
    names: list[str],
    keys: list[str],
    layer_params: dict[str, list[str]],
    curve_elements: int,
) -> BetaComparison:
    """The comparison at |β| = ``beta`` from the variants' and BPTT's running sums."""
    tensors = {
        k: TensorComparison(
            rmse={v: _ratio(r.sq_diff[k], bptt.sq_diff[k]) for v, r in runs.items()},
            sign_error={v: _sign_error(r.cum[k], bptt.cum[k]) for v, r in runs.items()},
        )
        for k in keys
    }
    ref_sq = sum(bptt.sq_diff[k] for k in names)
    ref_final = sum(float(bptt.cum[k].pow(2).sum()) for k in names)
    truth = torch.cat([bptt.cum[k].reshape(-1) for k in names])
    totals = {
        v: {
            "rmse": _ratio(sum(r.sq_diff[k] for k in names), ref_sq),
            "sign_error": _sign_error(torch.cat([r.cum[k].reshape(-1) for k in names]), truth),
            "final_error": _ratio(sum(_sq_dist(r.cum[k], bptt.cum[k]) for k in names), ref_final),
        }
        for v, r in runs.items()
    }
    layers: dict[str, float | None] = {}
    for layer, members in layer_params.items():
        err = {
            v: math.sqrt(sum(_sq_dist(r.cum[k], bptt.cum[k]) for k in members))
            for v, r in runs.items()
        }
        den = err["plus"] + err["minus"]
        layers[layer] = 2.0 * err["sym"] / den if den > 0 else None
    curves = {}
    for k in keys:
        final = bptt.trace[k][-1]
        # Prefer elements that BPTT actually moves (dead units make flat, uninformative curves).
        order = sorted(range(final.numel()), key=lambda i: float(final[i]) == 0.0)
        chosen = order[:curve_elements]
        series = {
            name: [[float(step[i]) for step in run.trace[k]] for i in chosen]
            for name, run in [*runs.items(), ("bptt", bptt)]
        }
        curves[k] = Curves([int(bptt.picks[k][i]) for i in chosen], series)
    return BetaComparison(beta, tensors, totals, layers, curves)


def _fmt(value: float | None, spec: str = ".1e") -> str:
    """A measured value for tables and legends: ``"n/a"`` when None or not finite."""
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)
