"""The report of ``claims.py``: one entry per run read from its run directory, ``claims.json``,
the ``claims_*.png`` curves and the summary table.

What a run directory holds is eqprop's (:mod:`eqprop.train.rundir`): ``metrics.jsonl`` (one
record per epoch), ``summary.json`` (when the run finished) and ``config.yaml``. A finished
run's figures come from ``summary.json``; an unfinished one's from its epochs so far, with the
same rule (:func:`eqprop.train.reporting.summarize`: test error at the first epoch with the
best validation accuracy).

Gradient quality: eqprop's ``log.check_every`` check logs only summary numbers per epoch, each
EP estimate at the run's β against BPTT on ``log.check_batch`` validation images, over all
weights together: ``gdu_{plus,minus,sym}_rmse`` (relative RMSE of the per-step updates over the
nudged steps), ``gdu_{plus,minus,sym}_final_error`` (relative error of the final update, i.e.
of the gradient estimate) and ``gdu_layer_ratio_mean`` (mean over layers of
2‖sym − BPTT‖ / (‖+β − BPTT‖ + ‖−β − BPTT‖)); and the run's own update against BPTT's per
weight layer, ``gdu_cos_layer{n}`` and ``gdu_relerr_layer{n}``, with ``gdu_cos_all`` over all
weights. Epoch 0 of a run's series is the same check on its initial weights
(``check_at_start.json``), when the run wrote one.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from eqprop.train.config import ExperimentConfig
from eqprop.train.environment import read_json
from eqprop.train.reporting import summarize
from eqprop.train.trainer import CHECK_AT_START

__all__ = [
    "PlannedRun", "build_report", "format_table", "kept_entry", "read_report", "steps_per_example",
    "write_report",
]  # fmt: skip

GDU_NOTE = (
    "summary numbers of eqprop's EP-versus-BPTT check (log.check_every), the EP estimates at "
    "the run's beta against BPTT over all weights: gdu_{plus,minus,sym}_rmse (relative RMSE of "
    "the per-step updates over the nudged steps), gdu_{plus,minus,sym}_final_error (relative "
    "error of the final update) and gdu_layer_ratio_mean (mean over layers of "
    "2|sym - BPTT| / (|+beta - BPTT| + |-beta - BPTT|)); the run's own update against BPTT's "
    "per weight layer: gdu_cos_layer{n} (cosine) and gdu_relerr_layer{n} (relative error), and "
    "gdu_cos_all over all weights; epoch 0: the initial weights (runs that logged it)"
)
STEPS_NOTE = (
    "steps_per_example: relaxation steps per training example, free_steps + (nudged phases) x "
    "nudged_steps (symmetric EP 2 phases, one-sided and random-sign 1); BPTT: free_steps"
)
CURVES = ("train_error", "val_error", "test_error", "seconds")


@dataclass(frozen=True)
class PlannedRun:
    """A run of the experiment set, its resolved config and its status on disk."""

    name: str
    preset: str
    overrides: tuple[str, ...]
    groups: tuple[str, ...]
    run_dir: Path
    config: ExperimentConfig
    status: str


def steps_per_example(cfg: ExperimentConfig) -> int:
    """Relaxation steps per training example: T1 + (nudged phases) × T2; BPTT: T1."""
    d, kind = cfg.dynamics, cfg.estimator.kind
    if kind == "bptt":
        return d.free_steps
    phases = {"symmetric": 2, "one_sided": 1, "random_sign": 1}.get(kind, cfg.estimator.points)
    return d.free_steps + phases * d.nudged_steps


def _records(run_dir: Path) -> list[dict[str, Any]]:
    """The epoch records of ``metrics.jsonl``, one per epoch (the last one written wins)."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            by_epoch[record["epoch"]] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def _summary(run_dir: Path, status: str, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """``summary.json`` of a finished run, else the same figures from the epochs so far."""
    if status == "done":
        try:
            found = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
            if isinstance(found, dict):
                return found
        except (OSError, ValueError):
            pass
    if not records:
        return None
    vals = [(r["val_error"], r["epoch"]) for r in records if r.get("val_error") is not None]
    best = min(vals)[1] if vals else None  # the first epoch at the lowest error
    out = summarize(records, best)
    out["wall_seconds"] = sum(float(r.get("seconds", 0.0)) for r in records)
    return out


def _error(accuracy: Any) -> float | None:
    return None if accuracy is None else 1.0 - float(accuracy)


def _check_at_start(run_dir: Path) -> list[dict[str, Any]]:
    """The run's check on its initial weights (``check_at_start.json``, epoch 0), if any."""
    record = read_json(run_dir / CHECK_AT_START)
    return [record] if isinstance(record, dict) else []


