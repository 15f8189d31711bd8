"""The eqprop command: one-line errors, presets, train → eval, Ctrl-C → resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from eqprop.cli import main

FAST = ["--set", "log.tensorboard=false", "--set", "log.plots=false", "--quiet"]


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["train", "nope"], "'nope' is not a preset; available: "),
        (["train", "--set", "optim.lr=-1"], "optim.lr"),
        (["train", "--set", "estimator.kind=symetric"], "did you mean 'symmetric'"),
        (["train", "--set", "model.activaton=tanh"], "model.activaton"),
        (["train", "--set", "dynamics.free_steps=0"], "dynamics.free_steps"),
        (["train", "--set", "nonsense"], "nonsense"),
        (["train", "mnist-mlp", "--data-dir", "/nonexistent/dir"], "/nonexistent/dir"),
        (["eval", "/nonexistent/run"], "/nonexistent/run"),
        (["resume", "/nonexistent/run"], "/nonexistent/run"),
        (["presets", "show", "nope"], "'nope' is not a preset"),
    ],
)
def test_bad_input_gives_one_line_error_and_no_traceback(argv, fragment, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("eqprop: error: ") and fragment in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_presets_list_and_show(capsys):
    assert main(["presets"]) == 0
    listed = capsys.readouterr().out
    for name in ("digits-quickstart", "cifar10-ce-symmetric", "mnist-mlp", "fashion-conv-small"):
        assert name in listed
    assert main(["presets", "show", "cifar10-ce-symmetric"]) == 0
    assert "free_steps: 250" in capsys.readouterr().out


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for option in ("--set", "--out", "--data-dir", "--device", "--epochs", "--download", "--quiet"):
        assert option in out


def test_train_then_eval(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--epochs", "2", "--set", "model.dense=[32]", *FAST]
    assert main(argv) == 0
    assert "test accuracy:" in capsys.readouterr().out
    assert main(["eval", str(out), "--split", "val"]) == 0
    assert "val accuracy of " in capsys.readouterr().out
    assert main(argv) == 2  # refuses to overwrite a run
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_saves_and_resume_finishes(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "eqprop", "train", "--out", str(out), "--epochs", "4",
           "--set", "train.batch_size=4", *FAST]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert f"eqprop resume {out}" in stdout + stderr
    assert len((out / "metrics.jsonl").read_text().splitlines()) < 4

    env = {**os.environ, "PYTHONWARNINGS": "error"}
    res = subprocess.run([sys.executable, "-m", "eqprop", "resume", str(out), "--quiet"],
                         capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "test accuracy:" in res.stdout
    epochs = [
        json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()
    ]
    assert epochs == [1, 2, 3, 4]
    assert json.loads((out / "summary.json").read_text())["epochs"] == 4


def test_check_writes_report_and_figures(tmp_path, capsys):
    out = tmp_path / "check"
    argv = ["check", "digits-quickstart", "--set", "model.dense=[16]", "--batch", "3",
            "--free-steps", "40", "--nudged-steps", "4", "--sweep", "0.001", "0.1", "3",
            "--float64", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "interactions.0.linear.weight" in table and "slope" in table.lower()
    report = json.loads((out / "gdu.json").read_text())
    assert report["batch"] == 3 and report["nudged_steps"] == 4
    for name in ("gdu_curves.png", "gdu_layers.png", "gdu_beta_sweep.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_check_on_a_run_directory_with_random_data_flag(tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(["train", "--out", str(run), "--epochs", "1", "--set", "model.dense=[16]", *FAST]) == 0
    )
    capsys.readouterr()
    out = tmp_path / "check"
    assert main(["check", str(run), "--batch", "2", "--no-sweep", "--out", str(out)]) == 0
    assert (out / "gdu.json").exists()
    argv = ["check", "mnist-mlp", "--random-data", "--batch", "2", "--free-steps", "5",
            "--nudged-steps", "2", "--no-sweep", "--out", str(tmp_path / "c2")]  # fmt: skip
    assert main(argv) == 0
