"""The ``eqprop`` command: train, resume, evaluate, check, sweep, list presets.

Every expected failure (bad config, missing data, unreadable checkpoint, an unusable or busy
run directory, a diverging run, a full disk) ends with one line on stderr,
``eqprop: error: ...``, and the exit status documented in ``eqprop --help``
(:data:`~eqprop.cli.parser.EXIT_STATUS`); never a traceback. ``python -m eqprop`` is the same
command.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from eqprop.cli.parser import EXIT_STATUS, build_parser

__all__ = ["EXIT_STATUS", "main"]


class _Terminated(KeyboardInterrupt):
    """SIGTERM outside training (training handles it itself: it saves first)."""


def _terminate(signum: int, frame: Any) -> None:
    raise _Terminated


def _error(err: object) -> None:
    text = " ".join(str(err).split("\n")) or type(err).__name__
    print(f"eqprop: error: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``eqprop`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from eqprop.cli.commands import HANDLERS, UsageError
    from eqprop.train.builders import TrainingError
    from eqprop.train.checkpoint import CheckpointError
    from eqprop.train.config import ConfigError
    from eqprop.train.datasets import DataError
    from eqprop.train.rundir import RunDirError, os_error_message

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        return HANDLERS[args.command](args)
    except (ConfigError, DataError, CheckpointError, RunDirError, UsageError, ValueError) as err:
        _error(err)
        return 2
    except TrainingError as err:
        _error(err)
        return 1
    except OSError as err:
        _error(os_error_message(err))
        return 1
    except _Terminated:
        print("eqprop: stopped by SIGTERM", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("eqprop: interrupted", file=sys.stderr)
        return 130
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
