"""``benchmarks/claims.py`` on a tiny experiment set: it trains through the ``eqprop`` command,
writes ``claims.json`` with every required field and the PNGs, and a second invocation skips
the finished runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

#: Two one-epoch digits runs (about 3 s each, mostly importing torch), one with the EP-vs-BPTT
#: check, in a group named ``budget`` so that every figure is drawn.
TINY_SET = [
    {"name": "ep", "preset": "digits-quickstart-fast", "groups": ["budget", "demo"],
     "overrides": ["train.epochs=1", "log.check_every=1", "log.tensorboard=false",
                   "log.plots=false"]},
    {"name": "bptt", "preset": "digits-quickstart-fast", "groups": ["budget"],
     "overrides": ["train.epochs=1", "estimator.kind=bptt", "log.tensorboard=false",
                   "log.plots=false"]},
]  # fmt: skip

REQUIRED = {
    "name", "preset", "overrides", "epochs", "test_error", "final_train_error", "wall_seconds",
    "steps_per_example", "curves", "gradient_quality", "status",
}  # fmt: skip


@pytest.mark.slow
def test_claims_script_runs_reports_and_skips_finished_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    import claims

    set_file = tmp_path / "set.json"
    set_file.write_text(json.dumps(TINY_SET))
    root, results = tmp_path / "runs", tmp_path / "results"
    argv = ["--set-file", str(set_file), "--root", str(root), "--results", str(results)]

    assert claims.main(argv) == 0
    first = capsys.readouterr().out
    assert "ep: done (exit status 0)" in first and "bptt: done (exit status 0)" in first

    report = json.loads((results / "claims.json").read_text())
    runs = {r["name"]: r for r in report["runs"]}
    assert set(runs) == {"ep", "bptt"}
    assert report["groups"] == {"budget": ["ep", "bptt"], "demo": ["ep"]}
    for run in runs.values():
        assert REQUIRED.issubset(run)
        assert run["status"] == "done" and run["epochs"] == 1
        assert 0 <= run["test_error"] <= 1 and 0 <= run["final_train_error"] <= 1
        assert run["wall_seconds"] > 0
        curves = run["curves"]
        assert curves["epoch"] == [1]
        assert all(len(curves[k]) == 1 for k in ("train_error", "val_error", "test_error"))
    assert runs["ep"]["steps_per_example"] == 6 + 2 * 2  # T1 + 2 phases x T2
    assert runs["bptt"]["steps_per_example"] == 6
    probes = runs["ep"]["gradient_quality"]
    # Epoch 0: the same check on the initial weights (the run's check_at_start.json).
    assert probes["epoch"] == [0, 1] and all(e > 0 for e in probes["gdu_sym_final_error"])
    assert runs["bptt"]["gradient_quality"] is None
    for name in ("claims_budget", "claims_budget_cost", "claims_demo", "claims_gradients"):
        assert (results / f"{name}.png").stat().st_size > 0

    metrics = root / "ep" / "metrics.jsonl"
    before = metrics.stat().st_mtime_ns
    assert claims.main(argv) == 0
    second = capsys.readouterr().out
    assert "ep: done, skipped" in second and "bptt: done, skipped" in second
    assert "starting" not in second and "resuming" not in second
    assert metrics.stat().st_mtime_ns == before
    assert json.loads((results / "claims.json").read_text())["runs"][0]["status"] == "done"

    # A run trained before the trainer checked its initial weights gets the same check later.
    start = root / "ep" / "check_at_start.json"
    written = json.loads(start.read_text())
    start.unlink()
    assert claims.main([*argv, "--start-checks"]) == 0
    assert "ep: wrote" in capsys.readouterr().out
    assert json.loads(start.read_text()) == written
    assert not (root / "bptt" / "check_at_start.json").exists()  # it logs no checks

    # Run directories are not committed: a finished run whose directory is gone keeps its entry.
    before = {r["name"]: r for r in json.loads((results / "claims.json").read_text())["runs"]}
    shutil.rmtree(root / "bptt")
    assert claims.main([*argv, "--report-only"]) == 0
    after = {r["name"]: r for r in json.loads((results / "claims.json").read_text())["runs"]}
    assert after["bptt"] == {**before["bptt"], "kept_from_previous_report": True}
    assert "kept_from_previous_report" not in after["ep"]


def test_builtin_set_is_valid_and_dry_run_prints_its_commands(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import claims
    from claims_report import steps_per_example

    from eqprop.train.config import load_config

    root = tmp_path / "runs"
    assert claims.main(["--dry-run", "--root", str(root), "--nice", "0"]) == 0
    out = capsys.readouterr().out
    assert out.count(" -m eqprop train ") == len(claims.EXPERIMENTS)
    assert not root.exists()  # a dry run writes nothing
    steps = {
        e.name: steps_per_example(load_config(e.preset, e.overrides)) for e in claims.EXPERIMENTS
    }
    assert steps["budget-t60-15-sync"] == 60 + 2 * 15
    assert steps["cifar-ce-symmetric"] == 12 + 2 * 4
    assert steps["cifar-mse-one-sided"] == 12 + 4
    assert steps["cifar-mse-bptt"] == 12
    assert steps["budget-t4-1"] == steps["budget-fb-t4-1"] == 4 + 2 * 1
    # The budget's pick, as a preset: the same dynamics as its run in the set.
    pick = next(e for e in claims.EXPERIMENTS if e.name == "budget-fb-t3-1")
    preset = load_config("cifar10-conv-small-sweep")
    assert load_config(pick.preset, pick.overrides).dynamics == preset.dynamics
    fb_hour = next(e for e in claims.EXPERIMENTS if e.name == "cifar-fb-hour")
    assert load_config(fb_hour.preset, fb_hour.overrides).dynamics == preset.dynamics
    groups = {g for e in claims.EXPERIMENTS for g in e.groups}
    assert groups == {"cifar", "budget", "seeds", "small", "residual", "hour"}
    hour = next(e for e in claims.EXPERIMENTS if e.name == "cifar-ce-hour")
    assert load_config(hour.preset, hour.overrides).train.epochs == 6


def test_a_finished_entry_is_kept_only_for_an_absent_run_with_the_same_recipe(
    tmp_path, monkeypatch
):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from claims_report import PlannedRun, kept_entry, steps_per_example

    from eqprop.train.config import load_config

    overrides = ("train.epochs=1",)
    cfg = load_config("digits-quickstart-fast", overrides)

    def planned(status: str, extra: tuple[str, ...] = ()) -> PlannedRun:
        o = (*overrides, *extra)
        return PlannedRun("ep", "digits-quickstart-fast", o, ("g",), tmp_path, cfg, status)

    entry = {"name": "ep", "preset": "digits-quickstart-fast", "overrides": list(overrides),
             "status": "done", "groups": ["old"], "test_error": 0.1,
             "epochs": 1, "estimator": cfg.estimator.kind, "beta": cfg.estimator.beta,
             "model_kind": cfg.model.kind, "output": cfg.model.output,
             "schedule": cfg.dynamics.schedule, "free_steps": cfg.dynamics.free_steps,
             "nudged_steps": cfg.dynamics.nudged_steps,
             "steps_per_example": steps_per_example(cfg)}  # fmt: skip
    previous = {"runs": [entry]}
    kept = {**entry, "groups": ["g"], "kept_from_previous_report": True}
    assert kept_entry(planned("new"), previous) == kept
    assert kept_entry(planned("started"), previous) is None  # its directory is the truth
    assert kept_entry(planned("new", ("seed=1",)), previous) is None  # another recipe
    assert kept_entry(planned("new"), {"runs": [{**entry, "status": "failed"}]}) is None
    # The preset changed since: its entry no longer describes what the name trains.
    assert kept_entry(planned("new"), {"runs": [{**entry, "free_steps": 99}]}) is None
    assert kept_entry(planned("new"), None) is None
