"""The command line around runs: what eval, resume, presets and check tell the user, configs named
after their files, output that reads the same in a terminal and in a log, and sweeps."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from tinyruns import TINY_ARGS, one_error_line, records, tiny

from eqprop.analysis.gdu_results import BetaSweep, GDUReport
from eqprop.cli import main
from eqprop.cli.check import is_piecewise_linear, sweep_warnings
from eqprop.core.activations import ACTIVATIONS
from eqprop.train.config import load_config
from eqprop.train.sweep import SweepRun, aggregate, format_table, parse_grid, plan, split_values
from eqprop.train.trainer import Trainer


def test_eval_names_the_checkpoint_and_epoch_it_evaluated(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path), *TINY_ARGS]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path), "--checkpoint", "last"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"test accuracy of {tmp_path}/checkpoints/last.pt (epoch 2 of 2): ")


def test_eval_with_other_step_counts_prints_one_line_each(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path), *TINY_ARGS]) == 0
    capsys.readouterr()
    own = load_config(tmp_path / "config.yaml").dynamics.resolved_eval_steps
    assert main(["eval", str(tmp_path), "--checkpoint", "last", "--split", "val"]) == 0
    plain = capsys.readouterr().out.strip()
    args = ["eval", str(tmp_path), "--checkpoint", "last", "--split", "val"]
    assert main([*args, "--steps", f"1,{own}"]) == 0
    one, same = capsys.readouterr().out.strip().splitlines()
    assert " with 1 free steps: " in one
    # The run's own count is the plain evaluation, to the last digit.
    assert same == plain.replace(": ", f" with {own} free steps: ", 1)
    for bad in ("0", "4,x", ""):
        with pytest.raises(SystemExit) as exit_:
            main([*args, "--steps", bad])
        assert exit_.value.code == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert "argument --steps" in last and "positive integers" in last


def test_eval_never_falls_back_to_another_checkpoint(tmp_path, capsys):
    Trainer(tiny("data.val_size=0"), tmp_path).fit()  # no validation split: no best.pt
    assert main(["eval", str(tmp_path)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "checkpoint not found: " in line and "best.pt" in line
    assert "use --checkpoint last" in line


def test_resume_prints_a_header_and_extends_a_finished_run_exactly(tmp_path, capsys):
    Trainer(tiny("train.epochs=3"), tmp_path / "straight", quiet=True).fit()
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY_ARGS]) == 0
    capsys.readouterr()
    assert main(["resume", str(run), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"eqprop: resuming digits-quickstart on cpu in {run}\n")
    assert "the run is complete (2 epochs); --epochs N trains it further" in err
    assert main(["resume", str(run), "--epochs", "3", "--quiet"]) == 0
    assert "continuing at epoch 3, batch 1" in capsys.readouterr().err
    assert records(run) == records(tmp_path / "straight")


def test_extending_a_cosine_schedule_keeps_its_length(tmp_path):
    cfg = tiny("optim.scheduler.kind=cosine")
    Trainer(cfg, tmp_path, quiet=True).fit()
    assert main(["resume", str(tmp_path), "--epochs", "4", "--quiet"]) == 0
    saved = load_config(tmp_path / "config.yaml")
    assert (saved.train.epochs, saved.optim.scheduler.t_max) == (4, 2)
    lrs = [json.loads(line)["lr_layer0"] for line in records_text(tmp_path)]
    assert lrs[0] > lrs[1] > lrs[2] == lrs[3] == 0.0  # the floor after two epochs, as configured


def records_text(run_dir: Path) -> list[str]:
    return (run_dir / "metrics.jsonl").read_text().splitlines()


def test_resume_to_fewer_epochs_than_trained_is_refused(tmp_path, capsys):
    Trainer(tiny(), tmp_path).fit()
    assert main(["resume", str(tmp_path), "--epochs", "1"]) == 2
    assert "train.epochs: 1 is not valid; expected at least the 2 epochs already trained" in (
        one_error_line(capsys.readouterr().err)
    )


def test_presets_show_resolved_prints_the_whole_config(capsys):
    assert main(["presets", "show", "digits-quickstart", "--resolved"]) == 0
    out = capsys.readouterr().out
    assert "check_every: 0" in out and "batch_phases: true" in out  # defaults, filled in
    assert load_config("digits-quickstart") == load_config_text(out)


def load_config_text(text: str):
    import yaml

    from eqprop.train.config import config_from_dict

    return config_from_dict(yaml.safe_load(text))


def test_a_config_file_without_a_name_names_its_runs_after_itself(tmp_path):
    path = tmp_path / "lr-test.yaml"
    path.write_text("extends: digits-quickstart\noptim:\n  lr: 0.01\n")
    cfg = load_config(path)
    assert cfg.name == "lr-test"
    assert cfg.description == "digits-quickstart with optim.lr=0.01"


def test_overrides_replace_the_description_they_make_untrue():
    assert load_config("digits-quickstart", ["estimator.beta=0.2"]).description == (
        "digits-quickstart with estimator.beta=0.2"
    )
    unchanged = load_config("digits-quickstart", ["log.plots=false", "data.root=/data"])
    assert unchanged.description.startswith("Quickstart on scikit-learn's 8x8 digits")


def test_quiet_and_normal_output_report_the_same_lines_and_logs_get_no_carriage_returns(
    tmp_path, capsys
):
    def lines(*flags):
        out = tmp_path / f"run{len(flags)}"
        args = [a for a in TINY_ARGS if a != "--quiet"]
        assert main(["train", "--out", str(out), *args, *flags]) == 0
        stdout, stderr = capsys.readouterr()  # not a terminal, like a log file
        assert "\r" not in stdout + stderr
        return [line.split(";")[0] for line in stdout.splitlines() if line.startswith("epoch")]

    normal, quiet = lines(), lines("--quiet")
    assert normal == quiet and len(normal) == 2
    assert normal[0].startswith("epoch 1/2: train ") and ", val " in normal[0]


def test_progress_bars_on_a_terminal_cover_training_and_evaluation(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    Trainer(tiny(), tmp_path).fit()
    err = capsys.readouterr().err
    for desc in ("epoch 1/2", "validation", "test"):
        assert f"{desc}: " in err  # a tqdm bar, "validation:  40%|####  | 4/10"


# ------------------------------------------------------------------------- check's slopes


def report(slopes, errors, dtype="float64", residual=0.0):
    betas = [1e-3, 1e-2, 1e-1]
    sweep = BetaSweep(betas, errors, slopes, dict.fromkeys(slopes, 0.0))
    return GDUReport(2, 40, 40, 4, "synchronous", dtype, residual, {}, {}, [], sweep)


GOOD = {"plus": [1e-3, 1e-2, 1e-1], "minus": [1e-3, 1e-2, 1e-1], "sym": [1e-6, 1e-4, 1e-2]}


def test_slopes_as_the_theorem_says_give_no_warning():
    assert sweep_warnings(report({"plus": 1.0, "minus": 0.98, "sym": 2.0}, GOOD), None) == []


def test_an_unconverged_free_phase_is_named_and_more_free_steps_suggested():
    (warning,) = sweep_warnings(
        report({"plus": -0.3, "minus": -0.2, "sym": 1.5}, GOOD, residual=0.02), None
    )
    assert "the free phase is not converged" in warning and "--free-steps" in warning


def test_float32_round_off_is_named_and_float64_suggested():
    growing = {"plus": [1e-1, 1e-2, 1e-1], "minus": [1e-1, 1e-2, 1e-1], "sym": [1e-1, 1e-3, 1e-2]}
    slopes = {"plus": -0.1, "minus": -0.1, "sym": -0.5}
    (warning,) = sweep_warnings(report(slopes, growing, dtype="float32"), None)
    assert "float32 round-off divided by β; rerun with --float64" in warning


def test_kinks_of_a_piecewise_linear_activation_are_named():
    slopes = {"plus": 1.64, "minus": 0.42, "sym": 0.55}  # digits-quickstart, float64, T1 200
    (warning,) = sweep_warnings(report(slopes, GOOD), ACTIVATIONS["my_hard_sig"].fn)
    assert "the activation is piecewise linear" in warning and "model.activation=dsilu" in warning


def test_the_clamps_are_piecewise_linear_and_the_smooth_activations_are_not():
    kinked = {n for n, a in ACTIVATIONS.items() if is_piecewise_linear(a.fn)}
    assert kinked == {"hard_sigmoid", "my_hard_sig", "ctrd_hard_sig"}


def test_check_explains_the_digits_slopes(tmp_path, capsys):
    argv = ["check", "digits-quickstart", "--float64", "--free-steps", "200", "--batch", "8",
            "--beta", "0.01", "--sweep", "0.001", "0.1", "4", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "warning: the β sweep's slopes" in out and "piecewise linear" in out


# ------------------------------------------------------------------------- sweeps


def test_grid_values_split_at_commas_outside_brackets():
    assert split_values("0.01, 0.02") == ["0.01", "0.02"]
    assert parse_grid(["model.dense=[32,32],[64]"]) == [("model.dense", ["[32,32]", "[64]"])]


@pytest.mark.parametrize(
    ("grid", "seeds", "fragment"),
    [
        (["optim.lr"], 1, "--grid: 'optim.lr' is not valid; expected KEY=V1,V2"),
        (["optim.lr=0.1,,0.2"], 1, "--grid: 'optim.lr=0.1,,0.2' is not valid"),
        (["optim.lr=0.1", "optim.lr=0.2"], 1, "each key in one --grid only"),
        (
            ["optim.lr=0.1,-1"],
            1,
            "optim.lr: -1 is not valid; expected a number > 0 (in the grid point optim.lr=-1)",
        ),
        (["optim.lrr=0.1"], 1, "optim.lrr"),
        ([], 0, "--seeds: 0 is not valid; expected an integer >= 1"),
    ],
)
def test_a_bad_sweep_is_refused_before_anything_runs(tmp_path, capsys, grid, seeds, fragment):
    argv = ["sweep", *(a for g in grid for a in ("--grid", g)), "--seeds", str(seeds)]
    assert main([*argv, "--out", str(tmp_path / "s")]) == 2
    assert fragment in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "s").exists()


def test_a_sweep_plans_one_run_per_combination_and_seed(tmp_path):
    base, runs = plan(
        "digits-quickstart", [], ["optim.lr=0.01,0.02", "estimator.beta=0.1,0.5"], 3, tmp_path
    )
    assert len(runs) == 12 and len({r.directory for r in runs}) == 12
    assert runs[0].directory == tmp_path / "optim.lr=0.01,estimator.beta=0.1,seed=0"
    assert runs[0].overrides() == ["optim.lr=0.01", "estimator.beta=0.1", "seed=0"]
    assert {r.status() for r in runs} == {"new"}
    assert {r.epochs for r in runs} == {base.train.epochs}


def test_a_sweep_over_epochs_knows_each_runs_own_epochs(tmp_path):
    """A finished run at another grid point's epoch count is done, not resumed again."""
    base, runs = plan("digits-quickstart", [], ["train.epochs=2,3"], 1, tmp_path)
    assert [r.epochs for r in runs] == [2, 3] and base.train.epochs not in (2, 3)
    for run in runs:
        run.directory.mkdir()
        (run.directory / "config.yaml").write_text("")
        (run.directory / "summary.json").write_text(json.dumps({"epochs": 3}))
    assert [r.status() for r in runs] == ["started", "done"]


