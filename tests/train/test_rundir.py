"""Run directories: one writer at a time, a user's files never touched, bad paths refused before
any data loads, and the temporary files of killed writers cleaned up."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tinyruns import FAST, TINY_ARGS, one_error_line, tiny

import eqprop.train.trainer as trainer_module
from eqprop.cli import main
from eqprop.train.lock import LOCK_FILE, RunLock
from eqprop.train.rundir import RunDirectory, RunDirError
from eqprop.train.trainer import Trainer


@pytest.fixture
def no_data_loading(monkeypatch):
    """Fails the test if a dataset is loaded: checks must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("the dataset was loaded before the run directory was checked")

    monkeypatch.setattr(trainer_module, "load_dataset", refuse)


def test_a_second_train_into_a_busy_directory_stops_at_once_naming_the_owner(
    tmp_path, capsys, no_data_loading
):
    with RunDirectory.claim(tmp_path / "run", resume=False) as run:
        assert main(["train", "--out", str(run.path), *FAST]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"is in use by process {os.getpid()}" in line and "pytest" in line


def test_a_second_resume_of_a_busy_run_is_refused(tmp_path, capsys):
    Trainer(tiny("train.epochs=1"), tmp_path).fit()
    with RunDirectory.claim(tmp_path, resume=True):
        assert main(["resume", str(tmp_path), "--quiet"]) == 2
    assert "is in use by process" in one_error_line(capsys.readouterr().err)


def test_the_lock_of_a_killed_process_is_released(tmp_path):
    holder = (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
        "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)"
    )
    with subprocess.Popen(
        [sys.executable, "-c", holder, str(tmp_path / LOCK_FILE)], stdout=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None and proc.stdout.readline() == b"locked\n"
        with pytest.raises(RunDirError, match="is in use by another process"):
            RunDirectory.claim(tmp_path, resume=False)
        proc.kill()  # SIGKILL: no clean-up of its own
    RunDirectory.claim(tmp_path, resume=False).release()


def test_the_lock_is_released_when_the_run_ends(tmp_path):
    Trainer(tiny("train.epochs=1"), tmp_path / "run").fit()
    RunLock.acquire(tmp_path / "run").release()


def test_a_directory_of_user_files_is_refused_and_left_untouched(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("my own notes\n")
    (tmp_path / "metrics.csv").write_text("a,b\n1,2\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert main(["train", "--out", str(tmp_path), *FAST]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "is not empty (config.yaml, metrics.csv) and is not an eqprop run directory" in line
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no lock file either


def test_a_run_stopped_before_its_first_checkpoint_is_started_over(tmp_path, capsys):
    first = Trainer(tiny(), tmp_path)
    first.fit()
    (tmp_path / "checkpoints" / "last.pt").unlink()  # as if killed before the first save
    assert main(["train", "--out", str(tmp_path), *TINY_ARGS, "--epochs", "1"]) == 0
    assert [r["epoch"] for r in first.history] == [1, 2]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize(
    ("make_out", "fragment"),
    [
        (lambda d: d / "file", "is a file; expected a directory"),
        (lambda d: d / "file" / "run", "/file, which is a file"),
        (lambda d: Path("/proc/eqprop-run"), "/proc/eqprop-run: No such file or directory"),
    ],
    ids=["an existing file", "a path under a file", "a pseudo file system"],
)
def test_a_bad_out_is_one_line_before_any_data_loads(
    tmp_path, capsys, no_data_loading, make_out, fragment
):
    (tmp_path / "file").write_text("")
    assert main(["train", "--out", str(make_out(tmp_path)), *FAST]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("eqprop: error: --out: ") and fragment in line


def test_a_read_only_out_is_one_line_before_any_data_loads(
    tmp_path, capsys, monkeypatch, no_data_loading
):
    def read_only(directory):
        raise OSError(errno.EROFS, "Read-only file system", str(Path(directory) / LOCK_FILE))

    monkeypatch.setattr(RunLock, "acquire", staticmethod(read_only))
    assert main(["train", "--out", str(tmp_path / "run"), *FAST]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "cannot write a run into" in line and "Read-only file system [Errno 30]" in line
    assert not (tmp_path / "run").exists()  # nothing left behind


def test_a_refused_run_leaves_no_directory_behind(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "mnist-mlp", "--data-dir", str(tmp_path / "nowhere"), *FAST]) == 2
    assert "mnist: data files not found" in one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == [tmp_path / "nowhere"] or not list(tmp_path.iterdir())


def test_temporary_files_of_killed_writes_are_removed_on_resume(tmp_path, capsys):
    Trainer(tiny("train.epochs=1"), tmp_path).fit()
    stale = [
        tmp_path / "checkpoints" / ".last.pt.4242.0123abcd.tmp",
        tmp_path / ".curves.png.7.89abcdef.tmp",
    ]
    for path in stale:
        path.write_bytes(b"half a file")
    kept = tmp_path / "notes.tmp"
    kept.write_text("not one of ours")
    assert main(["resume", str(tmp_path), "--epochs", "2", "--quiet"]) == 0
    assert not any(p.exists() for p in stale) and kept.exists()
    assert "removed 2 temporary file(s) left by a killed process" in capsys.readouterr().err


def test_default_run_directories_of_runs_started_in_the_same_second_differ(tmp_path, monkeypatch):
    from eqprop.cli.commands import default_run_dir

    monkeypatch.chdir(tmp_path)
    first = default_run_dir("x")
    first.mkdir(parents=True)
    assert default_run_dir("x") == first.with_name(first.name + "-2")


def test_resume_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("my own notes\n")
    assert main(["resume", str(tmp_path)]) == 2
    assert "is not an eqprop run directory" in one_error_line(capsys.readouterr().err)
