"""Atomic, versioned training checkpoints.

A checkpoint is a single ``torch.save``'d dict. :func:`save_checkpoint` writes it to a temporary
file next to the target, fsyncs it and ``os.replace``'s it into place, so a process killed at any
moment leaves either the previous complete checkpoint or the new one, never a torn file.
:func:`load_checkpoint` reads it back with ``torch.load(weights_only=True)``: no arbitrary code
runs on load, which is why payloads must hold only tensors, dicts, lists, tuples, ints, floats,
strings, bools and ``None`` (torch RNG states are ByteTensors, so they qualify; numpy and python
RNG states are converted by :func:`rng_state`).

Keys stored by the trainer (the convention every writer and reader of checkpoints follows):

- ``version`` (int): checkpoint format version, :data:`CHECKPOINT_VERSION`; set by
  :func:`save_checkpoint`, never by the caller.
- ``epoch`` (int): number of fully completed epochs.
- ``batch`` (int): batches completed within the current (incomplete) epoch; 0 at epoch
  boundaries, so ``(epoch, batch) == (3, 0)`` means "resume at the start of epoch 4".
- ``model`` (dict): the model's ``state_dict()``.
- ``optimizer`` (dict): the optimizer's ``state_dict()``.
- ``scheduler`` (dict | None): the LR scheduler's ``state_dict()``, ``None`` without one.
- ``rng`` (dict): generator states from :func:`rng_state`.
- ``best_val_accuracy`` (float | None): best validation accuracy so far, ``None`` before the
  first validation.
- ``best_epoch`` (int | None): epoch at which ``best_val_accuracy`` was reached.
- ``config`` (dict): the run configuration as a plain (YAML/JSON-compatible) dict.
- ``metrics_history`` (list[dict]): one record per completed epoch, as logged by
  :class:`eqprop.train.runlog.RunLogger`.
- ``partial`` (dict): the current epoch's running statistics (errors, loss, relaxation steps,
  ``train_seconds`` and ``seconds`` so far), so that a resumed epoch logs what an
  uninterrupted one would.
- ``wall_seconds`` (float): wall time of the run up to this save, over every session.
- ``eqprop_version`` (str): version of the package that wrote the checkpoint.

Only :data:`REQUIRED_KEYS` are checked on load; the rest are optional so that partial payloads
(tests, tools) remain loadable.
"""

from __future__ import annotations

import os
import random
import re
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_VERSION",
    "REQUIRED_KEYS",
    "CheckpointError",
    "atomic_write",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "with_path",
]

CHECKPOINT_VERSION = 1
"""Current checkpoint format version; bump when the layout changes incompatibly."""

REQUIRED_KEYS: tuple[str, ...] = ("version", "epoch", "batch", "model")
"""Keys without which a checkpoint cannot be resumed from."""


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable, too new or incomplete."""


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """Atomically write ``{"version": CHECKPOINT_VERSION, **payload}`` to ``path``.

    Args:
        path: Destination file; its parent directory is created if needed.
        payload: Checkpoint contents (see the module docstring). A ``version`` key in it is
            overridden, so re-saving a loaded checkpoint stamps the current version.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"version": CHECKPOINT_VERSION}
    data.update((k, v) for k, v in payload.items() if k != "version")
    atomic_write(path, lambda f: torch.save(data, f))


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write ``path`` through ``write(file)`` into a temp file, fsync, then ``os.replace``.

    Readers (and a process killed at any moment) see the old file or the new one, never a
    partial one. Any failure removes the temp file and leaves the old file in place.

    Raises:
        OSError: the write failed (full disk, read-only, ...); its ``filename`` is ``path``,
            even when a library (``torch.save``) hid the original error behind its own.
    """
    # Same directory as the target so os.replace is a rename within one filesystem (atomic);
    # the unique suffix keeps concurrent writers (and leftovers of killed ones) from colliding.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as raw:
            f = _ErrorKeepingFile(raw)
            try:
                write(cast(IO[bytes], f))
            except Exception as exc:
                if f.error is None or f.error is exc:
                    raise
                raise f.error from exc  # torch.save reports ENOSPC as "unexpected pos"
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise with_path(err, path) from err
    except BaseException:
        # BaseException too: a KeyboardInterrupt mid-write must not leave the temp file behind.
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def with_path(err: OSError, path: str | os.PathLike[str]) -> OSError:
    """The same error, naming ``path`` (the file the user knows, not a temp file)."""
    return OSError(err.errno, err.strerror or str(err), os.fspath(path))


class _ErrorKeepingFile:
    """A file wrapper that remembers the first ``OSError`` of a write, for callers whose
    libraries turn it into something less telling."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self._raw.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def _fsync_dir(directory: Path) -> None:
    """Persist a rename by fsyncing its directory (POSIX only; best effort)."""
    if os.name == "nt":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        # Some filesystems refuse fsync on directories; the file itself is already durable.
        pass
    finally:
        os.close(fd)


