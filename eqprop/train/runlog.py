"""The run directory: per-epoch metrics, environment facts, curves and TensorBoard events.

Layout written by :class:`RunLogger` under ``run_dir``:

- ``metrics.jsonl``: one JSON object per epoch, fsynced line by line; the source of truth.
- ``metrics.csv``: the same records as a table (regenerated from the JSONL whenever needed).
- ``curves.png``: error rates, losses and learning rates vs epoch (when ``plots=True``).
- ``tensorboard/``: TensorBoard event files (when ``tensorboard=True`` and importable).
- any JSON file written with :meth:`RunLogger.write_json`, e.g. ``summary.json`` and
  ``environment.json`` (see :func:`eqprop.train.environment.environment_facts`).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
import torch

from eqprop.train.checkpoint import atomic_write, with_path
from eqprop.train.curves import draw_curves
from eqprop.train.environment import environment_facts

__all__ = ["RunLogger", "environment_facts"]


METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
CURVES_PNG = "curves.png"
TENSORBOARD_DIR = "tensorboard"


class RunLogger:
    """Writes per-epoch metrics of one run into ``run_dir``.

    Constructing a logger on an existing run directory loads its ``metrics.jsonl`` so that a
    resumed run keeps appending; call :meth:`truncate` to drop epochs past the checkpoint being
    resumed from (``truncate(0)`` starts the history afresh).

    Attributes:
        run_dir: The run directory.
        plots: Whether ``curves.png`` is drawn: after the first epoch, then at most every
            ``plot_interval`` seconds (drawing takes about 0.3 s, far more than an epoch of a
            small run), and when the logger closes.
        tensorboard_active: True when TensorBoard logging was requested and is available.
        tensorboard_error: Why TensorBoard is inactive despite being requested, else ``None``.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        tensorboard: bool = False,
        plots: bool = True,
        plot_interval: float = 10.0,
    ) -> None:
        """Create ``run_dir`` (if needed) and load any existing history.

        Args:
            run_dir: The run directory.
            tensorboard: Log scalars to ``run_dir/tensorboard`` if TensorBoard is importable.
            plots: Draw ``run_dir/curves.png`` (see the class attributes).
            plot_interval: Seconds between redraws of ``curves.png`` while logging.
        """
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.plots = plots
        self.plot_interval = plot_interval
        self._drawn_at: float | None = None  # time.monotonic() of the last draw
        self._undrawn = False  # records logged since the last draw
        self.tensorboard_active = False
        self.tensorboard_error: str | None = None
        self._summary_writer_cls: Any = None
        self._writer: Any = None
        # Step from which TensorBoard should discard stale events (written before a crash or
        # before a truncate) when the next writer opens.
        self._tb_purge_step: int | None = None
        self._history: list[dict[str, Any]] = []
        self._fields: list[str] = []
        if tensorboard:
            try:
                self._summary_writer_cls = _import_summary_writer()
                self.tensorboard_active = True
            except Exception as exc:  # ImportError, or protobuf/version clashes inside it
                self.tensorboard_error = f"{type(exc).__name__}: {exc}"
        self.load_history()

    # ------------------------------------------------------------------ history

    @property
    def history(self) -> list[dict[str, Any]]:
        """All epoch records logged so far (copies; mutating them does not affect the log)."""
        return [dict(r) for r in self._history]

    def load_history(self) -> list[dict[str, Any]]:
        """(Re)load the history from ``metrics.jsonl`` and resynchronise the derived files.

        A torn final line (the process died mid-append) is dropped and the file rewritten, so
        later appends start on a clean line; ``metrics.csv`` is regenerated because it may lag
        behind the JSONL after a crash.

        Returns:
            The loaded records.

        Raises:
            ValueError: If a line other than the last is not a valid JSON record.
        """
        path = self.run_dir / METRICS_JSONL
        records: list[dict[str, Any]] = []
        needs_rewrite = False
        if path.exists():
            text = path.read_text(encoding="utf-8")
            lines = text.split("\n")
            # A complete file ends with "\n", leaving an empty last element; otherwise the last
            # line was being written when the writer died.
            tail = lines.pop()
            if tail.strip():
                needs_rewrite = True
                try:
                    last = self._parse_line(tail, len(lines) + 1, path)
                except ValueError:
                    last = None
                if last is not None:
                    lines.append(tail)
            for lineno, line in enumerate(lines, start=1):
                if line.strip():
                    records.append(self._parse_line(line, lineno, path))
                else:
                    needs_rewrite = True
        self._history = records
        self._fields = _fields_of(records)
        if needs_rewrite:
            self._rewrite_jsonl()
        self._rewrite_csv()
        if records and self.tensorboard_active:
            self._reset_tensorboard(purge_from=int(records[-1]["epoch"]) + 1)
        return self.history

    @staticmethod
    def _parse_line(line: str, lineno: int, path: Path) -> dict[str, Any]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict) or not _is_int(record.get("epoch")):
            raise ValueError(f"{path}:{lineno}: not an epoch record with an integer 'epoch'")
        return record

    def truncate(self, n_epochs: int) -> None:
        """Keep only records with ``epoch <= n_epochs`` (e.g. when resuming from epoch N).

        Args:
            n_epochs: Last epoch to keep; 0 empties the history.
        """
        self.restore([r for r in self._history if r["epoch"] <= n_epochs])

    def restore(self, records: list[dict[str, Any]]) -> None:
        """Make the log hold exactly ``records`` (a checkpoint's history, which is authoritative
        on resume: it drops epochs logged after the checkpoint and restores any the log lost).

        Args:
            records: Epoch records, in order.
        """
        self._history = [{str(k): _plain(v) for k, v in r.items()} for r in records]
        self._fields = _fields_of(self._history)
        self._rewrite_jsonl()
        self._rewrite_csv()
        if self.tensorboard_active:
            last = int(self._history[-1]["epoch"]) if self._history else 0
            self._reset_tensorboard(purge_from=last + 1)
        if self.plots:
            self._undrawn = False
            if self._history:
                self._draw_curves()
            else:
                (self.run_dir / CURVES_PNG).unlink(missing_ok=True)

    # ------------------------------------------------------------------ logging

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        """Append one epoch record to every output.

        Args:
            record: Flat mapping with at least an integer ``epoch``; values should be numbers,
                strings, bools or ``None`` (numpy/torch scalars are converted). ``None`` and
                non-numeric values are kept in the JSONL/CSV but skipped in TensorBoard and
                plots.

        Raises:
            ValueError: If ``epoch`` is missing or not an integer.
        """
        if not _is_int(record.get("epoch")):
            raise ValueError(f"epoch record needs an integer 'epoch', got {record.get('epoch')!r}")
        rec = {str(k): _plain(v) for k, v in record.items()}
        path = self.run_dir / METRICS_JSONL
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec, default=_json_default) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:  # a torn line is dropped on the next load
            raise with_path(err, path) from err
        self._history.append(rec)

        new_fields = [k for k in rec if k not in self._fields]
        if new_fields or len(self._history) == 1:
            # The header changes, so earlier rows must be rewritten with the new columns.
            self._fields.extend(new_fields)
            self._rewrite_csv()
        else:
            try:
                with open(self.run_dir / METRICS_CSV, "a", encoding="utf-8", newline="") as f:
                    self._csv_writer(f).writerow(_csv_row(rec))
            except OSError as err:  # the CSV is regenerated from the JSONL on the next load
                raise with_path(err, self.run_dir / METRICS_CSV) from err

        if self.tensorboard_active:
            self._log_tensorboard(rec)
        if self.plots:
            due = self._drawn_at is None or time.monotonic() - self._drawn_at >= self.plot_interval
            if due:
                self._draw_curves()
            self._undrawn = not due

    def write_json(self, name: str, obj: Any) -> Path:
        """Atomically write ``obj`` as indented JSON to ``run_dir/name``.

        Args:
            name: File name relative to the run directory (e.g. ``"summary.json"``).
            obj: JSON-serialisable object; numpy/torch scalars and arrays and paths are
                converted.

        Returns:
            The path written.
        """
        path = self.run_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(obj, indent=2, default=_json_default) + "\n"
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))
        return path

    # ------------------------------------------------------------------ outputs

    def _rewrite_jsonl(self) -> None:
        text = "".join(json.dumps(r, default=_json_default) + "\n" for r in self._history)
        atomic_write(self.run_dir / METRICS_JSONL, lambda f: f.write(text.encode("utf-8")))

    def _csv_writer(self, f: IO[str]) -> csv.DictWriter[str]:
        return csv.DictWriter(f, fieldnames=self._fields, restval="")

    def _rewrite_csv(self) -> None:
        path = self.run_dir / METRICS_CSV
        if not self._history:
            path.unlink(missing_ok=True)
            return
        buf = io.StringIO(newline="")
        writer = self._csv_writer(buf)
        writer.writeheader()
        writer.writerows(_csv_row(r) for r in self._history)
        data = buf.getvalue().encode("utf-8")
        atomic_write(path, lambda f: f.write(data))

    def _reset_tensorboard(self, purge_from: int) -> None:
        # A SummaryWriter can only purge when it opens, so close the current one and let the
        # next log_epoch open a fresh writer that discards events at steps >= purge_from.
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._tb_purge_step = purge_from

    def _log_tensorboard(self, rec: Mapping[str, Any]) -> None:
        if self._writer is None:
            self._writer = self._summary_writer_cls(
                log_dir=str(self.run_dir / TENSORBOARD_DIR), purge_step=self._tb_purge_step
            )
            self._tb_purge_step = None
        epoch = int(rec["epoch"])
        for key, value in rec.items():
            if key != "epoch" and _is_number(value):
                self._writer.add_scalar(key, float(value), global_step=epoch)
        self._writer.flush()

    def _draw_curves(self) -> None:
        draw_curves(self._history, self._fields, self.run_dir / CURVES_PNG)
        self._drawn_at = time.monotonic()

    # ------------------------------------------------------------------ lifecycle

    def close(self, draw: bool = True) -> None:
        """Draw the curves if they lag behind (unless ``draw`` is false), flush and close the
        TensorBoard writer (idempotent)."""
        if self._undrawn and draw:
            self._undrawn = False
            self._draw_curves()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(draw=exc is None)  # after an error (a full disk?) leave the files alone


def _import_summary_writer() -> Any:
    """Import ``SummaryWriter`` lazily: TensorBoard is an optional dependency."""
    with warnings.catch_warnings():
        # TensorBoard and protobuf emit DeprecationWarnings on import that are not ours to fix
        # and would fail runs/tests that treat warnings as errors.
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter


def _fields_of(records: list[dict[str, Any]]) -> list[str]:
    """Union of record keys in first-appearance order (the CSV header)."""
    fields: dict[str, None] = {}
    for r in records:
        fields.update(dict.fromkeys(r))
    return list(fields)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    # bools are ints in Python but are flags, not curves.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _plain(value: Any) -> Any:
    """Convert numpy/torch scalars to Python numbers so records stay plain JSON."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray | torch.Tensor):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, _dt.datetime | _dt.date):
        return obj.isoformat()
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=repr)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _csv_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """Format a record for the CSV: None as an empty cell, containers as JSON."""
    row: dict[str, Any] = {}
    for key, value in record.items():
        if value is None:
            row[key] = ""
        elif isinstance(value, dict | list | tuple):
            row[key] = json.dumps(value, default=_json_default)
        else:
            row[key] = value
    return row
