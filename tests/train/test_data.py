"""Tests for eqprop.train.datasets, readers and loader: files, errors, splits, normalisation."""

from __future__ import annotations

import gzip
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eqprop.train import datasets as D
from eqprop.train import loader as L
from eqprop.train.datasets import DataError, load_dataset
from eqprop.train.loader import EpochLoader, Normalizer

# ---------------------------------------------------------------------------- file writers


def _write(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _idx_images(x: np.ndarray) -> bytes:
    n, h, w = x.shape
    header = b"".join(v.to_bytes(4, "big") for v in (2051, n, h, w))
    return header + x.astype(np.uint8).tobytes()


def _idx_labels(y: np.ndarray) -> bytes:
    return (2049).to_bytes(4, "big") + len(y).to_bytes(4, "big") + y.astype(np.uint8).tobytes()


def _mnist_arrays(n_train: int = 6, n_test: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test).astype(np.uint8),
    }


def _write_idx_set(directory: Path, a: dict[str, np.ndarray], suffix: str = "") -> None:
    _write(directory / f"train-images-idx3-ubyte{suffix}", _idx_images(a["x_train"]))
    _write(directory / f"train-labels-idx1-ubyte{suffix}", _idx_labels(a["y_train"]))
    _write(directory / f"t10k-images-idx3-ubyte{suffix}", _idx_images(a["x_test"]))
    _write(directory / f"t10k-labels-idx1-ubyte{suffix}", _idx_labels(a["y_test"]))


def _check_mnist(ds: D.Dataset, a: dict[str, np.ndarray], name: str = "mnist") -> None:
    assert ds.name == name and ds.num_classes == 10 and ds.input_shape == (1, 28, 28)
    assert ds.x_train.dtype == torch.uint8 and ds.y_train.dtype == torch.int64
    assert ds.x_train.shape == (len(a["x_train"]), 1, 28, 28)
    assert np.array_equal(ds.x_train[:, 0].numpy(), a["x_train"])
    assert np.array_equal(ds.y_train.numpy(), a["y_train"])
    assert np.array_equal(ds.x_test[:, 0].numpy(), a["x_test"])
    assert np.array_equal(ds.y_test.numpy(), a["y_test"])


