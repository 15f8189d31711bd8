"""The downsampled ImageNet 32×32 reader, on small synthetic files in the official format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eqprop.train.config import load_config
from eqprop.train.datasets import DATASETS, DataError, load_dataset


def _batch_file(path: Path, n: int, seed: int, mean: bool = True) -> dict[str, np.ndarray]:
    """One official-format batch: data (N, 3072) as R, G, B planes; 1-based labels."""
    rng = np.random.default_rng(seed)
    arrays = {
        "data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),
        "labels": rng.integers(1, 1001, n),
    }
    if mean:
        arrays["mean"] = rng.random(3 * 32 * 32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return arrays


def _write_set(root: Path) -> tuple[list[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    train = [
        _batch_file(root / "Imagenet32_train_npz" / f"train_data_batch_{i}.npz", 2 + i % 3, i)
        for i in range(1, 11)
    ]
    val = _batch_file(root / "Imagenet32_val_npz" / "val_data.npz", 5, 99, mean=False)
    return train, val


def test_imagenet32_reads_the_official_batches(tmp_path: Path) -> None:
    train, val = _write_set(tmp_path / "imagenet32")
    ds = load_dataset("imagenet32", tmp_path)
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 1000
    data = np.concatenate([b["data"] for b in train])
    assert ds.x_train.shape == (len(data), 3, 32, 32)
    # Channel planes in row-major order: pixel (c, i, j) is column c·1024 + 32·i + j.
    assert np.array_equal(ds.x_train.numpy().reshape(len(data), -1), data)
    assert ds.x_train[3, 1, 2, 5] == data[3, 1024 + 2 * 32 + 5]
    assert np.array_equal(ds.y_train.numpy(), np.concatenate([b["labels"] for b in train]) - 1)
    assert np.array_equal(ds.y_test.numpy(), val["labels"] - 1)
    assert ds.x_test.shape == (5, 3, 32, 32)


def test_imagenet32_errors_name_the_file(tmp_path: Path) -> None:
    _write_set(tmp_path)
    bad = tmp_path / "Imagenet32_val_npz" / "val_data.npz"
    np.savez(bad, data=np.zeros((2, 3072), np.uint8), labels=np.array([0, 3]))
    with pytest.raises(DataError, match=r"val_data\.npz: labels hold 0, but .* from 1"):
        load_dataset("imagenet32", tmp_path)
    np.savez(bad, data=np.zeros((2, 3000), np.uint8), labels=np.array([1, 3]))
    with pytest.raises(DataError, match=r"val_data\.npz: data has shape \(2, 3000\)"):
        load_dataset("imagenet32", tmp_path)
    np.savez(bad, data=np.zeros((2, 3072), np.uint8))
    with pytest.raises(DataError, match=r"val_data\.npz: missing arrays \['labels'\]"):
        load_dataset("imagenet32", tmp_path)
    bad.unlink()
    with pytest.raises(DataError, match=r"imagenet32: data files not found .*val_data\.npz"):
        load_dataset("imagenet32", tmp_path)


def test_imagenet32_preset_and_spec() -> None:
    spec = DATASETS["imagenet32"]
    assert spec.image_shape == (3, 32, 32) and spec.num_classes == 1000
    assert spec.resolved_val_size(1_281_167) == 10000
    cfg = load_config("imagenet32-hep-symmetric")
    assert cfg.data.dataset == "imagenet32" and cfg.train.batch_size == 256
    assert cfg.estimator.kind == "holomorphic" and cfg.estimator.points == 2
