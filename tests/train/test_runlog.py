"""Tests for eqprop.train.runlog: metrics files, TensorBoard, curves, resume and JSON output."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import eqprop
import eqprop.train.runlog as runlog
from eqprop.train.runlog import RunLogger, environment_facts

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tensorboard_importable() -> bool:
    try:
        runlog._import_summary_writer()
    except Exception:
        return False
    return True


HAS_TB = _tensorboard_importable()


def record(epoch: int, **extra: Any) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "train_error": 0.5 / epoch,
        "train_loss": 1.0 / epoch,
        "val_error": 0.4 / epoch,
        "test_error": 0.45 / epoch,
        "lr_group0": 0.05 / epoch,
        "seconds": 1.5,
        "free_steps": 20,
        "nudged_steps": 4,
        **extra,
    }


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def temp_files(directory: Path) -> list[Path]:
    return list(directory.rglob("*.tmp"))


def test_metrics_files_after_several_epochs(tmp_path: Path) -> None:
    records = [record(e) for e in range(1, 4)]
    with RunLogger(tmp_path, tensorboard=False, plots=False) as logger:
        for r in records:
            logger.log_epoch(r)
        assert logger.history == records
    assert read_jsonl(tmp_path / "metrics.jsonl") == records
    header, rows = read_csv(tmp_path / "metrics.csv")
    assert header == list(records[0])
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [float(r["train_error"]) for r in rows] == [r["train_error"] for r in records]
    assert not (tmp_path / "tensorboard").exists()
    assert not (tmp_path / "curves.png").exists()
    assert temp_files(tmp_path) == []


def test_new_key_appearing_later_rewrites_csv(tmp_path: Path) -> None:
    with RunLogger(tmp_path, plots=False) as logger:
        logger.log_epoch(record(1))
        logger.log_epoch(record(2, lr_group1=0.01))
        logger.log_epoch(record(3))  # the new key missing again: empty cell, same header
    header, rows = read_csv(tmp_path / "metrics.csv")
    assert header == [*record(1), "lr_group1"]
    assert [r["lr_group1"] for r in rows] == ["", "0.01", ""]
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 3


def test_none_non_numeric_and_array_scalars(tmp_path: Path) -> None:
    with RunLogger(tmp_path, plots=True) as logger:
        logger.log_epoch(
            {
                "epoch": 1,
                "val_error": None,
                "train_error": np.float32(0.25),
                "train_loss": torch.tensor(0.5),
                "note": "warmup",
                "diverged": False,
                "sizes": [784, 10],
            }
        )
    (line,) = read_jsonl(tmp_path / "metrics.jsonl")
    assert line["val_error"] is None
    assert line["train_error"] == 0.25 and line["train_loss"] == 0.5
    assert line["sizes"] == [784, 10]
    _, rows = read_csv(tmp_path / "metrics.csv")
    assert rows[0]["val_error"] == "" and rows[0]["sizes"] == "[784, 10]"
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG_MAGIC)


def test_record_needs_integer_epoch(tmp_path: Path) -> None:
    with RunLogger(tmp_path, plots=False) as logger:
        with pytest.raises(ValueError, match="epoch"):
            logger.log_epoch({"train_error": 0.1})
        with pytest.raises(ValueError, match="epoch"):
            logger.log_epoch({"epoch": 1.0})
        assert logger.history == []
    assert not (tmp_path / "metrics.jsonl").exists()


def test_curves_png(tmp_path: Path) -> None:
    with RunLogger(tmp_path, plots=True) as logger:
        logger.log_epoch(record(1))
        png = tmp_path / "curves.png"
        assert png.read_bytes().startswith(PNG_MAGIC)
        logger.log_epoch(record(2, lr_group1=0.01))
        assert png.read_bytes().startswith(PNG_MAGIC)
    assert temp_files(tmp_path) == []


def test_tensorboard_events(tmp_path: Path) -> None:
    with RunLogger(tmp_path, tensorboard=True, plots=False) as logger:
        assert logger.tensorboard_active is HAS_TB
        for e in (1, 2):
            logger.log_epoch(record(e, note="text is skipped", val_error=None))
    if not HAS_TB:
        assert not (tmp_path / "tensorboard").exists()
        pytest.skip("tensorboard is not importable")
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and all(p.stat().st_size > 0 for p in events)

    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"train_error", "train_loss", "test_error", "lr_group0", "free_steps"} <= scalars
    assert "note" not in scalars and "val_error" not in scalars and "epoch" not in scalars
    assert [s.step for s in acc.Scalars("train_error")] == [1, 2]


def test_tensorboard_unavailable_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_tensorboard() -> Any:
        raise ImportError("TensorBoard logging requires TensorBoard")

    monkeypatch.setattr(runlog, "_import_summary_writer", no_tensorboard)
    with RunLogger(tmp_path, tensorboard=True, plots=False) as logger:
        assert not logger.tensorboard_active
        assert "ImportError" in (logger.tensorboard_error or "")
        logger.log_epoch(record(1))
    assert not (tmp_path / "tensorboard").exists()
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 1


def test_truncate(tmp_path: Path) -> None:
    with RunLogger(tmp_path, tensorboard=True, plots=True) as logger:
        for e in range(1, 5):
            logger.log_epoch(record(e, **({"extra": 1.0} if e == 4 else {})))
        logger.truncate(2)
        assert [r["epoch"] for r in logger.history] == [1, 2]
        assert [r["epoch"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]
        header, rows = read_csv(tmp_path / "metrics.csv")
        assert "extra" not in header  # columns only epochs past the cut had are gone
        assert [r["epoch"] for r in rows] == ["1", "2"]
        logger.log_epoch(record(3))
        assert [r["epoch"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]
        logger.truncate(0)
        assert logger.history == []
    assert read_jsonl(tmp_path / "metrics.jsonl") == []
    assert not (tmp_path / "metrics.csv").exists()
    assert not (tmp_path / "curves.png").exists()


def test_resume_on_existing_run_dir(tmp_path: Path) -> None:
    with RunLogger(tmp_path, plots=False) as logger:
        for e in (1, 2, 3):
            logger.log_epoch(record(e))
    # A crash between the JSONL and CSV writes leaves the CSV behind; loading resynchronises it.
    header, rows = read_csv(tmp_path / "metrics.csv")
    (tmp_path / "metrics.csv").write_text(",".join(header) + "\n")

    with RunLogger(tmp_path, plots=False) as logger:
        assert [r["epoch"] for r in logger.history] == [1, 2, 3]
        assert len(read_csv(tmp_path / "metrics.csv")[1]) == 3
        logger.truncate(2)
        logger.log_epoch(record(3, resumed=True))
    assert [r["epoch"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    header, rows = read_csv(tmp_path / "metrics.csv")
    assert header[-1] == "resumed" and rows[-1]["resumed"] == "True"


@pytest.mark.parametrize("tail", ['{"epoch": 3, "train_err', '{"epoch": 3}'])
def test_torn_last_line_is_repaired(tmp_path: Path, tail: str) -> None:
    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text(json.dumps(record(1)) + "\n" + json.dumps(record(2)) + "\n" + tail)
    with RunLogger(tmp_path, plots=False) as logger:
        kept = [1, 2, 3] if tail == '{"epoch": 3}' else [1, 2]
        assert [r["epoch"] for r in logger.history] == kept
        logger.log_epoch(record(9))
    assert [r["epoch"] for r in read_jsonl(jsonl)] == [*kept, 9]


def test_corrupt_middle_line_raises(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\nnot json\n{"epoch": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        RunLogger(tmp_path, plots=False)


def test_load_history_rereads_file(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path, plots=False)
    other = RunLogger(tmp_path, plots=False)
    other.log_epoch(record(1))
    assert logger.history == []
    assert logger.load_history() == [record(1)]
    logger.close()
    logger.close()  # idempotent
    other.close()


def test_write_json_roundtrip_and_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    logger = RunLogger(tmp_path, plots=False)
    summary = {"best_val_accuracy": np.float64(0.9), "path": tmp_path, "sizes": (1, 2)}
    path = logger.write_json("summary.json", summary)
    assert path == tmp_path / "summary.json"
    assert json.loads(path.read_text()) == {
        "best_val_accuracy": 0.9,
        "path": str(tmp_path),
        "sizes": [1, 2],
    }

    # A failure while replacing must leave the previous file intact and no temp file behind.
    def failing_replace(src: Any, dst: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(runlog.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        logger.write_json("summary.json", {"best_val_accuracy": 0.1})
    monkeypatch.undo()
    assert json.loads(path.read_text())["best_val_accuracy"] == 0.9
    assert temp_files(tmp_path) == []

    with pytest.raises(TypeError):
        logger.write_json("summary.json", {"bad": object()})
    assert json.loads(path.read_text())["best_val_accuracy"] == 0.9
    logger.close()


EXPECTED_FACTS = {
    "python",
    "python_implementation",
    "platform",
    "machine",
    "host",
    "torch",
    "numpy",
    "eqprop",
    "git_commit",
    "git_dirty",
    "cuda_available",
    "cuda_version",
    "cuda_devices",
    "cpu_count",
    "torch_threads",
    "timestamp",
}


def test_environment_facts(tmp_path: Path) -> None:
    facts = environment_facts()
    assert set(facts) == EXPECTED_FACTS
    assert facts["torch"] == torch.__version__
    assert facts["numpy"] == np.__version__
    assert facts["eqprop"] == eqprop.__version__
    assert isinstance(facts["cuda_devices"], list)
    assert facts["timestamp"].endswith("+00:00")
    json.dumps(facts)  # environment.json must be writable as-is


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_commit_is_eqprops_own_never_the_current_directorys(tmp_path, monkeypatch) -> None:
    def git(cwd: Path, *args: str) -> str:
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=cwd,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    git(tmp_path, "init", "-q")
    git(tmp_path, "commit", "-q", "--allow-empty", "-m", "someone else's repository")
    monkeypatch.chdir(tmp_path)
    source = Path(eqprop.__file__).resolve().parents[1]
    expected = git(source, "rev-parse", "HEAD") if (source / ".git").exists() else None
    commit = environment_facts()["git_commit"]
    assert commit == expected
    assert commit != git(tmp_path, "rev-parse", "HEAD")


def test_curves_are_drawn_after_the_first_epoch_then_throttled_and_completed_on_close(
    tmp_path: Path,
) -> None:
    png = tmp_path / "curves.png"
    with RunLogger(tmp_path, plots=True, plot_interval=float("inf")) as logger:
        logger.log_epoch(record(1))
        first = png.read_bytes()
        logger.log_epoch(record(2))
        assert png.read_bytes() == first  # drawing costs more than a small run's epoch
    assert png.read_bytes() != first  # the last epochs are drawn when the logger closes