def test_a_sweep_table_gives_mean_and_std_over_seeds(tmp_path):
    runs = [SweepRun((("optim.lr", "0.1"),), seed, tmp_path / str(seed), 1) for seed in range(3)]
    for run, acc in zip(runs, (0.9, 0.8, 0.7), strict=True):
        run.directory.mkdir()
        summary = {
            "test_accuracy": acc,
            "val_accuracy": acc,
            "final_train_accuracy": 1.0,
            "wall_seconds": 2.0,
            "epochs": 1,
        }
        (run.directory / "summary.json").write_text(json.dumps(summary))
    outcomes = {r.directory: "done" for r in runs[:2]} | {runs[2].directory: "failed"}
    (row,) = aggregate(runs, outcomes)
    assert (row["runs"], row["done"]) == (3, 2)
    assert math.isclose(row["test_accuracy"], 0.85) and math.isclose(
        row["test_accuracy_std"], math.sqrt(0.005)
    )
    assert "85.00% ± 7.07%" in format_table([row])


@pytest.mark.slow
def test_a_sweep_runs_its_grid_as_run_directories_and_continues_where_it_stopped(tmp_path):
    out = tmp_path / "sweep"
    grid = ["--grid", "optim.lr=0.002,0.004", "--parallel", "2"]
    argv = [sys.executable, "-m", "eqprop", "sweep", *grid, "--out", str(out), *TINY_ARGS]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "optim.lr=0.002" in res.stdout and "1/1" in res.stdout
    table = json.loads((out / "sweep.json").read_text())
    assert [r["outcome"] for r in table["runs"]] == ["done"] * 2
    assert all((Path(r["directory"]) / "checkpoints" / "last.pt").exists() for r in table["runs"])
    again = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "(2 done before)" in again.stdout, again.stderr
    assert (out / "sweep.csv").read_text().startswith("point,runs,done,")
