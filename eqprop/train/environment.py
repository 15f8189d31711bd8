"""Facts about the software and hardware a run executes on (``environment.json``)."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["environment_facts"]


def environment_facts(cwd: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Collect facts about the software and hardware a run executes on.

    Args:
        cwd: Directory whose git commit is reported (default: the current directory).

    Returns:
        A JSON-serialisable dict with keys ``python``, ``python_implementation``,
        ``platform``, ``machine``, ``torch``, ``numpy``, ``eqprop``, ``cuda_available``,
        ``cuda_version``, ``cuda_devices`` (list of device names), ``cpu_count``,
        ``torch_threads``, ``git_commit`` (``None`` outside a git checkout or without git) and
        ``timestamp`` (UTC, ISO 8601).
    """
    cuda_available = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "eqprop": _eqprop_version(),
        "cuda_available": cuda_available,
        "cuda_version": torch.version.cuda,
        "cuda_devices": (
            [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if cuda_available
            else []
        ),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": _git_commit(Path.cwd() if cwd is None else Path(cwd)),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _eqprop_version() -> str:
    try:
        return importlib.metadata.version("eqprop")
    except importlib.metadata.PackageNotFoundError:
        # Running from a source tree that was never pip-installed.
        return "unknown"


def _git_commit(cwd: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        # git missing, cwd gone, or hung: the commit is a nicety, never a reason to fail a run.
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None
