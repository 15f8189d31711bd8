"""Arithmetic of the relaxation: true float32, TF32 tensor cores, or bfloat16 autocast.

On CUDA, PyTorch runs "float32" convolutions in TF32 by default (``cudnn.allow_tf32`` is on),
with about 10 bits of mantissa. Here ``float32`` means true float32 (TF32 off) and ``tf32``
means TF32 for both matmuls and convolutions; states always stay in the network's dtype.
:func:`precision_context` applies that around each relaxation step; :func:`set_precision`
applies it process-wide (the trainer calls it, so the EP update and evaluation agree).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from eqprop.core.validation import check_choice

__all__ = ["PRECISIONS", "precision_context", "set_precision"]

#: Arithmetic of the relaxation by name. States always stay in the network's dtype.
PRECISIONS: dict[str, str] = {
    "float32": "the network's dtype throughout (on CUDA: TF32 off, true float32)",
    "tf32": "TF32 tensor-core matmuls and convolutions on CUDA (no effect on CPU)",
    "bf16": "convolutions and matmuls autocast to bfloat16; states accumulated in float32",
}


def _tf32_flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def _set_tf32(matmul: bool, cudnn: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = cudnn


@contextlib.contextmanager
def precision_context(precision: str, device: torch.device) -> Iterator[None]:
    """Context in which the relaxation runs at ``precision`` (see :data:`PRECISIONS`)."""
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    elif device.type == "cuda":
        saved = _tf32_flags()
        tf32 = precision == "tf32"
        _set_tf32(tf32, tf32)
        try:
            yield
        finally:
            _set_tf32(*saved)
    else:
        yield


def set_precision(precision: str, device: torch.device) -> None:
    """Process-wide: TF32 on for ``tf32``, off otherwise; on CUDA also ``cudnn.benchmark``
    (the relaxation repeats the same shapes, so autotuning pays for itself at once)."""
    check_choice(precision, PRECISIONS, "precision")
    tf32 = precision == "tf32"
    _set_tf32(tf32, tf32)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
