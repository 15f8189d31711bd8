"""Fetching a dataset with torchvision (``--download``), with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from eqprop.train.readers import DataError

if TYPE_CHECKING:
    from eqprop.train.datasets import DatasetSpec

__all__ = ["download_with_torchvision"]


def download_with_torchvision(spec: DatasetSpec, path: Path) -> None:
    """Download both splits of ``spec`` into ``path`` with its torchvision class."""
    try:
        import torchvision.datasets as tvd

        cls = getattr(tvd, spec.torchvision_class or "")
    except Exception as err:  # not installed, or broken (a torch/torchvision mismatch)
        problem = "is not installed" if isinstance(err, ImportError) else "fails to import"
        first_line = (str(err).strip().splitlines() or [""])[0]
        raise DataError(
            f"{spec.name}: --download needs torchvision, which {problem} "
            f"({type(err).__name__}: {first_line}); pip install torchvision (matching torch), "
            f"or put the files under {path} yourself"
        ) from None
    try:
        for train in (True, False):
            cls(root=str(path), train=train, download=True)
    except Exception as err:  # network, disk and checksum failures all mean the same here
        raise DataError(
            f"{spec.name}: downloading with torchvision into {path} failed: "
            f"{type(err).__name__}: {err}"
        ) from err
