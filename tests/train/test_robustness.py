"""Runs that survive real life (issue 13): full disks, hostile files, honest messages, times and
provenance. Each test is one case a user or a cluster met; each ends in a one-line error or a
correct run, never a traceback."""

from __future__ import annotations

import errno
import hashlib
import importlib.metadata
import io
import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tinyruns import FAST, TINY_ARGS, one_error_line, records, tiny

import eqprop
import eqprop.train.checkpoint as checkpoint_module
import eqprop.train.runlog as runlog
from eqprop.cli import main
from eqprop.train.checkpoint import load_checkpoint
from eqprop.train.datasets import load_dataset
from eqprop.train.trainer import Trainer


class FailingFile:
    """A file on a disk with ``room`` bytes left: writes beyond fail with ENOSPC."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def write(self, data):
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_a_full_disk_keeps_the_last_good_checkpoint_says_so_and_the_resume_is_exact(
    tmp_path, monkeypatch, capsys
):
    Trainer(tiny(), tmp_path / "full", quiet=True).fit()
    real_open = open
    armed = {"on": False}

    def full_disk_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return FailingFile(f, room=0) if armed["on"] else f

    original = Trainer._train_batch

    def train_batch(self, x, y):
        armed["on"] = self.epoch == 1  # the disk fills during epoch 2
        original(self, x, y)

    monkeypatch.setattr(checkpoint_module, "open", full_disk_open, raising=False)
    monkeypatch.setattr(Trainer, "_train_batch", train_batch)
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY_ARGS]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "No space left on device [Errno 28]" in line and f"{run}/checkpoints/" in line
    assert f"the last good checkpoint is kept: {run}/checkpoints/last.pt (epoch 1)" in line
    assert f"then: eqprop resume {run}" in line
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
    assert not list(run.rglob("*.tmp"))
    monkeypatch.undo()
    assert main(["resume", str(run), "--quiet"]) == 0
    assert records(run) == records(tmp_path / "full")


def test_atomic_write_reports_the_disk_error_that_torch_save_hides(tmp_path, monkeypatch):
    real_open = open
    monkeypatch.setattr(
        checkpoint_module,
        "open",
        lambda *a, **k: FailingFile(real_open(*a, **k), room=1000),
        raising=False,
    )
    target = tmp_path / "last.pt"
    with pytest.raises(OSError) as info:
        checkpoint_module.save_checkpoint(
            target, {"epoch": 0, "batch": 0, "model": {}, "x": torch.zeros(10_000)}
        )
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------- hostile files


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _cifar_batch(n: int) -> dict:
    rng = np.random.default_rng(n)
    return {
        b"batch_label": b"training batch",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"img.png"] * n,
    }


def _write_cifar(root: Path, first: object) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate([*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]):
        payload = first if i == 0 else _cifar_batch(4)
        (folder / name).write_bytes(pickle.dumps(payload, protocol=2))
    return folder


def test_a_crafted_cifar_batch_is_refused_without_running_code(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    _write_cifar(tmp_path, {b"data": _RunsCode(marker)})
    argv = [
        "train",
        "cifar10-conv-small",
        "--data-dir",
        str(tmp_path),
        "--out",
        str(tmp_path / "r"),
    ]
    assert main([*argv, *FAST]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "data_batch_1: not a CIFAR batch: it asks to load posix.system" in line
    assert "refused, as loading it could run code" in line
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_real_cifar_batches_load_whatever_numpy_or_protocol_pickled_them(tmp_path, protocol):
    folder = _write_cifar(tmp_path, _cifar_batch(6))
    data = pickle.dumps(_cifar_batch(6), protocol=protocol)
    if protocol == 2:  # numpy 1 (and the Python 2 files of the real data set) name its module so
        data = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    (folder / "data_batch_1").write_bytes(data)
    ds = load_dataset("cifar10", tmp_path)
    assert ds.x_train.shape == (6 + 4 * 4, 3, 32, 32)
    assert ds.y_train[:6].tolist() == _cifar_batch(6)[b"labels"]


def test_a_crafted_checkpoint_is_refused_without_torchs_advice_to_load_it_unsafely(
    tmp_path, capsys
):
    marker = tmp_path / "code-ran"
    Trainer(tiny("train.epochs=1"), tmp_path / "run").fit()
    buf = io.BytesIO()
    torch.save({"version": 1, "epoch": 1, "batch": 0, "model": _RunsCode(marker)}, buf)
    (tmp_path / "run" / "checkpoints" / "best.pt").write_bytes(buf.getvalue())
    assert main(["eval", str(tmp_path / "run")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "best.pt is not a valid eqprop checkpoint (it holds posix.system" in line
    assert "weights_only" not in line and "Re-running" not in line
    assert not marker.exists()


# ------------------------------------------------------------------------- messages


@pytest.mark.parametrize("text", ["", "# only a comment\n\n"], ids=["empty", "comments only"])
def test_an_empty_config_file_says_so(tmp_path, capsys, text):
    (tmp_path / "my.yaml").write_text(text)
    assert main(["train", str(tmp_path / "my.yaml"), *FAST]) == 2
    assert "my.yaml: the file is empty (or holds only comments)" in one_error_line(
        capsys.readouterr().err
    )


def test_a_directory_given_as_config_says_so(tmp_path, capsys):
    Trainer(tiny("train.epochs=1"), tmp_path / "run").fit()
    assert main(["train", str(tmp_path / "run"), *FAST]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "is a directory; expected a YAML file or a preset name; to continue a run" in line


def test_the_default_validation_size_too_large_for_the_data_names_the_field(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "mnist.npz",
        x_train=rng.integers(0, 256, (100, 28, 28), dtype=np.uint8),
        y_train=rng.integers(0, 10, 100),
        x_test=rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        y_test=rng.integers(0, 10, 10),
    )
    assert main(["train", "mnist-mlp", "--data-dir", str(tmp_path), *FAST]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert (
        "data.val_size: 5000 (the default for mnist) is not valid; expected fewer than the " in line
    )
    assert "100 training examples" in line


def test_resume_with_a_changed_config_names_the_fields_and_exits_2(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY_ARGS, "--epochs", "1"]) == 0
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("lr: 0.002", "lr: 0.5"))
    assert main(["resume", str(run), "--quiet"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "config.yaml: differs from the configuration the checkpoint was saved with" in line
    assert "optim.lr: 0.002 -> 0.5" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_unavailable_cuda_device_is_bad_input(capsys):
    assert main(["train", "--device", "cuda", *FAST]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "train.device: 'cuda' is not valid on this machine (CUDA is not available)" in line


def test_a_broken_torchvision_is_one_line(tmp_path, monkeypatch, capsys):
    class Broken:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "torchvision":
                raise RuntimeError("operator torchvision::nms does not exist\nmore lines")
            return None

    for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [Broken(), *sys.meta_path])
    argv = ["train", "mnist-mlp", "--download", "--data-dir", str(tmp_path), *FAST]
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert (
        "needs torchvision, which fails to import (RuntimeError: operator torchvision::nms" in line
    )


def test_help_documents_the_exit_statuses(capsys):
    for argv in (["--help"], ["train", "--help"], ["resume", "--help"], ["sweep", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert "exit status:" in out and "130" in out and "143" in out and "bad input" in out


# ------------------------------------------------------------------------- divergence


def test_an_overflowing_run_says_no_checkpoint_was_written_when_none_was(tmp_path, capsys):
    argv = ["train", "--out", str(tmp_path), *TINY_ARGS, "--set", "optim.kind=sgd"]
    assert main([*argv, "--set", "optim.lr=1e38"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "non-finite state, loss or gradient at epoch 1" in line
    assert f"no checkpoint was written, so {tmp_path} holds none to go back to" in line
    assert not (tmp_path / "checkpoints").exists()


def test_a_run_left_at_chance_without_overflow_is_flagged(tmp_path, capsys):
    argv = ["train", "--out", str(tmp_path), *TINY_ARGS, "--set", "optim.kind=sgd"]
    assert main([*argv, "--set", "optim.lr=1e6"]) == 0
    out, err = capsys.readouterr()
    assert "warning: epoch 1: validation accuracy 10.7% is at chance level" in err
    assert "warning: the run ended at chance level (diverged)" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["diverged"] and "at chance level" in summary["warnings"][0]


def test_a_learning_run_is_not_flagged(tmp_path):
    summary = Trainer(tiny(), tmp_path, quiet=True).fit()
    assert not summary["diverged"] and summary["warnings"] == []


# ------------------------------------------------------------------------- honest records


def test_times_are_recorded_for_training_evaluation_and_the_whole_run(tmp_path):
    summary = Trainer(tiny(), tmp_path, quiet=True).fit()
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        assert r["train_seconds"] > 0 and r["eval_seconds"] > 0
        assert r["seconds"] >= r["train_seconds"] + r["eval_seconds"]
    assert summary["train_seconds"] > 0 and summary["eval_seconds"] > 0
    assert summary["wall_seconds"] > summary["train_seconds"] + summary["eval_seconds"]


def test_environment_keeps_the_first_start_and_adds_every_resume(tmp_path):
    Trainer(tiny("train.epochs=1"), tmp_path).fit()
    first = json.loads((tmp_path / "environment.json").read_text())
    assert first["eqprop"] == eqprop.__version__ and len(first["sessions"]) == 1
    Trainer(tiny(), tmp_path).fit(resume=True)
    after = json.loads((tmp_path / "environment.json").read_text())
    assert after["timestamp"] == first["timestamp"] and after["host"] == first["host"]
    assert [(s["command"], s["epoch"]) for s in after["sessions"]] == [("train", 0), ("resume", 1)]


def test_the_version_is_set_once_and_the_package_is_typed():
    root = Path(eqprop.__file__).parents[1]
    pyproject = (root / "pyproject.toml").read_text()
    assert f'version = "{eqprop.__version__}"' in pyproject
    assert eqprop.__version__ == importlib.metadata.version("eqprop")
    assert (root / "eqprop" / "py.typed").exists() and '"py.typed"' in pyproject


# ------------------------------------------------------------------------- dependencies


def test_the_bundled_digits_need_no_scikit_learn_and_never_change(monkeypatch):
    for name in [m for m in sys.modules if m.split(".")[0] == "sklearn"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "sklearn", None)  # any import of it fails
    ds = load_dataset("digits")
    digest = hashlib.sha256()
    for t in (ds.x_train, ds.y_train, ds.x_test, ds.y_test):
        digest.update(t.numpy().tobytes())
    assert digest.hexdigest()[:16] == "de2948fd632d01f0"
    pyproject = (Path(eqprop.__file__).parents[1] / "pyproject.toml").read_text()
    assert "scikit-learn" not in pyproject and '"train/digits.npz"' in pyproject


def test_the_bundled_digits_are_scikit_learns_bit_for_bit():
    datasets = pytest.importorskip("sklearn.datasets")
    bunch = datasets.load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    perm = np.random.RandomState(0).permutation(len(bunch.target))
    tr, te = perm[:1497], perm[1497:]
    ds = load_dataset("digits")
    assert np.array_equal(ds.x_train.numpy(), images[tr])
    assert np.array_equal(ds.y_train.numpy(), bunch.target[tr])
    assert np.array_equal(ds.x_test.numpy(), images[te])
    assert np.array_equal(ds.y_test.numpy(), bunch.target[te])


def test_tensorboard_that_cannot_be_imported_is_reported_once(tmp_path, monkeypatch, capsys):
    def broken():
        raise ImportError("No module named 'tensorboard'")

    monkeypatch.setattr(runlog, "_import_summary_writer", broken)
    Trainer(tiny("log.tensorboard=true"), tmp_path, quiet=True).fit()
    err = capsys.readouterr().err
    assert err.count("TensorBoard logging is off: it cannot be imported (ImportError") == 1
    assert not (tmp_path / "tensorboard").exists()