def load_checkpoint(
    path: str | os.PathLike[str],
    map_location: str | torch.device | None = "cpu",
    *,
    required_keys: Iterable[str] = REQUIRED_KEYS,
) -> dict[str, Any]:
    """Load and validate a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: Checkpoint file.
        map_location: Passed to ``torch.load``; tensors land on this device.
        required_keys: Keys that must be present (default :data:`REQUIRED_KEYS`).

    Returns:
        The checkpoint dict, including ``version``.

    Raises:
        CheckpointError: If the file is missing, not a valid eqprop checkpoint, written by a
            newer format version, or lacks required keys.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path} is not a valid eqprop checkpoint ({_load_failure(exc)})"
        ) from None
    if not isinstance(data, dict) or "version" not in data:
        raise CheckpointError(f"{path} is not a valid eqprop checkpoint (no version field)")
    version = data["version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(
            f"{path} is not a valid eqprop checkpoint (bad version field {version!r})"
        )
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {version}, newer than the supported version "
            f"{CHECKPOINT_VERSION}; upgrade eqprop to load it"
        )
    missing = [k for k in required_keys if k not in data]
    if missing:
        raise CheckpointError(f"{path} is missing required checkpoint keys: {', '.join(missing)}")
    return data


def _load_failure(exc: Exception) -> str:
    """Why ``torch.load`` failed, on one line, without its advice to load unsafely."""
    text = str(exc)
    forbidden = re.search(r"(?:Unsupported global: |unsupported )GLOBAL ([\w.]+)", text)
    if forbidden:
        return (
            f"it holds {forbidden.group(1)}, which a checkpoint never does; refused, as loading "
            "it could run code"
        )
    if "Weights only load failed" in text:  # the reason follows torch's advice, if given
        reason = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        text = f"{reason.group(1).strip()}" if reason else "not a checkpoint of tensors"
    # torch raises many types here (RuntimeError, UnpicklingError, EOFError, ...), often with
    # multi-line messages; keep the first line of the cause.
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    return f"unreadable: {type(exc).__name__}" + (f": {first_line}" if first_line else "")


def rng_state() -> dict[str, Any]:
    """Capture every global random generator the training loop may draw from.

    Returns:
        ``{"torch": ByteTensor, "cuda": [ByteTensor per device], "python": dict,
        "numpy": dict}``, loadable with ``weights_only=True``. ``cuda`` is empty when CUDA is
        unavailable.
    """
    py_version, py_internal, py_gauss = random.getstate()
    np_state = np.random.get_state(legacy=True)
    if not isinstance(np_state, tuple):  # pragma: no cover - only for non-MT19937 globals
        raise TypeError("numpy's global generator is not MT19937; cannot capture its state")
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np_state
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # Tuples become lists and the uint32 key array an int64 tensor: both are allowed by
        # the weights_only unpickler, unlike numpy arrays.
        "python": {"version": py_version, "internal": list(py_internal), "gauss_next": py_gauss},
        "numpy": {
            "bit_generator": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generator states captured by :func:`rng_state`.

    Missing entries are left untouched. CUDA states are restored for as many devices as both
    the checkpoint and this machine have, so a GPU run can be resumed on CPU (losing only CUDA
    reproducibility).

    Args:
        state: A dict from :func:`rng_state`, possibly after a save/load round trip.
    """
    if "torch" in state:
        torch.set_rng_state(_as_byte_tensor(state["torch"]))
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        for device, s in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(_as_byte_tensor(s), device)
    if "python" in state:
        py = state["python"]
        random.setstate(
            (int(py["version"]), tuple(int(x) for x in py["internal"]), py["gauss_next"])
        )
    if "numpy" in state:
        nps = state["numpy"]
        keys = torch.as_tensor(nps["keys"]).cpu().numpy().astype(np.uint32)
        np.random.set_state(
            (
                nps["bit_generator"],
                keys,
                int(nps["pos"]),
                int(nps["has_gauss"]),
                float(nps["cached_gaussian"]),
            )
        )


def _as_byte_tensor(t: torch.Tensor) -> torch.Tensor:
    """RNG setters need a CPU uint8 tensor, whatever ``map_location`` did to it."""
    return t.detach().to(device="cpu", dtype=torch.uint8)
