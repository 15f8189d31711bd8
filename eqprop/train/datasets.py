"""The dataset registry, and :func:`load_dataset`, which finds a dataset's files and loads them.

:data:`DATASETS` holds one :class:`DatasetSpec` per dataset (shape, classes, file layout,
normalisation statistics, download, default validation size, reader). :func:`load_dataset`
locates a dataset's files (downloading them on request), reads them with the spec's reader
(:mod:`eqprop.train.readers`) and returns a :class:`Dataset` of uint8 (N, C, H, W) images and
int64 labels. The data directory is ``root``, else ``$EQPROP_DATA``, else ``./data``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from eqprop.train.download import download_with_torchvision
from eqprop.train.readers import (
    DataError,
    ImageShape,
    RawSplits,
    Reader,
    check_splits,
    read_cifar,
    read_idx,
    read_imagenet32,
    read_npz,
)

__all__ = [
    "DATASETS",
    "DATA_ENV_VAR",
    "DIGITS_TEST_SIZE",
    "DIGITS_TRAIN_SIZE",
    "NORMALIZATIONS",
    "WIDE_STD_FACTOR",
    "DataError",
    "Dataset",
    "DatasetSpec",
    "Stats",
    "load_dataset",
    "resolve_data_dir",
]

DATA_ENV_VAR = "EQPROP_DATA"

#: Normalisation modes, name -> description.
NORMALIZATIONS: dict[str, str] = {
    "none": "x / 255",
    "standard": "per-channel mean/std (the usual constants, else from the training split)",
    "paper": "CIFAR: the CIFAR-10 mean and three times its std (spec §6); else as standard",
    "wide": "the standard mean and 1.5 times the standard std (the holomorphic EP authors')",
}

#: The std factor of the ``wide`` normalisation (holomorphic-ep.md §7).
WIDE_STD_FACTOR = 1.5

DIGITS_TRAIN_SIZE = 1497
DIGITS_TEST_SIZE = 300


class Stats(NamedTuple):
    """Per-channel normalisation statistics on the 0..1 pixel scale."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the library knows about one dataset.

    Attributes:
        name: Registry key.
        image_shape: (C, H, W) of every image; None (``npz``): taken from the file.
        num_classes: Number of classes; None (``npz``): the largest label + 1.
        source: ``"builtin"`` (the reader needs no files), ``"npz"`` (the data location is
            the ``.npz`` file) or ``"files"`` (``files`` in one of ``search_dirs``).
        reader: Parses the located files (see :data:`~eqprop.train.readers.Reader`).
        search_dirs: Directories searched in order, relative to the data directory (``""``
            is the data directory itself); the first holding all of ``files`` wins.
        files: The files of one complete set, in ``reader``'s order; ``gz``: may be ``.gz``.
        standard, paper: Normalisation statistics; None means computed from the training
            split (``standard``) or the same as ``standard`` (``paper``).
        torchvision_class: The ``torchvision.datasets`` class that downloads it.
        default_val_size: Validation-split size when none is configured; None: a tenth of
            the training set.
    """

    name: str
    image_shape: ImageShape | None
    num_classes: int | None
    source: Literal["builtin", "npz", "files"]
    reader: Reader = field(repr=False)
    search_dirs: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    gz: bool = False
    standard: Stats | None = None
    paper: Stats | None = None
    torchvision_class: str | None = None
    default_val_size: int | None = None

    @property
    def image_side(self) -> int | None:
        """Image height (``image_shape[1]``; the built-in images are square), or None."""
        return None if self.image_shape is None else self.image_shape[1]

    def resolved_val_size(self, n_train: int) -> int:
        """Default validation-split size for a training set of ``n_train`` examples."""
        return n_train // 10 if self.default_val_size is None else self.default_val_size

    def stats(self, mode: str) -> Stats | None:
        """Fixed statistics for normalisation ``mode``, or None if they must be computed."""
        if mode == "paper" and self.paper is not None:
            return self.paper
        return self.standard if mode in ("standard", "paper") else None


def _read_digits(key: str, files: Sequence[Path], shape: ImageShape | None) -> RawSplits:
    """The 8×8 digits shipped with eqprop (``eqprop/train/digits.npz``, no scikit-learn needed).

    The file holds scikit-learn's bundled copy as it loads it (``load_digits``), pixel values
    0..16 rescaled to 0..255 with ``rint``, split with
    ``numpy.random.RandomState(0).permutation(1797)``: the first 1,497 indices are train.
    """
    return read_npz(key, (Path(__file__).with_name("digits.npz"),), shape)


_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_MNIST = Stats((0.1307,), (0.3081,))
_FASHION_MNIST = Stats((0.2860,), (0.3530,))
# The widely copied CIFAR-10 "std" (it is really a per-image std average); the paper uses it.
_CIFAR10 = Stats((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
_CIFAR100 = Stats((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
# The paper's CIFAR recipe divides by three times the usual std, keeping inputs in a narrow
# range around 0; it is applied to CIFAR-100 too.
_PAPER_CIFAR = Stats(_CIFAR10.mean, tuple(3.0 * s for s in _CIFAR10.std))

#: The datasets :func:`load_dataset` knows, by name.
# fmt: off
DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(
        "digits", image_shape=(1, 8, 8), num_classes=10, default_val_size=150,
        source="builtin", reader=_read_digits,
    ),
    "mnist": DatasetSpec(
        "mnist", image_shape=(1, 28, 28), num_classes=10, default_val_size=5000,
        source="files", reader=read_idx, files=_IDX_FILES, gz=True,
        search_dirs=("MNIST/raw", "mnist", ""), torchvision_class="MNIST", standard=_MNIST,
    ),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist", image_shape=(1, 28, 28), num_classes=10, default_val_size=5000,
        source="files", reader=read_idx, files=_IDX_FILES, gz=True,
        search_dirs=("FashionMNIST/raw", "fashion_mnist", ""),
        torchvision_class="FashionMNIST", standard=_FASHION_MNIST,
    ),
    "cifar10": DatasetSpec(
        "cifar10", image_shape=(3, 32, 32), num_classes=10, default_val_size=5000,
        source="files", reader=read_cifar,
        files=(*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"),
        search_dirs=("cifar-10-batches-py", ""), torchvision_class="CIFAR10",
        standard=_CIFAR10, paper=_PAPER_CIFAR,
    ),
    "cifar100": DatasetSpec(
        "cifar100", image_shape=(3, 32, 32), num_classes=100, default_val_size=5000,
        source="files", reader=functools.partial(read_cifar, label_key="fine_labels"),
        # Bare "train"/"test" names are too generic to accept straight from the data dir.
        files=("train", "test"), search_dirs=("cifar-100-python",), torchvision_class="CIFAR100",
        standard=_CIFAR100, paper=_PAPER_CIFAR,
    ),
    "npz": DatasetSpec("npz", image_shape=None, num_classes=None, source="npz", reader=read_npz),
}
# fmt: on

# Downsampled ImageNet 32×32 (Chrabaszcz et al. 2017), the official .npz batch files as their
# two archives unpack: Imagenet32_train_npz/train_data_batch_{1..10}.npz and
# Imagenet32_val_npz/val_data.npz. The validation set serves as the test split; 10,000 training
# images are held out for model selection. No download: the files need a registration.
_IMAGENET = Stats((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DATASETS["imagenet32"] = DatasetSpec(
    "imagenet32", image_shape=(3, 32, 32), num_classes=1000, default_val_size=10000,
    source="files", reader=read_imagenet32,
    files=(
        *(f"Imagenet32_train_npz/train_data_batch_{i}.npz" for i in range(1, 11)),
        "Imagenet32_val_npz/val_data.npz",
    ),
    search_dirs=("imagenet32", "Imagenet32", ""), standard=_IMAGENET,
)  # fmt: skip

# The statistics under their historical names, kept importable for existing callers.
MNIST_MEAN, MNIST_STD = _MNIST
FASHION_MNIST_MEAN, FASHION_MNIST_STD = _FASHION_MNIST
CIFAR10_MEAN, CIFAR10_STD = _CIFAR10
CIFAR100_MEAN, CIFAR100_STD = _CIFAR100
PAPER_CIFAR_MEAN, PAPER_CIFAR_STD = _PAPER_CIFAR
NORMALIZE_MODES = tuple(NORMALIZATIONS)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test image-classification dataset held as CPU tensors.

    Attributes:
        x_train: uint8 images, (N_train, C, H, W).
        y_train: int64 labels in [0, num_classes), (N_train,).
        x_test: uint8 images, (N_test, C, H, W).
        y_test: int64 labels, (N_test,).
        num_classes: Number of classes.
        name: Dataset name (a key of :data:`DATASETS`).
        input_shape: (C, H, W) of every image.
    """

    x_train: Tensor = field(repr=False)
    y_train: Tensor = field(repr=False)
    x_test: Tensor = field(repr=False)
    y_test: Tensor = field(repr=False)
    num_classes: int
    name: str
    input_shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        for split, x, y in (
            ("train", self.x_train, self.y_train),
            ("test", self.x_test, self.y_test),
        ):
            if x.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
                raise ValueError(
                    f"x_{split} must be uint8 shaped (N, *{self.input_shape}), "
                    f"got {x.dtype} {tuple(x.shape)}"
                )
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise ValueError(
                    f"y_{split} must be int64 shaped ({x.shape[0]},), "
                    f"got {y.dtype} {tuple(y.shape)}"
                )

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={self.x_train.shape[0]}, "
            f"test={self.x_test.shape[0]}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes})"
        )