def _cifar_batch(path: Path, n: int, seed: int, label_key: bytes = b"labels") -> dict:
    rng = np.random.default_rng(seed)
    batch = {
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: [int(v) for v in rng.integers(0, 10, n)],
        b"batch_label": b"test batch",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(batch, f)
    return batch


# ---------------------------------------------------------------------------- MNIST idx


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_mnist_idx_torchvision_layout(tmp_path: Path, suffix: str) -> None:
    a = _mnist_arrays()
    _write_idx_set(tmp_path / "MNIST" / "raw", a, suffix)
    _check_mnist(load_dataset("mnist", tmp_path), a)


@pytest.mark.parametrize("sub", ["", "fashion_mnist", "FashionMNIST/raw"])
def test_fashion_mnist_idx_layouts(tmp_path: Path, sub: str) -> None:
    a = _mnist_arrays(seed=1)
    _write_idx_set(tmp_path / sub, a, ".gz")
    _check_mnist(load_dataset("fashion-mnist", str(tmp_path)), a, "fashion_mnist")


def _corrupt_cases() -> list[tuple[str, str, str]]:
    return [("bad_magic", "train-images-idx3-ubyte", "magic"),
            ("truncated", "t10k-images-idx3-ubyte", "truncated"),
            ("count", "t10k-labels-idx1-ubyte", "4 images"),
            ("label_range", "train-labels-idx1-ubyte", "out of range")]  # fmt: skip


@pytest.mark.parametrize(("case", "bad_file", "needle"), _corrupt_cases())
def test_mnist_idx_corrupt(tmp_path: Path, case: str, bad_file: str, needle: str) -> None:
    a = _mnist_arrays()
    raw = tmp_path / "MNIST" / "raw"
    _write_idx_set(raw, a)
    path = raw / bad_file
    if case == "bad_magic":
        data = bytearray(path.read_bytes())
        data[2:4] = (2049).to_bytes(2, "big")
        path.write_bytes(bytes(data))
    elif case == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif case == "count":
        path.write_bytes(_idx_labels(a["y_test"][:3]))
    else:
        y = a["y_train"].copy()
        y[0] = 12
        path.write_bytes(_idx_labels(y))
    with pytest.raises(DataError, match=needle) as info:
        load_dataset("mnist", tmp_path)
    assert bad_file in str(info.value)


def test_mnist_truncated_gzip_names_file(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    _write_idx_set(raw, _mnist_arrays(), ".gz")
    path = raw / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz"):
        load_dataset("mnist", tmp_path)


def test_mnist_wrong_image_size(tmp_path: Path) -> None:
    a = _mnist_arrays()
    a["x_train"] = np.zeros((6, 8, 8), np.uint8)
    a["x_test"] = np.zeros((4, 8, 8), np.uint8)
    _write_idx_set(tmp_path, a)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*\(1, 28, 28\)"):
        load_dataset("mnist", tmp_path)


# ---------------------------------------------------------------------------- CIFAR pickles


def test_cifar10_batches(tmp_path: Path) -> None:
    base = tmp_path / "cifar-10-batches-py"
    batches = [_cifar_batch(base / f"data_batch_{i}", 3, seed=i) for i in range(1, 6)]
    test = _cifar_batch(base / "test_batch", 2, seed=9)
    ds = load_dataset("cifar10", tmp_path)
    assert ds.x_train.shape == (15, 3, 32, 32) and ds.x_test.shape == (2, 3, 32, 32)
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    # Row layout: R plane (1024, row-major), then G, then B.
    row = batches[1][b"data"][2]
    img = ds.x_train[3 + 2]
    for ch in range(3):
        assert img[ch, 5, 7].item() == row[ch * 1024 + 5 * 32 + 7]
    assert ds.y_train.tolist() == [v for b in batches for v in b[b"labels"]]
    assert ds.y_test.tolist() == test[b"labels"]
    assert np.array_equal(ds.x_test.reshape(2, -1).numpy(), test[b"data"])


def test_cifar100(tmp_path: Path) -> None:
    base = tmp_path / "cifar-100-python"
    train = _cifar_batch(base / "train", 5, seed=1, label_key=b"fine_labels")
    test = _cifar_batch(base / "test", 3, seed=2, label_key=b"fine_labels")
    ds = load_dataset("cifar100", tmp_path)
    assert ds.num_classes == 100 and ds.x_train.shape == (5, 3, 32, 32)
    assert ds.x_train[4, 1, 31, 0].item() == train[b"data"][4][1024 + 31 * 32]
    assert ds.y_train.tolist() == train[b"fine_labels"]
    assert ds.y_test.tolist() == test[b"fine_labels"]


def test_cifar_bad_batch(tmp_path: Path) -> None:
    base = tmp_path / "cifar-10-batches-py"
    for i in range(1, 6):
        _cifar_batch(base / f"data_batch_{i}", 2, seed=i)
    _cifar_batch(base / "test_batch", 2, seed=0)
    (base / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path)
    with (base / "data_batch_3").open("wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DataError, match=r"data_batch_3.*\(2, 100\)"):
        load_dataset("cifar10", tmp_path)


# ---------------------------------------------------------------------------- npz


def test_npz_grayscale_and_colour(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gray = tmp_path / "gray.npz"
    xg = rng.integers(0, 256, (5, 6, 7), dtype=np.uint8)
    np.savez(gray, x_train=xg, y_train=np.array([0, 1, 2, 3, 4]), x_test=xg[:2], y_test=[6, 0])
    ds = load_dataset("npz", gray)
    assert ds.input_shape == (1, 6, 7) and ds.num_classes == 7 and ds.name == "npz"
    assert np.array_equal(ds.x_train[:, 0].numpy(), xg)

    colour = tmp_path / "colour.npz"
    xc = rng.integers(0, 256, (4, 5, 6, 3), dtype=np.uint8)
    np.savez(colour, x_train=xc, y_train=[1, 0, 1, 0], x_test=xc, y_test=[0, 0, 0, 0])
    ds = load_dataset("npz", colour)
    assert ds.input_shape == (3, 5, 6) and ds.num_classes == 2
    assert ds.x_train[2, 1, 3, 4].item() == xc[2, 3, 4, 1]

    nchw = tmp_path / "nchw.npz"
    xn = rng.integers(0, 256, (3, 2, 5, 5), dtype=np.uint8)
    np.savez(nchw, x_train=xn, y_train=[0, 1, 2], x_test=xn, y_test=[0, 1, 2])
    assert load_dataset("npz", nchw).input_shape == (2, 5, 5)


def test_named_dataset_from_npz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = _mnist_arrays()
    np.savez_compressed(tmp_path / "mnist.npz", **a)
    _check_mnist(load_dataset("mnist", tmp_path), a)
    _check_mnist(load_dataset("mnist", tmp_path / "mnist.npz"), a)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "cifar10.npz", x_train=x, y_train=[1, 2, 3, 4], x_test=x, y_test=[0] * 4)
    ds = load_dataset("cifar10", tmp_path)
    assert ds.x_train.shape == (4, 3, 32, 32) and ds.x_train.is_contiguous()
    assert torch.equal(ds.x_train, torch.from_numpy(x).permute(0, 3, 1, 2))


@pytest.mark.parametrize(
    ("arrays", "needle"),
    [
        ({"x_train": np.zeros((10, 5), np.uint8)}, r"x_train has shape \(10, 5\) but expected"),
        ({"y_train": np.zeros(9, np.int64)}, "x_train has 10 images but y_train has 9"),
        ({"y_test": -np.ones(3, np.int64)}, "y_test holds a negative label"),
        ({"x_test": np.zeros((3, 4, 4), np.float32)}, "x_test has dtype float32"),
        ({"x_test": np.zeros((3, 5, 5), np.uint8)}, "test images are"),
    ],
)
def test_npz_bad(tmp_path: Path, arrays: dict, needle: str) -> None:
    good = {
        "x_train": np.zeros((10, 4, 4), np.uint8),
        "y_train": np.zeros(10, np.int64),
        "x_test": np.zeros((3, 4, 4), np.uint8),
        "y_test": np.zeros(3, np.int64),
    }
    path = tmp_path / "bad.npz"
    np.savez(path, **(good | arrays))
    with pytest.raises(DataError, match=needle):
        load_dataset("npz", path)


def test_npz_missing_key_and_garbage(tmp_path: Path) -> None:
    path = tmp_path / "partial.npz"
    np.savez(path, x_train=np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(DataError, match=r"partial.npz: missing arrays \['y_train'"):
        load_dataset("npz", path)
    path.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"partial\.npz: not a readable"):
        load_dataset("npz", path)
    with pytest.raises(DataError, match="not a file"):
        load_dataset("npz", tmp_path / "absent.npz")


# ---------------------------------------------------------------------------- resolution, errors


def test_missing_files_message(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("mnist", tmp_path)
    msg = str(info.value)
    for needle in (
        "mnist",
        "train-images-idx3-ubyte[.gz]",
        "t10k-labels-idx1-ubyte[.gz]",
        str(tmp_path / "MNIST" / "raw"),
        str(tmp_path / "mnist.npz"),
        "EQPROP_DATA",
        "--download",
    ):
        assert needle in msg
    with pytest.raises(DataError, match=r"data_batch_1, .*test_batch"):
        load_dataset("cifar10", tmp_path)


def test_partial_set_is_reported(tmp_path: Path) -> None:
    a = _mnist_arrays()
    _write(tmp_path / "train-images-idx3-ubyte", _idx_images(a["x_train"]))
    with pytest.raises(DataError, match="Found only part of a set"):
        load_dataset("mnist", tmp_path)


def test_env_var_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = _mnist_arrays()
    _write_idx_set(tmp_path / "mnist", a)
    monkeypatch.setenv("EQPROP_DATA", str(tmp_path))
    _check_mnist(load_dataset("mnist"), a)
    monkeypatch.setenv("EQPROP_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"nowhere.*EQPROP_DATA.*does not exist"):
        load_dataset("mnist")
    monkeypatch.delenv("EQPROP_DATA")
    monkeypatch.chdir(tmp_path)
    assert D.resolve_data_dir() == Path("data")


def test_download_without_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(DataError, match="torchvision"):
        load_dataset("cifar10", tmp_path, download=True)


def test_download_with_fake_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = _mnist_arrays()
    calls: list[tuple[str, bool, bool]] = []

    class FakeMNIST:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append((root, train, download))
            _write_idx_set(Path(root) / "MNIST" / "raw", a, ".gz")

    class Broken:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            raise RuntimeError("no network")

    fake = types.ModuleType("torchvision.datasets")
    fake.MNIST, fake.FashionMNIST, fake.CIFAR10, fake.CIFAR100 = FakeMNIST, Broken, Broken, Broken
    package = types.ModuleType("torchvision")
    package.datasets = fake
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", fake)
    with pytest.raises(DataError, match="not found"):
        load_dataset("mnist", tmp_path)  # no download unless asked
    _check_mnist(load_dataset("mnist", tmp_path, download=True), a)
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]
    load_dataset("mnist", tmp_path, download=True)  # files present: no second download
    assert len(calls) == 2
    with pytest.raises(DataError, match="failed: RuntimeError: no network"):
        load_dataset("cifar10", tmp_path, download=True)


def test_unknown_name() -> None:
    with pytest.raises(ValueError, match="cifar100"):
        load_dataset("imagenet")


def test_digits() -> None:
    ds = load_dataset("digits")
    assert ds.x_train.shape == (1497, 1, 8, 8) and ds.x_test.shape == (300, 1, 8, 8)
    assert ds.num_classes == 10 and ds.input_shape == (1, 8, 8)
    assert ds.x_train.max().item() == 255 and ds.x_train.min().item() == 0
    assert set(ds.y_test.tolist()) == set(range(10))
    again = load_dataset("digits")
    assert torch.equal(ds.x_train, again.x_train) and torch.equal(ds.y_test, again.y_test)
    assert "train=1497" in repr(ds)


# ---------------------------------------------------------------------------- split, normalise


def test_split_validation() -> None:
    tr, va = L.split_validation(100, 20, seed=3)
    assert len(tr) == 80 and len(va) == 20
    assert sorted(torch.cat([tr, va]).tolist()) == list(range(100))
    tr2, va2 = L.split_validation(100, 20, seed=3)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    assert not torch.equal(va, L.split_validation(100, 20, seed=4)[1])
    tr0, va0 = L.split_validation(5, 0, seed=0)
    assert tr0.tolist() == [0, 1, 2, 3, 4] and va0.numel() == 0
    state = torch.random.get_rng_state()
    L.split_validation(10, 3, seed=0)
    assert torch.equal(state, torch.random.get_rng_state())
    for bad in (-1, 5, 6):
        with pytest.raises(ValueError, match="val_size"):
            L.split_validation(5, bad, seed=0)


def _toy_dataset(name: str, c: int, n: int = 8) -> D.Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, c, 4, 4), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % 3
    return D.Dataset(x, y, x[:2].clone(), y[:2].clone(), 3, name, (c, 4, 4))


def test_normalizer_values() -> None:
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    ds = _toy_dataset("cifar10", 3)
    out = L.normalizer_for(ds, "paper")(x, torch.float64)
    assert out.dtype == torch.float64 and out.shape == (2, 3, 2, 2)
    mean, std = D.CIFAR10_MEAN, D.CIFAR10_STD
    expected = [(v / 255 - mean[c]) / (3 * std[c]) for c, v in enumerate((0, 51, 255))]
    assert torch.allclose(out[0, :, 0, 0], torch.tensor(expected, dtype=torch.float64))
    std = L.normalizer_for(ds, "standard")(x)
    assert std.dtype == torch.float32
    assert torch.allclose(std[1, 2, 1, 1], torch.tensor((1 - 0.4465) / 0.2010))
    assert torch.equal(L.normalizer_for(ds, "none")(x), x.float() / 255)
    assert L.normalizer_for(_toy_dataset("cifar100", 3), "standard").mean == D.CIFAR100_MEAN
    mnist = L.normalizer_for(_toy_dataset("mnist", 1), "paper")
    assert mnist == Normalizer(D.MNIST_MEAN, D.MNIST_STD)
    wide = L.normalizer_for(ds, "wide")  # holomorphic EP's recipe: 1.5x the usual std
    assert wide.mean == D.CIFAR10_MEAN and wide.std == tuple(1.5 * s for s in D.CIFAR10_STD)
    with pytest.raises(ValueError, match="none, standard, paper, wide"):
        L.normalizer_for(ds, "zca")


def test_normalizer_computed_for_npz() -> None:
    ds = _toy_dataset("npz", 2)
    norm = L.normalizer_for(ds, "standard")
    out = norm(ds.x_train, torch.float64)
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.zeros(2, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(
        out.std(dim=(0, 2, 3), unbiased=False), torch.ones(2, dtype=torch.float64)
    )
    assert L.normalizer_for(ds, "paper") == norm
    assert L.normalizer_for(ds, "wide").std == tuple(1.5 * s for s in norm.std)


# ---------------------------------------------------------------------------- EpochLoader


def _loader(n: int = 37, bs: int = 8, **kw) -> EpochLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    return EpochLoader(x, torch.arange(n), batch_size=bs, **kw)


def _batches(loader: EpochLoader, epoch: int, start: int = 0) -> list[tuple[torch.Tensor, ...]]:
    return list(loader.epoch(epoch, start_batch=start))


def _same(a: list[tuple[torch.Tensor, ...]], b: list[tuple[torch.Tensor, ...]]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x, x2) and torch.equal(y, y2) for (x, y), (x2, y2) in zip(a, b, strict=True)
    )


def test_loader_lengths_and_partial_batch() -> None:
    loader = _loader(shuffle=False)
    assert len(loader) == 5
    batches = _batches(loader, 0)
    assert [len(y) for _, y in batches] == [8, 8, 8, 8, 5]
    assert torch.equal(torch.cat([y for _, y in batches]), torch.arange(37))
    x, y = batches[0]
    assert x.dtype == torch.float32 and x.shape == (8, 3, 8, 8) and y.dtype == torch.int64
    assert len(_loader(drop_last=True)) == 4
    assert [len(y) for _, y in _batches(_loader(drop_last=True), 0)] == [8] * 4


def test_loader_deterministic_and_resumable() -> None:
    a = _loader(augment=True, seed=5)
    b = _loader(augment=True, seed=5)
    e1 = _batches(a, 1)
    assert _same(e1, _batches(b, 1))
    tail = _batches(b, 1, start=3)
    assert len(tail) == 2
    assert _same(e1[3:], tail)
    assert _batches(b, 1, start=len(b)) == []
    # Every epoch is a permutation, different across epochs and seeds.
    ys = torch.cat([y for _, y in e1])
    assert sorted(ys.tolist()) == list(range(37))
    assert not torch.equal(ys, torch.cat([y for _, y in _batches(a, 2)]))
    assert not torch.equal(ys, torch.cat([y for _, y in _batches(_loader(augment=True), 1)]))
    # The global RNG is neither used nor disturbed.
    state = torch.random.get_rng_state()
    torch.manual_seed(123)
    again = _batches(a, 1)
    assert torch.equal(again[4][0], e1[4][0])
    torch.random.set_rng_state(state)
    with pytest.raises(ValueError, match="start_batch"):
        a.epoch(0, start_batch=6)


def _reference_augment(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int):
    """Slow, obviously correct per-image crop of the edge-padded image, then flip."""
    h, w = x.shape[-2:]
    padded = F.pad(x.float(), (pad, pad, pad, pad), mode="replicate")
    out = []
    for img, (oy, ox), flip in zip(padded, offsets.tolist(), flips.tolist(), strict=True):
        crop = img[:, oy : oy + h, ox : ox + w]
        out.append(crop.flip(-1) if flip else crop)
    return torch.stack(out).to(torch.uint8)


def test_augment_matches_reference() -> None:
    loader = _loader(n=64, bs=64, augment=True, shuffle=False, seed=2)
    x = loader._x
    idx = torch.arange(64).flip(0)
    for batch in range(3):
        gen = torch.Generator().manual_seed(L._derive_seed("aug", 2, 0, batch))
        offsets = torch.randint(0, 9, (64, 2), generator=gen)
        flips = torch.rand(64, generator=gen) < 0.5
        got = loader._augmented(
            idx, torch.Generator().manual_seed(L._derive_seed("aug", 2, 0, batch))
        )
        assert torch.equal(got, _reference_augment(x[idx], offsets, flips, 4))
    # Explicit corner cases: offset pad with no flip is the identity; offset 0 shows the edge.
    x1 = x[:1]
    ref_id = _reference_augment(x1, torch.tensor([[4, 4]]), torch.tensor([False]), 4)
    assert torch.equal(ref_id, x1)
    ref0 = _reference_augment(x1, torch.tensor([[0, 0]]), torch.tensor([False]), 4)
    assert torch.equal(ref0[0, :, :4, :4], x1[0, :, :1, :1].expand(3, 4, 4))
    assert torch.equal(ref0[0, :, 4:, 4:], x1[0, :, :4, :4])


def test_augment_changes_images_and_keeps_shape() -> None:
    plain = _loader(n=32, bs=16, augment=False, seed=0)
    aug = _loader(n=32, bs=16, augment=True, seed=0)
    for (xp, yp), (xa, ya) in zip(_batches(plain, 0), _batches(aug, 0), strict=True):
        assert torch.equal(yp, ya) and xa.shape == xp.shape and xa.dtype == xp.dtype
        assert not torch.equal(xa, xp)
    noflip = _loader(n=32, bs=16, augment=True, pad=0, hflip=False)
    assert torch.equal(_batches(noflip, 0)[0][0], _batches(_loader(n=32, bs=16), 0)[0][0])


def test_loader_batch_size_one_and_normalizer() -> None:
    norm = Normalizer((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    loader = _loader(n=3, bs=1, augment=True, normalizer=norm, dtype=torch.float64)
    batches = _batches(loader, 0)
    assert len(loader) == 3 and [x.shape for x, _ in batches] == [(1, 3, 8, 8)] * 3
    unaug = _loader(n=3, bs=1, shuffle=False, normalizer=norm, dtype=torch.float64)
    x, _ = next(unaug.epoch(0))
    raw = unaug._x[:1].double()
    assert x.dtype == torch.float64 and torch.allclose(x, (raw / 255 - 0.5) / 0.25)
    with pytest.raises(ValueError, match="batch_size"):
        _loader(bs=0)


def test_loader_rejects_float_images() -> None:
    with pytest.raises(ValueError, match="uint8"):
        EpochLoader(torch.zeros(4, 1, 2, 2), torch.zeros(4), batch_size=2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loader_cuda_matches_cpu() -> None:
    norm = Normalizer((0.5, 0.4, 0.3), (0.6, 0.6, 0.6))
    cpu = _loader(n=300, bs=64, augment=True, normalizer=norm, seed=7)
    gpu = _loader(n=300, bs=64, augment=True, normalizer=norm, seed=7, device="cuda")
    for (xc, yc), (xg, yg) in zip(_batches(cpu, 3), _batches(gpu, 3), strict=True):
        assert xg.is_cuda and yg.is_cuda
        assert torch.equal(yc, yg.cpu()) and torch.allclose(xc, xg.cpu(), atol=1e-6, rtol=0)


def test_augment_pad_and_flip_reach_the_training_loader() -> None:
    from eqprop.train.builders import make_splits
    from eqprop.train.config import ConfigError, load_config

    data = load_dataset("digits")
    overrides = ["data.augment=true", "data.augment_pad=2", "data.augment_flip=false"]
    cfg = load_config("digits-quickstart", overrides)
    splits = make_splits(cfg, data, torch.device("cpu"), torch.float32)
    assert (splits.train.augment, splits.train.pad, splits.train.hflip) == (True, 2, False)
    assert not splits.test.augment  # evaluation is never augmented
    with pytest.raises(ConfigError, match=r"^data.augment_pad: -1 is not valid"):
        load_config("digits-quickstart", ["data.augment_pad=-1"])
