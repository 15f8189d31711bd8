"""Stopping a run cleanly: Ctrl-C (SIGINT) and SIGTERM (``timeout``, SLURM, Kubernetes).

The first signal is acknowledged at once and only sets :attr:`Interrupt.requested`; the
training loop checks it after every batch, evaluation after every batch too, and the run saves
and exits. A second signal stops sooner: it raises :class:`KeyboardInterrupt` at once, except
inside :meth:`Interrupt.critical` sections (an optimiser step, a checkpoint write), where it
waits for the section to end, so the state saved is never half-updated and a save in progress
completes. A third signal during a save abandons it (the previous checkpoint stays).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["EXIT_CODES", "Interrupt"]

#: Exit status of a run stopped by each signal after saving (128 + the signal number).
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


class Interrupt:
    """Turns SIGINT and SIGTERM into a stop request checked between batches.

    Args:
        notify: called with a one-line message when a signal arrives (default: nothing).
    """

    def __init__(self, notify: Callable[[str], None] | None = None) -> None:
        self.signal: int | None = None  # the first signal received
        self.count = 0
        self._notify = notify or (lambda message: None)
        self._critical = 0
        self._deferred = False
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def exit_code(self) -> int:
        """130 after Ctrl-C, 143 after SIGTERM."""
        return EXIT_CODES.get(signal.Signals(self.signal or signal.SIGINT), 130)

    @property
    def name(self) -> str:
        return _NAMES.get(signal.Signals(self.signal or signal.SIGINT), "a signal")

    def _handler(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count == 1:
            self.signal = signum
            self._notify(
                f"{_NAMES.get(signal.Signals(signum), 'signal')} received: stopping after this "
                "batch to save a checkpoint (Ctrl-C again to stop sooner)"
            )
        elif self._critical and self.count == 2:
            self._deferred = True
            self._notify("finishing the current step or save first (Ctrl-C again to abandon it)")
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """A section a second signal must not cut (a third one still does)."""
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
        if self._deferred and not self._critical:
            self._deferred = False
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[Interrupt]:
        """Handle SIGINT and SIGTERM while the block runs (main thread only; elsewhere the
        signals keep their handlers)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for sig in EXIT_CODES:
            self._previous[sig] = signal.signal(sig, self._handler)
        try:
            yield self
        finally:
            for signum, previous in self._previous.items():
                signal.signal(signum, previous)
            self._previous.clear()