def _series(records: list[dict[str, Any]], prefix: str) -> dict[str, list[Any]] | None:
    """The fields named ``prefix*`` per epoch, over the epochs that logged any; None: none."""
    found = [r for r in records if any(k.startswith(prefix) for k in r)]
    keys = sorted({k for r in found for k in r if k.startswith(prefix)})
    if not found:
        return None
    return {"epoch": [r["epoch"] for r in found]} | {k: [r.get(k) for r in found] for k in keys}


def _recipe(cfg: ExperimentConfig) -> dict[str, Any]:
    """The entry's fields that the resolved config decides."""
    return {
        "epochs": cfg.train.epochs, "estimator": cfg.estimator.kind, "beta": cfg.estimator.beta,
        "model_kind": cfg.model.kind, "output": cfg.model.output,
        "schedule": cfg.dynamics.schedule, "free_steps": cfg.dynamics.free_steps,
        "nudged_steps": cfg.dynamics.nudged_steps, "steps_per_example": steps_per_example(cfg),
    }  # fmt: skip


def run_entry(run: PlannedRun) -> dict[str, Any]:
    """The report's entry of one run."""
    cfg, records = run.config, _records(run.run_dir) if run.status != "conflict" else []
    summary = _summary(run.run_dir, run.status, records)
    entry: dict[str, Any] = {
        "name": run.name, "groups": list(run.groups), "preset": run.preset,
        "overrides": list(run.overrides), "run_dir": str(run.run_dir), "status": run.status,
        "epochs_done": len(records), **_recipe(cfg),
    }  # fmt: skip
    s = summary or {}
    entry.update(
        selected_epoch=s.get("selected_epoch"),
        test_error=_error(s.get("test_accuracy")),
        val_error=_error(s.get("val_accuracy")),
        final_test_error=_error(s.get("final_test_accuracy")),
        final_train_error=_error(s.get("final_train_accuracy")),
        wall_seconds=s.get("wall_seconds"),
        train_seconds=s.get("train_seconds"),
        eval_seconds=s.get("eval_seconds"),
        diverged=s.get("diverged"),
    )
    entry["curves"] = {"epoch": [r["epoch"] for r in records]} | {
        key: [r.get(key) for r in records] for key in CURVES
    }
    entry["gradient_quality"] = _series([*_check_at_start(run.run_dir), *records], "gdu_")
    entry["weight_angles"] = _series(records, "angle_")  # asymmetric nets: W-B angle (degrees)
    return entry


def kept_entry(run: PlannedRun, previous: dict[str, Any] | None) -> dict[str, Any] | None:
    """``run``'s finished entry in the ``previous`` report, when its run directory is gone
    (run directories are not committed; the report is) and the entry was made from the same
    preset and overrides, and still agrees with what they resolve to (a preset can change);
    otherwise None."""
    if run.status != "new" or not previous:
        return None
    recipe = _recipe(run.config)
    for entry in previous.get("runs", []):
        if (
            isinstance(entry, dict)
            and entry.get("name") == run.name
            and entry.get("status") == "done"
            and entry.get("preset") == run.preset
            and entry.get("overrides") == list(run.overrides)
            and all(entry.get(k) == v for k, v in recipe.items())
        ):
            return {**entry, "groups": list(run.groups), "kept_from_previous_report": True}
    return None


