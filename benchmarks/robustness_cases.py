"""The bad inputs of ``robustness.py``: each case prepares its files and gives the command line.

Every case must end in exactly one ``eqprop: error:`` line (exit status 1 or 2), no traceback,
and, for the hostile files, no code run (the crafted pickles would create :data:`PWNED`).
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["PWNED", "bad_input_cases"]

PWNED = Path("/tmp/eqprop-robustness-pwned")


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {PWNED}",))


def _write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _config_cases(work: Path, run: Path) -> dict[str, list[str]]:
    yaml = {
        "empty yaml": "",
        "comments-only yaml": "# nothing\n",
        "yaml syntax error": "optim: [\n",
        "duplicate yaml keys": "seed: 1\nseed: 2\n",
        "extends cycle": "extends: cycle-4.yaml\n",
    }
    cases = {
        name: [
            "train",
            str(_write(work / f"cycle-{i}.yaml" if "cycle" in name else work / f"c{i}.yaml", text)),
        ]
        for i, (name, text) in enumerate(yaml.items())
    }
    return {
        **cases,
        "unknown preset": ["train", "mnist-mpl"],
        "misspelt key": ["train", "--set", "optim.lrr=0.1"],
        "value out of range": ["train", "--set", "optim.lr=-1"],
        "wrong type": ["train", "--set", "train.epochs=ten"],
        "malformed override": ["train", "--set", "optim.lr"],
        "unknown choice": ["train", "--set", "estimator.kind=symetric"],
        "bad device name": ["train", "--set", "train.device=gpu0"],
        "unavailable cuda device": ["train", "--device", "cuda:7"],
        "conv kernel larger than the image": [
            "train",
            "--set",
            "model.conv=[{channels: 4, kernel: 9}]",
        ],
        "directory as config": ["train", str(run)],
        "sweep with a bad grid": ["sweep", "--grid", "optim.lr=0.1,,2"],
        "sweep with a bad value": ["sweep", "--grid", "optim.lr=0.1,-2"],
        "check --batch 0": ["check", "--batch", "0"],
        "check --out in /proc": ["check", "--out", "/proc/eqprop-check", "--no-sweep"],
    }


def _cifar(root: Path, first: bytes) -> str:
    batch = {b"labels": [1, 2], b"data": np.zeros((2, 3072), np.uint8)}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        _write(root / "cifar-10-batches-py" / name, pickle.dumps(batch, protocol=2))
    _write(root / "cifar-10-batches-py" / "data_batch_1", first)
    return str(root)


def _idx(root: Path, n: int, truncate: bool) -> str:
    rng = np.random.default_rng(0)
    for prefix, count in (("train", n), ("t10k", n)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8).tobytes()
        header = b"".join(v.to_bytes(4, "big") for v in (2051, count, 28, 28))
        _write(
            root / f"{prefix}-images-idx3-ubyte",
            header + images[: len(images) // 2 if truncate else None],
        )
        labels = rng.integers(0, 10, count, dtype=np.uint8).tobytes()
        _write(
            root / f"{prefix}-labels-idx1-ubyte",
            (2049).to_bytes(4, "big") + count.to_bytes(4, "big") + labels,
        )
    return str(root)


def _data_cases(work: Path) -> dict[str, list[str]]:
    _write(
        work / "shim" / "torchvision" / "__init__.py",
        "raise RuntimeError('operator torchvision::nms does not exist')\n",
    )
    mnist = ["train", "mnist-mlp", "--data-dir"]
    cifar = ["train", "cifar10-conv-small", "--data-dir"]
    return {
        "missing data": [*mnist, str(work / "nodata")],
        "truncated idx file": [*mnist, _idx(work / "idx", 20, truncate=True)],
        "data set smaller than the default val_size": [
            *mnist,
            _idx(work / "idx-small", 20, truncate=False),
        ],
        "crafted cifar pickle": [
            *cifar,
            _cifar(work / "cifar", pickle.dumps({b"data": _Evil()}, protocol=2)),
        ],
        "garbage cifar pickle": [*cifar, _cifar(work / "cifar2", b"not a pickle")],
        "not an npz": [
            "train",
            "--set",
            "data.dataset=npz",
            "--set",
            f"data.root={_write(work / 'x.npz', b'PK not a zip')}",
        ],
        "broken torchvision": [*mnist, str(work / "nodata"), "--download"],
    }


def _run_cases(work: Path, run: Path) -> dict[str, list[str]]:
    a_file = _write(work / "a-file", "")
    user = _write(work / "user" / "config.yaml", "mine").parent
    changed = work / "changed-run"
    shutil.copytree(run, changed)
    text = (changed / "config.yaml").read_text()
    (changed / "config.yaml").write_text(text.replace("batch_size: 8", "batch_size: 4"))
    return {
        "--out is a file": ["train", "--out", str(a_file)],
        "--out under a file": ["train", "--out", str(a_file / "run")],
        "--out in /proc": ["train", "--out", "/proc/eqprop-run"],
        "--out of user files": ["train", "--out", str(user)],
        "--out holds a run": ["train", "--out", str(run)],
        "resume of nothing": ["resume", str(work / "nowhere")],
        "resume of a non-run": ["resume", str(user)],
        "resume with a changed config": ["resume", str(changed)],
        "resume to fewer epochs": ["resume", str(run), "--epochs", "1"],
        "overflowing learning rate": [
            "train",
            "--set",
            "optim.kind=sgd",
            "--set",
            "optim.lr=1e38",
            "--out",
            str(work / "overflow"),
        ],
    }


def _checkpoint_cases(work: Path, run: Path) -> dict[str, list[str]]:
    evil, torn, garbage = work / "evil-run", work / "torn-run", work / "garbage-run"
    for target in (evil, torn, garbage):
        shutil.copytree(run, target)
    torch.save(
        {"version": 1, "epoch": 1, "batch": 0, "model": _Evil()}, evil / "checkpoints" / "best.pt"
    )
    data = (torn / "checkpoints" / "last.pt").read_bytes()
    (torn / "checkpoints" / "last.pt").write_bytes(data[: len(data) // 2])
    (garbage / "checkpoints" / "best.pt").write_bytes(os.urandom(4096))
    return {
        "eval of a crafted checkpoint": ["eval", str(evil)],
        "eval of a truncated checkpoint": ["eval", str(torn), "--checkpoint", "last"],
        "eval of a garbage checkpoint": ["eval", str(garbage)],
        "eval of a missing checkpoint": ["eval", str(work / "nowhere")],
    }


def bad_input_cases(work: Path, run: Path) -> dict[str, list[str]]:
    """Case name -> eqprop arguments, files prepared under ``work`` (``run``: a finished run)."""
    return {
        **_config_cases(work, run),
        **_data_cases(work),
        **_run_cases(work, run),
        **_checkpoint_cases(work, run),
    }
