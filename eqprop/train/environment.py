"""Facts about the software and hardware a run executes on (``environment.json``).

``environment.json`` holds the facts of the run's first start (kept as they were: machine,
versions, time) and ``sessions``, one entry per start or resume with its own facts, so a run
resumed on another machine or with another eqprop records both.

eqprop's provenance is that of its own source, never of the current directory: its version
(from the installed package's metadata, the one place it is set: ``pyproject.toml``), and its
source commit when it runs from a git checkout of eqprop (with ``git_dirty`` when that
checkout has uncommitted changes) or was installed from a git URL.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["environment_facts", "read_json", "session_history", "source_commit"]

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # .../eqprop
#: The facts each session records (the first start's full facts are at the top level).
_SESSION_KEYS = (
    "timestamp", "host", "eqprop", "git_commit", "git_dirty", "python", "torch", "cuda_devices",
)  # fmt: skip


def environment_facts() -> dict[str, Any]:
    """Collect facts about the software and hardware a run executes on.

    Returns:
        A JSON-serialisable dict with keys ``python``, ``python_implementation``,
        ``platform``, ``machine``, ``host``, ``torch``, ``numpy``, ``eqprop`` (its version),
        ``git_commit`` and ``git_dirty``: eqprop's own source commit (see :func:`source_commit`;
        None when unknown), never that of the current directory;
        ``cuda_available``, ``cuda_version``, ``cuda_devices`` (list of device names),
        ``cpu_count``, ``torch_threads`` and ``timestamp`` (UTC, ISO 8601).
    """
    import eqprop

    cuda_available = torch.cuda.is_available()
    commit, dirty = source_commit()
    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "host": socket.gethostname(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "eqprop": eqprop.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "cuda_available": cuda_available,
        "cuda_version": torch.version.cuda,
        "cuda_devices": (
            [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if cuda_available
            else []
        ),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def session_history(previous: Any, facts: dict[str, Any], start: dict[str, Any]) -> dict[str, Any]:
    """The new ``environment.json``: the first start's facts, plus this session appended.

    Args:
        previous: the parsed old file (None or anything malformed: this is the first start).
        facts: :func:`environment_facts` of this process.
        start: what this session is (``command``, ``epoch`` and ``batch`` it starts from).
    """
    sessions = []
    base = facts
    if isinstance(previous, dict) and isinstance(previous.get("sessions"), list):
        base = {k: v for k, v in previous.items() if k != "sessions"}
        sessions = list(previous["sessions"])
    elif isinstance(previous, dict) and "eqprop" in previous:  # written before sessions existed
        base = previous
        sessions = [{"command": "train", "timestamp": previous.get("timestamp")}]
    this = {**start, **{k: facts[k] for k in _SESSION_KEYS if k in facts}}
    return {**base, "sessions": [*sessions, this]}


def read_json(path: Path) -> Any:
    """The parsed file, or None when it is missing or malformed."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@cache
def source_commit() -> tuple[str | None, bool | None]:
    """eqprop's own source commit and whether its checkout has uncommitted changes.

    From the git checkout holding this package (only when it is eqprop's own repository: the
    checkout's top level must be this package's parent), else from the ``direct_url.json`` of
    a ``pip install git+...``; ``(None, None)`` otherwise (a wheel or sdist install).
    """
    top = _git(_PACKAGE_DIR, "rev-parse", "--show-toplevel")
    if top is not None and Path(top).resolve() == _PACKAGE_DIR.parent:
        commit = _git(_PACKAGE_DIR, "rev-parse", "HEAD")
        status = _git(_PACKAGE_DIR, "status", "--porcelain", "--untracked-files=no", "--", ".")
        return commit, (None if status is None else bool(status))
    try:
        url = importlib.metadata.distribution("eqprop").read_text("direct_url.json")
        commit = json.loads(url or "{}").get("vcs_info", {}).get("commit_id")
    except (importlib.metadata.PackageNotFoundError, ValueError, AttributeError):
        commit = None
    return commit, None


def _git(cwd: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        # git missing or hung: the commit is a nicety, never a reason to fail a run.
        return None
    out = result.stdout.strip()
    return out if result.returncode == 0 else None