def resolve_data_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """Return the data location: ``root``, else ``$EQPROP_DATA``, else ``./data``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(DATA_ENV_VAR)
    return Path(env).expanduser() if env else Path("data")


def load_dataset(
    name: str, root: str | os.PathLike[str] | None = None, *, download: bool = False
) -> Dataset:
    """Load a dataset as uint8 (N, C, H, W) images and int64 labels.

    Sources (``root`` as resolved by :func:`resolve_data_dir`):

    - ``digits``: the 8×8 digits shipped with eqprop (scikit-learn's copy), pixel values
      0..16 rescaled to 0..255. The split is fixed:
      ``numpy.random.RandomState(0).permutation(1797)``, whose first 1,497 indices are train
      and last 300 are test. ``root`` is ignored.
    - ``npz``: ``root`` is an ``.npz`` file holding ``x_train, y_train, x_test, y_test``
      (uint8 images as (N, H, W), (N, H, W, 3) or (N, C, H, W)); num_classes is the largest
      label + 1.
    - the others: the spec's ``files`` in the first of its ``search_dirs`` under ``root``
      holding them all (torchvision's layouts, e.g. ``root/MNIST/raw``; idx files may be
      ``.gz``), else ``root/<name>.npz``, or ``root`` itself when it is an ``.npz`` file. The
      CIFAR batches are Python pickles, so only load files you trust.

    Args:
        name: A key of :data:`DATASETS` (case-insensitive; ``-`` works for ``_``).
        root: Data directory (or ``.npz`` file); see :func:`resolve_data_dir`.
        download: If the files are missing, fetch them with torchvision into ``root``
            (needs torchvision and network access). Ignored for ``digits`` and ``npz``.

    Returns:
        The loaded :class:`Dataset` (CPU tensors).

    Raises:
        ValueError: Unknown ``name``.
        DataError: Files missing, unreadable or malformed, or the download failed.
    """
    spec = DATASETS.get(name.lower().replace("-", "_"))
    if spec is None:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if spec.source == "builtin":
        return _read(spec, ())
    path = resolve_data_dir(root)
    if spec.source == "npz" and not path.is_file():
        raise DataError(
            f"npz: {path} {_source_note(root)} is not a file; pass the path of an .npz "
            "holding x_train, y_train, x_test, y_test (via --data-dir / EQPROP_DATA)"
        )
    if spec.source == "npz" or (path.is_file() and path.suffix == ".npz"):
        return _read(spec, (path,), read_npz)
    found = _load_from_dir(spec, path, root)
    if isinstance(found, str) and download:
        download_with_torchvision(spec, path)
        found = _load_from_dir(spec, path, root)
        if isinstance(found, str):
            found = f"torchvision's download into {path} finished, but the files are still " + (
                f"missing: {found}"
            )
    if isinstance(found, str):
        raise DataError(found)
    return found


def _source_note(root: str | os.PathLike[str] | None) -> str:
    if root is not None:
        return "(from the root argument)"
    if os.environ.get(DATA_ENV_VAR):
        return f"(from ${DATA_ENV_VAR})"
    return f"(default; neither a root argument nor ${DATA_ENV_VAR} was given)"


def _load_from_dir(
    spec: DatasetSpec, path: Path, root: str | os.PathLike[str] | None
) -> Dataset | str:
    """Load ``spec``'s files from the first search dir holding them all, else its npz.

    Returns:
        The dataset, or, if no complete set is there, a message saying what was looked for.
    """
    dirs = [path / d for d in spec.search_dirs]
    found, partial = _find_files(dirs, spec.files, gz=spec.gz)
    if found is not None:
        return _read(spec, found)
    npz = path / f"{spec.name}.npz"
    if npz.is_file():
        return _read(spec, (npz,), read_npz)
    looked_for = ", ".join(f"{f}[.gz]" if spec.gz else f for f in spec.files)
    msg = (
        f"{spec.name}: data files not found under data dir {path} {_source_note(root)}"
        + ("" if path.is_dir() else ", which does not exist")
        + f". Looked for {looked_for} in {', '.join(str(d) for d in dirs)}; and for {npz}."
    )
    if partial:
        msg += f" Found only part of a set: {', '.join(partial)}."
    return msg + (
        f" Point --data-dir / {DATA_ENV_VAR} at a folder with these files (torchvision's "
        f"layout works, as does {npz.name} with x_train, y_train, x_test, y_test), "
        "or pass --download (needs torchvision and network access)."
    )


def _find_files(
    dirs: Sequence[Path], names: Sequence[str], *, gz: bool
) -> tuple[list[Path] | None, list[str]]:
    """First directory holding every file (plain preferred over .gz), plus any partial finds."""
    partial: list[str] = []
    for d in dirs:
        if not d.is_dir():
            continue
        hits: list[Path] = []
        for n in names:
            for cand in (d / n, d / f"{n}.gz") if gz else (d / n,):
                if cand.is_file():
                    hits.append(cand)
                    break
        if len(hits) == len(names):
            return hits, []
        partial.extend(str(h) for h in hits)
    return None, partial


def _read(spec: DatasetSpec, files: Sequence[Path], reader: Reader | None = None) -> Dataset:
    """Read ``files`` with ``reader`` (default: the spec's) into a checked :class:`Dataset`."""
    raw = (reader or spec.reader)(spec.name, files, spec.image_shape)
    num_classes = check_splits(spec.name, raw, spec.num_classes)

    def tensor(a: np.ndarray) -> Tensor:
        # Copies only when needed: idx data parsed from bytes is a read-only view.
        return torch.from_numpy(np.require(a, requirements=("C", "W")))

    c, h, w = raw.x_train.shape[1:]
    return Dataset(
        x_train=tensor(raw.x_train),
        y_train=tensor(raw.y_train),
        x_test=tensor(raw.x_test),
        y_test=tensor(raw.y_test),
        num_classes=num_classes,
        name=spec.name,
        input_shape=(int(c), int(h), int(w)),
    )
