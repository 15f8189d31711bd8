"""One process per run directory: an OS-level lock that the kernel releases when its owner dies.

:class:`RunLock` holds an exclusive ``fcntl.flock`` on ``RUN/.eqprop.lock`` for as long as a
process trains into ``RUN``. The kernel drops the lock when the file is closed, which includes
the owner being killed (even by SIGKILL), so a crashed run never leaves a stale lock behind and
nothing ever needs deleting by hand. The file itself stays: it records the last owner (process
id, host, command, start time) for the message a second process gets, and marks the directory
as an eqprop run.

Example:
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with RunLock.acquire(d):
    ...     try:
    ...         RunLock.acquire(d)  # a second owner, here or in any other process
    ...     except RunLockedError as err:
    ...         print(str(err).split(" is in use")[0] == d)
    True
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import sys
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, the run is unguarded
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "RunLock", "RunLockedError"]

LOCK_FILE = ".eqprop.lock"
"""The lock file's name inside a run directory; its presence marks an eqprop run."""


class RunLockedError(Exception):
    """Another live process owns the run directory; the message names it."""


class RunLock:
    """An exclusive lock on a run directory, held until :meth:`release` or process exit."""

    def __init__(self, directory: Path, handle: IO[str]) -> None:
        self.directory = directory
        self._handle: IO[str] | None = handle

    @classmethod
    def acquire(cls, directory: str | os.PathLike[str]) -> RunLock:
        """Lock ``directory`` (which must exist) for this process, without waiting.

        Raises:
            RunLockedError: another process holds it.
            OSError: the lock file cannot be created or opened (read-only, no permission).
        """
        directory = Path(directory)
        handle = open(directory / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 (held)
        try:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _describe(_read_owner(handle))
            handle.close()
            raise RunLockedError(
                f"{directory} is in use by {owner}; wait for it to finish, stop it, or choose "
                "another directory"
            ) from None
        except BaseException:
            handle.close()
            raise
        _write_owner(handle)
        return cls(directory, handle)

    def release(self) -> None:
        """Give the directory up (idempotent); the lock file stays."""
        if self._handle is not None:
            self._handle.close()  # closing the descriptor drops the flock
            self._handle = None

    @property
    def held(self) -> bool:
        return self._handle is not None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _write_owner(handle: IO[str]) -> None:
    """Record who holds the lock (best effort: the flock, not this text, is the lock)."""
    owner = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300],
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(owner) + "\n")
        handle.flush()
    except OSError:
        pass  # a full disk must not stop the lock from working; messages get vaguer


def _read_owner(handle: IO[str]) -> dict[str, Any]:
    try:
        handle.seek(0)
        owner = json.loads(handle.read() or "{}")
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _describe(owner: dict[str, Any]) -> str:
    if "pid" not in owner:
        return "another process"
    where = f" on {owner['host']}" if owner.get("host") else ""
    what = f" ({owner['command']})" if owner.get("command") else ""
    since = f" since {owner['started']}" if owner.get("started") else ""
    return f"process {owner['pid']}{where}{what}{since}"
