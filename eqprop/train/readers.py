"""Read dataset files into validated numpy arrays: idx, CIFAR pickle batches and ``.npz``.

Each reader takes the dataset's name (for messages), the files to read and the expected image
shape (``None`` when any shape is allowed), and returns a :class:`RawSplits` of uint8
(N, C, H, W) images and int64 labels. Every problem is a :class:`DataError` whose one-line
message names the file and what is wrong. Nothing here knows where files live or how a
:class:`~eqprop.train.datasets.Dataset` is built.
"""

from __future__ import annotations

import gzip
import math
import pickle
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "DataError",
    "ImageShape",
    "RawSplits",
    "Reader",
    "check_splits",
    "read_cifar",
    "read_idx",
    "read_imagenet32",
    "read_npz",
]

ImageShape = tuple[int, int, int]

_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


class DataError(Exception):
    """A dataset is missing, unreadable or malformed; the message says which file and why."""


class RawSplits(NamedTuple):
    """A dataset's train and test arrays as read from disk, before any cross-split checks.

    Attributes:
        x_train: uint8 images, (N_train, C, H, W).
        y_train: int64 labels, (N_train,).
        x_test: uint8 images, (N_test, C, H, W).
        y_test: int64 labels, (N_test,).
        sources: The files that held the train and test labels (for messages), or None.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    sources: tuple[Path, Path] | None = None


#: A reader: ``(dataset name, files, expected image shape or None) -> RawSplits``.
Reader = Callable[[str, Sequence[Path], ImageShape | None], RawSplits]


# --------------------------------------------------------------------------------------------
# idx (MNIST, Fashion-MNIST)
# --------------------------------------------------------------------------------------------


def read_idx(key: str, files: Sequence[Path], shape: ImageShape | None) -> RawSplits:
    """Read the four idx files (train images, train labels, test images, test labels).

    Files ending in ``.gz`` are decompressed.
    """
    arrays = []
    for img_path, lbl_path in ((files[0], files[1]), (files[2], files[3])):
        images = _parse_idx(img_path, _IDX_IMAGES_MAGIC, 3)
        labels = _parse_idx(lbl_path, _IDX_LABELS_MAGIC, 1)
        if len(images) != len(labels):
            raise DataError(
                f"{img_path} holds {len(images)} images but {lbl_path} holds {len(labels)} labels"
            )
        arrays += [
            _images(images, "images", img_path, key, shape),
            _labels(labels, "labels", lbl_path),
        ]
    x_train, y_train, x_test, y_test = arrays
    return RawSplits(x_train, y_train, x_test, y_test, sources=(files[1], files[3]))


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot read: {err}") from None


def _parse_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    data = _read_bytes(path)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated idx file: {len(data)} bytes, header needs {header}")
    got_magic = int.from_bytes(data[:4], "big")
    if got_magic != magic:
        kind = "images" if magic == _IDX_IMAGES_MAGIC else "labels"
        raise DataError(
            f"{path}: bad idx magic number {got_magic} (expected {magic} for uint8 {kind}); "
            "not an idx file of this kind, or corrupt"
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(dims)
    body = len(data) - header
    if body != expected:
        what = "truncated idx file" if body < expected else "idx file has trailing bytes"
        raise DataError(
            f"{path}: {what}: header declares shape {dims} = {expected} bytes of data "
            f"but the file holds {body}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


# --------------------------------------------------------------------------------------------
# CIFAR python-pickle batches
# --------------------------------------------------------------------------------------------


def read_cifar(
    key: str, files: Sequence[Path], shape: ImageShape | None, *, label_key: str = "labels"
) -> RawSplits:
    """Read CIFAR python batches: every file but the last is train, the last is test.

    ``label_key`` is ``"labels"`` for CIFAR-10 and ``"fine_labels"`` for CIFAR-100. The
    batches are Python pickles; they are read with an unpickler that admits only plain data
    and numpy arrays, so a crafted file is refused instead of running code.
    """
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    for path in files:
        d = _unpickle(path)
        data = np.asarray(_pickle_entry(d, "data", path))
        try:
            labels = np.asarray(_pickle_entry(d, label_key, path))
        except ValueError as err:
            raise DataError(f"{path}: {label_key} is not a label array: {err}") from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{path}: data has shape {data.shape} but expected (N, 3072)")
        if len(labels) != len(data):
            raise DataError(f"{path}: {len(data)} images but {len(labels)} {label_key}")
        # Each row is the R plane (1024 values, row-major), then G, then B.
        images = _images(data.reshape(-1, 3, 32, 32), "data", path, key, shape)
        parts.append((images, _labels(labels, label_key, path)))
    train, test = parts[:-1], parts[-1]
    return RawSplits(
        np.concatenate([p[0] for p in train]),
        np.concatenate([p[1] for p in train]),
        *test,
        sources=(files[0], files[-1]),
    )


def _unpickle(path: Path) -> dict[object, object]:
    try:
        with path.open("rb") as f:
            obj = _CifarUnpickler(f, encoding="bytes").load()
    except _ForbiddenGlobal as err:
        raise DataError(
            f"{path}: not a CIFAR batch: it asks to load {err}, which CIFAR batches never hold "
            "(they are dicts of lists, bytes, strings, numbers and numpy arrays); refused, as "
            "loading it could run code"
        ) from None
    except Exception as err:  # unpickling can fail with nearly any exception type
        first_line = (str(err).strip().splitlines() or [""])[0]
        raise DataError(
            f"{path}: not a readable CIFAR pickle: {type(err).__name__}: {first_line}"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


class _ForbiddenGlobal(Exception):
    """A pickle asked for a global outside :data:`_CIFAR_GLOBALS` (its dotted name)."""


def _cifar_globals() -> dict[tuple[str, str], object]:
    """The only callables a CIFAR batch's pickle needs: numpy's array and scalar rebuilders
    (under numpy 1's and numpy 2's module names) and the codec Python 3 uses for bytes."""
    import codecs

    array = np.zeros(1, np.uint8)
    found: dict[tuple[str, str], object] = {("_codecs", "encode"): codecs.encode}
    for module in ("numpy.core", "numpy._core"):
        found[(f"{module}.multiarray", "_reconstruct")] = array.__reduce__()[0]
        found[(f"{module}.multiarray", "scalar")] = np.int64(0).__reduce__()[0]
        found[(f"{module}.numeric", "_frombuffer")] = array.__reduce_ex__(5)[0]
    found[("numpy", "ndarray")] = np.ndarray
    found[("numpy", "dtype")] = np.dtype
    return found


_CIFAR_GLOBALS = _cifar_globals()


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays only: any other global (a function to call, a
    class to build) is refused, so a crafted file cannot run code."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _CIFAR_GLOBALS[(module, name)]
        except KeyError:
            raise _ForbiddenGlobal(f"{module}.{name}") from None


def _pickle_entry(d: dict[object, object], key: str, path: Path) -> object:
    for k in (key.encode(), key):  # batches pickled by Python 2 have bytes keys
        if k in d:
            return d[k]
    raise DataError(f"{path}: missing key {key!r} (has {sorted(map(repr, d))})")


# --------------------------------------------------------------------------------------------
# .npz
# --------------------------------------------------------------------------------------------


def read_npz(key: str, files: Sequence[Path], shape: ImageShape | None) -> RawSplits:
    """Read ``x_train, y_train, x_test, y_test`` from the one ``.npz`` file in ``files``.

    Images may be (N, H, W), (N, H, W, 3) or (N, C, H, W).
    """
    (path,) = files
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _NPZ_KEYS if k not in z.files]
            if missing:
                raise DataError(f"{path}: missing arrays {missing} (has {z.files})")
            for k in _NPZ_KEYS:
                arrays[k] = z[k]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise DataError(f"{path}: not a readable .npz file: {type(err).__name__}: {err}") from None
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        arrays[f"x_{split}"] = _images(x, f"x_{split}", path, key, shape)
        arrays[f"y_{split}"] = _labels(y, f"y_{split}", path)
        if len(arrays[f"x_{split}"]) != len(arrays[f"y_{split}"]):
            raise DataError(
                f"{path}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels"
            )
    x_train, y_train, x_test, y_test = (arrays[k] for k in _NPZ_KEYS)
    return RawSplits(x_train, y_train, x_test, y_test, sources=(path, path))


# --------------------------------------------------------------------------------------------
# Downsampled ImageNet (32×32): the official .npz batch files
# --------------------------------------------------------------------------------------------


def read_imagenet32(key: str, files: Sequence[Path], shape: ImageShape | None) -> RawSplits:
    """Read downsampled-ImageNet ``.npz`` batches: every file but the last is train, the last
    (``val_data.npz``) is the held-out split, used as the test split.

    Each file holds ``data``, (N, 3·S·S) uint8 rows laid out as in CIFAR (the R plane, then G,
    then B, each row-major), and ``labels``, 1-based class numbers (1..1000), returned 0-based.
    Other arrays in the file (the train batches' ``mean``) are ignored.
    """
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    for path in files:
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in ("data", "labels") if k not in z.files]
                if missing:
                    raise DataError(f"{path}: missing arrays {missing} (has {z.files})")
                data, labels = z["data"], np.asarray(z["labels"])
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            raise DataError(
                f"{path}: not a readable .npz file: {type(err).__name__}: {err}"
            ) from None
        side = math.isqrt(data.shape[1] // 3) if data.ndim == 2 else 0
        if data.ndim != 2 or side < 1 or data.shape[1] != 3 * side * side:
            raise DataError(f"{path}: data has shape {data.shape} but expected (N, 3*S*S)")
        if len(labels) != len(data):
            raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
        if labels.size and np.issubdtype(labels.dtype, np.integer) and labels.min() < 1:
            raise DataError(
                f"{path}: labels hold {int(labels.min())}, but the downsampled-ImageNet files "
                "number classes from 1 (1..1000)"
            )
        images = _images(data.reshape(-1, 3, side, side), "data", path, key, shape)
        parts.append((images, _labels(labels, "labels", path) - 1))
    train, test = parts[:-1], parts[-1]
    return RawSplits(
        np.concatenate([p[0] for p in train]),
        np.concatenate([p[1] for p in train]),
        *test,
        sources=(files[0], files[-1]),
    )


# --------------------------------------------------------------------------------------------
# Array validation
# --------------------------------------------------------------------------------------------


def _images(
    arr: np.ndarray, what: str, path: Path, key: str, expected: ImageShape | None
) -> np.ndarray:
    """Validate pixel data and return it as contiguous uint8 (N, C, H, W)."""
    shape = arr.shape
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4:
        # Channels-last when the last axis looks like channels and the second does not.
        if shape[3] in (1, 3) and shape[1] not in (1, 3):
            arr = arr.transpose(0, 3, 1, 2)
    else:
        raise DataError(
            f"{path}: {what} has shape {shape} but expected (N, H, W), (N, H, W, 3) or (N, C, H, W)"
        )
    if arr.dtype != np.uint8:
        ok = np.issubdtype(arr.dtype, np.integer) and (
            arr.size == 0 or (arr.min() >= 0 and arr.max() <= 255)
        )
        if not ok:
            raise DataError(
                f"{path}: {what} has dtype {arr.dtype} but expected uint8 pixel values 0..255"
            )
        arr = arr.astype(np.uint8)
    if expected is not None and arr.shape[1:] != expected:
        raise DataError(
            f"{path}: {what} has shape {shape} but {key} images are (C, H, W) = {expected}"
        )
    return np.ascontiguousarray(arr)


def _labels(arr: np.ndarray, what: str, path: Path) -> np.ndarray:
    """Validate labels and return them as int64 (N,); (N, 1) is accepted, as Keras saves it."""
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise DataError(
            f"{path}: {what} has shape {arr.shape} and dtype {arr.dtype}; expected (N,) integers"
        )
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise DataError(f"{path}: {what} holds a negative label ({arr.min()})")
    return arr


def check_splits(key: str, raw: RawSplits, num_classes: int | None) -> int:
    """Check that train and test images agree, train is non-empty and labels are in range.

    Returns:
        ``num_classes``, or the largest label + 1 when it is None.
    """
    x_train, y_train, x_test, y_test, sources = raw
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{key}: train images are {x_train.shape[1:]} but test images are {x_test.shape[1:]}"
        )
    if len(x_train) == 0:
        raise DataError(f"{key}: the training split is empty ({sources[0] if sources else ''})")
    if num_classes is None:
        num_classes = int(max(y_train.max(), y_test.max(initial=0))) + 1
    for y, src in zip((y_train, y_test), sources or (None, None), strict=True):
        if y.size and y.max() >= num_classes:
            raise DataError(
                f"{src or key}: label {int(y.max())} out of range for {key} "
                f"({num_classes} classes, labels 0..{num_classes - 1})"
            )
    return num_classes
