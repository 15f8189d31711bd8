"""Run directories: checked before any data loads, owned by one process, cleaned of stale files.

:meth:`RunDirectory.claim` is the only way a run starts writing into a directory:

- the path must be a directory or creatable as one (not a file, not under a file, not on a
  read-only or pseudo file system); every problem is one :class:`RunDirError` line naming the
  path;
- a new run refuses a directory that already holds a checkpoint (that is what ``resume`` is
  for) and a non-empty directory that is not an eqprop run, so a user's own files are never
  overwritten; a run directory whose run stopped before its first checkpoint is started over;
- the directory is locked (:mod:`eqprop.train.lock`) so a second writer stops at once, naming
  the owner;
- temporary files left by a process killed mid-write (``.NAME.PID.HEX.tmp``) are deleted.

What a run directory holds::

    .eqprop.lock        held by the process writing the run (see eqprop.train.lock)
    config.yaml         the resolved configuration
    environment.json    versions, machine, eqprop's source commit; one entry per (re)start
    model.json          the network's layers
    metrics.jsonl/.csv  one record per epoch (errors, losses, learning rates, seconds, steps)
    check_at_start.json with ``log.check_every``: its EP-versus-BPTT check on the initial weights
    tensorboard/        event files
    curves.png          learning curves
    checkpoints/        last.pt (every ``train.save_every`` epochs and on a stop), best.pt
    summary.json        final figures (accuracies as fractions, epochs, seconds, warnings)
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from eqprop.train.lock import LOCK_FILE, RunLock, RunLockedError

__all__ = ["RunDirError", "RunDirectory", "is_eqprop_run", "os_error_message"]

#: Written by :func:`eqprop.train.checkpoint.atomic_write` next to its target.
_TEMP_FILE = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp$")
#: What a run writes besides metrics and config; removed when a run is started over.
_STALE_OUTPUTS = ("summary.json", "model.json", "curves.png", "checkpoints/best.pt")


class RunDirError(Exception):
    """A run directory that cannot be used; the one-line message names it and why."""


def os_error_message(err: OSError, path: str | os.PathLike[str] | None = None) -> str:
    """``PATH: <reason> [Errno N]`` for an ``OSError``, on one line."""
    where = path if path is not None else (err.filename or "?")
    reason = err.strerror or str(err) or type(err).__name__
    code = f" [Errno {err.errno}]" if err.errno else ""
    return f"{where}: {reason}{code}"


def is_eqprop_run(path: Path) -> bool:
    """Whether ``path`` was written by eqprop (its lock file, or an older run's environment)."""
    if (path / LOCK_FILE).is_file():
        return True
    try:
        facts = json.loads((path / "environment.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(facts, dict) and "eqprop" in facts and "torch" in facts


class RunDirectory:
    """A run directory claimed (locked) by this process.

    Attributes:
        path: the directory.
        removed: stale temporary files deleted when it was claimed.
        restarted: a new run that replaces one stopped before its first checkpoint.
        created: the topmost directory :meth:`claim` created (the run directory or one of its
            parents), None when the run directory existed.
    """

    def __init__(self, path: Path, lock: RunLock) -> None:
        self.path = path
        self.lock = lock
        self.removed: list[Path] = []
        self.restarted = False
        self.created: Path | None = None

    @property
    def last_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    @classmethod
    def claim(cls, path: str | os.PathLike[str], *, resume: bool, field: str = "") -> RunDirectory:
        """Check, create, lock and clean ``path`` for a new run or a resumed one.

        Args:
            path: the run directory.
            resume: continue the run there (it must be one) instead of starting a new one.
            field: how the user named the path, for messages (``--out``); default the path.

        Raises:
            RunDirError: the path cannot hold this run, or another process owns it.
        """
        path = Path(path)
        prefix = f"{field}: " if field else ""
        _check_target(path, prefix, resume)
        created = _first_missing(path)
        marked = path.is_dir() and is_eqprop_run(path)
        if not resume and path.is_dir() and not marked and any(_user_entries(path)):
            names = ", ".join(sorted(_user_entries(path))[:5])
            raise RunDirError(
                f"{prefix}{path} is not empty ({names}) and is not an eqprop run directory; "
                "choose a new or empty directory"
            )
        try:
            path.mkdir(parents=True, exist_ok=True)
            lock = RunLock.acquire(path)
        except (RunLockedError, OSError) as err:
            _remove_empty(path, created)
            if isinstance(err, RunLockedError):
                raise RunDirError(f"{prefix}{err}") from None
            raise RunDirError(f"{prefix}cannot write a run into {os_error_message(err)}") from None
        run = cls(path, lock)
        run.created = created
        try:
            run._prepare(resume, prefix, marked)
        except BaseException:
            lock.release()
            raise
        return run

    def _prepare(self, resume: bool, prefix: str, marked: bool) -> None:
        path = self.path
        if not resume and self.last_checkpoint.exists():
            raise RunDirError(
                f"{prefix}{path} already holds a run; continue it with 'eqprop resume {path}' "
                "or choose another directory"
            )
        try:
            self.removed = _remove_temp_files(path)
            if resume and not self.last_checkpoint.exists():
                _remove_outputs(path)
                self.restarted = True
            elif not resume and marked:
                self.restarted = _remove_outputs(path)
        except OSError as err:
            raise RunDirError(f"{prefix}cannot clean up {os_error_message(err)}") from None

    def release(self, remove_if_unused: bool = False) -> None:
        """Unlock the directory (idempotent).

        Args:
            remove_if_unused: also delete it when it was created by :meth:`claim` and nothing
                but the lock file was written (a run refused before it started).
        """
        # Removed while still locked, so no other process can own the file being deleted.
        if remove_if_unused and self.created and self.lock.held and self.path.is_dir():
            try:
                if not _user_entries(self.path):
                    (self.path / LOCK_FILE).unlink(missing_ok=True)
                    _remove_empty(self.path, self.created)
            except OSError:
                pass  # someone else started using it; leave it
        self.lock.release()

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _check_target(path: Path, prefix: str, resume: bool) -> None:
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{prefix}{path} is a file; expected a directory")
    if resume:
        if not path.is_dir():
            raise RunDirError(f"{prefix}{path} does not exist; expected a run directory")
        if not (path / "config.yaml").is_file() or not is_eqprop_run(path):
            raise RunDirError(
                f"{prefix}{path} is not an eqprop run directory (no config.yaml, or not written "
                "by eqprop); expected a directory written by 'eqprop train'"
            )
        return
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise RunDirError(f"{prefix}{path} is under {parent}, which is a file")
            break


def _first_missing(path: Path) -> Path | None:
    """The topmost of ``path`` and its parents that does not exist yet."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            return missing
        missing = folder
    return missing


def _remove_empty(path: Path, created: Path | None) -> None:
    """Remove ``path`` and its parents up to ``created`` (what :meth:`claim` made) while they
    are empty."""
    if created is None:
        return
    for folder in (path, *path.parents):
        try:
            folder.rmdir()
        except OSError:
            return  # not empty (or not there): stop
        if folder == created:
            return


def _user_entries(path: Path) -> list[str]:
    return [p.name for p in path.iterdir() if p.name != LOCK_FILE]


def _remove_temp_files(path: Path) -> list[Path]:
    """Delete the temp files of writes that never finished (only a dead owner leaves them)."""
    removed = []
    for folder in (path, path / "checkpoints"):
        if folder.is_dir():
            for p in folder.iterdir():
                if _TEMP_FILE.match(p.name) and p.is_file():
                    p.unlink()
                    removed.append(p)
    return removed


def _remove_outputs(path: Path) -> bool:
    """Start a run over: drop what the previous attempt wrote besides config and metrics."""
    found = False
    for name in _STALE_OUTPUTS:
        target = path / name
        if target.exists():
            target.unlink()
            found = True
    if (path / "tensorboard").is_dir():
        shutil.rmtree(path / "tensorboard")
        found = True
    return found or (path / "metrics.jsonl").exists()