def build_report(
    runs: list[PlannedRun], settings: dict[str, Any], previous: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The whole report: settings, groups, one entry per run, and how to read the probes. A run
    whose directory is gone keeps its finished entry from the ``previous`` report."""
    groups: dict[str, list[str]] = {}
    for run in runs:
        for group in run.groups:
            groups.setdefault(group, []).append(run.name)
    return {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **settings,
        "error_definition": "test_error: fraction, at the epoch with the best validation accuracy",
        "steps_note": STEPS_NOTE,
        "gradient_quality_note": GDU_NOTE,
        "groups": groups,
        "runs": [kept_entry(r, previous) or run_entry(r) for r in runs],
    }


def _finite(values: list[Any]) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


def _per_epoch(ax: Axes, ylabel: str, title: str) -> None:
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _plot_errors(runs: list[dict[str, Any]], title: str, path: Path) -> Path:
    fig = Figure(figsize=(13, 4))
    axes = fig.subplots(1, 3)
    for ax, key in zip(axes, ("train_error", "val_error", "test_error"), strict=True):
        for run in runs:
            c = run["curves"]
            points = [(e, v) for e, v in zip(c["epoch"], c[key], strict=True) if v is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=run["name"])
        _per_epoch(ax, key.replace("_", " "), f"{title}: {key.replace('_', ' ')}")
    axes[-1].legend(fontsize=7)
    return _save(fig, path)


def _plot_budget(runs: list[dict[str, Any]], path: Path) -> Path:
    fig = Figure(figsize=(10, 4))
    by_steps, by_time = fig.subplots(1, 2)
    for run in runs:
        if run["test_error"] is not None:
            x, y = run["steps_per_example"], run["test_error"]
            by_steps.plot(x, y, "o", label=run["name"])
            by_steps.annotate(run["name"], (x, y), fontsize=7, xytext=(4, 4),
                              textcoords="offset points")  # fmt: skip
        c = run["curves"]
        if c["epoch"] and _finite(c["seconds"]) and _finite(c["test_error"]):
            minutes = [sum(c["seconds"][: i + 1]) / 60 for i in range(len(c["seconds"]))]
            by_time.plot(minutes, c["test_error"], marker="o", label=run["name"])
    by_steps.set(xlabel="relaxation steps per training example", ylabel="test error",
                 title="test error (best-validation epoch) vs steps")  # fmt: skip
    by_time.set(xlabel="wall minutes (epochs so far)", ylabel="test error",
                title="test error per epoch vs wall time")  # fmt: skip
    steps = sorted({r["steps_per_example"] for r in runs if r["test_error"] is not None})
    if len(steps) > 1:
        by_steps.set_xscale("log")
        by_steps.set_xticks(steps, [str(s) for s in steps])
        by_steps.minorticks_off()
    for ax in (by_steps, by_time):
        ax.grid(alpha=0.3)
    by_time.legend(fontsize=7)
    return _save(fig, path)


def _plot_gradients(runs: list[dict[str, Any]], path: Path) -> Path:
    fig = Figure(figsize=(13, 4))
    axes = fig.subplots(1, 3)
    keys = ("gdu_sym_final_error", "gdu_plus_final_error", "gdu_layer_ratio_mean")
    for ax, key in zip(axes, keys, strict=True):
        plotted = False
        for run in runs:
            g = run["gradient_quality"] or {}
            pts = [(e, v) for e, v in zip(g.get("epoch", []), g.get(key, []), strict=True)
                   if isinstance(v, int | float) and math.isfinite(v) and v > 0]  # fmt: skip
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=run["name"])
                plotted = True
        if plotted and key.endswith("error"):
            ax.set_yscale("log")
        _per_epoch(ax, key, key.removeprefix("gdu_").replace("_", " ") + " (vs BPTT)")
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def read_report(out: Path) -> dict[str, Any] | None:
    """The ``claims.json`` in ``out`` from an earlier invocation, or None (none, or unreadable)."""
    try:
        report = json.loads((out / "claims.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """Write ``claims.json`` and the PNGs into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "claims.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    written = [path]
    runs = {r["name"]: r for r in report["runs"]}
    for group, names in report["groups"].items():
        members = [runs[n] for n in names if runs[n]["curves"]["epoch"]]
        if members:
            written.append(_plot_errors(members, group, out / f"claims_{group}.png"))
        if group == "budget" and members:
            written.append(_plot_budget(members, out / "claims_budget_cost.png"))
    probed = [r for r in report["runs"] if r["gradient_quality"]]
    if probed:
        written.append(_plot_gradients(probed, out / "claims_gradients.png"))
    return written


def format_table(report: dict[str, Any]) -> str:
    """One line per run: name, status, epochs done, test error (best-validation epoch), final
    training error, wall seconds, steps per example."""

    def cell(value: Any, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    header = ["run", "status", "epochs", "test err", "final train err", "wall s", "steps/ex"]
    rows = [header] + [
        [r["name"], r["status"], f"{r['epochs_done']}/{r['epochs']}",
         cell(r["test_error"], ".2%"), cell(r["final_train_error"], ".2%"),
         cell(r["wall_seconds"], ".0f"),
         str(r["steps_per_example"])]
        for r in report["runs"]
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for row in rows:
        cells = zip(row, widths, strict=True)
        lines.append(
            "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(cells))
        )
    return "\n".join(lines)
