"""The run directory while a run trains: its files, its lock and its checkpoints.

``RunSession`` (rank 0) creates or reopens ``runs/<name>/``, holds the run's lock, writes
config.json, status.json (running, then how it ended) and metrics.jsonl (one line per event
but ``BatchEnded``), and saves checkpoints and the final bundle. Other ranks of a
data-parallel job get a ``NullSession``, which keeps the same paths and writes nothing, so
the loop never asks which rank it is on. A full or read-only disk is a
``CheckpointWriteFailed`` naming the last good checkpoint, never a traceback.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core import events as ev
from core.config import RunConfig
from core.data.transforms import Preprocessing
from core.errors import ConfigError, write_failed
from core.runs.bundle import save_bundle
from core.runs.checkpoint import Position, copy_checkpoint, read_checkpoint, save_checkpoint
from core.runs.lock import RunLock
from core.runs.resumption import BEST, LAST
from core.runs.store import MetricsWriter, create_run_dir, read_status, write_json
from core.training.state import RunState


class RunSession:
    """Rank 0's hold on the run directory: lock, status.json, metrics.jsonl, checkpoints, bundle."""

    def __init__(self, run_dir: Path, state: RunState) -> None:
        self.run_dir = run_dir
        self.state = state  # its last good checkpoint is what a failed write's message names
        self.lock = RunLock(run_dir)
        self.status: dict[str, Any] = {}
        self.metrics: MetricsWriter | None = None

    @classmethod
    def create(cls, config: RunConfig) -> Path:
        """A new run folder with its config.json (a full or read-only disk is exit 8 with a message)."""
        run_dir = Path(config.runs_dir)
        try:
            run_dir = create_run_dir(config)
            (run_dir / "config.json").write_text(config.to_json() + "\n")
        except OSError as exc:
            raise write_failed(run_dir, exc, None) from None
        return run_dir

    def open(self, resumed: bool, extra: dict[str, Any], started: float) -> None:
        """Take the lock, mark the run running in status.json and open metrics.jsonl."""
        if not self.lock.acquire():
            raise ConfigError(f"run {self.run_dir} is already being trained by another process (pid {self.lock.holder()})")
        status = read_status(self.run_dir) if resumed else {}
        status.update({"status": "running", "started": status.get("started", started), "pid": os.getpid(), **extra})
        if resumed:
            status["resumed"] = int(status.get("resumed", 0)) + 1
        status.pop("error", None)
        self.status = status
        self._write_status()
        self.metrics = MetricsWriter(self.run_dir / "metrics.jsonl")

    def _write_status(self) -> None:
        try:
            write_json(self.run_dir / "status.json", self.status)
        except OSError as exc:
            raise write_failed(self.run_dir / "status.json", exc, self.state.last_checkpoint) from None

    def record(self, event: ev.Event) -> None:
        """Append ``event`` to metrics.jsonl (``BatchEnded`` is too frequent to keep)."""
        if self.metrics is None or isinstance(event, ev.BatchEnded):
            return
        try:
            self.metrics.write(ev.to_record(event))
        except OSError as exc:
            raise write_failed(self.metrics.path, exc, self.state.last_checkpoint) from None

    def save_checkpoint(self, model: nn.Module, optimizer: Any, scheduler: Any, position: Position, extra: dict[str, Any],
                        tensors: dict[str, torch.Tensor] | None = None) -> Path:
        """Write checkpoint-last atomically (``tensors``: more than the model's); returns its readable json path."""
        return save_checkpoint(self.run_dir / LAST, model, optimizer, scheduler, position, extra, extra_tensors=tensors)

    def keep_best(self) -> None:
        """Copy checkpoint-last to checkpoint-best (the epoch just saved improved on every earlier one)."""
        copy_checkpoint(self.run_dir / LAST, self.run_dir / BEST)

    def best_weights(self) -> dict[str, torch.Tensor] | None:
        """The model tensors of checkpoint-best (what ``--keep best`` puts in the bundle)."""
        return read_checkpoint(self.run_dir / BEST)[1]

    def last_path(self) -> str:
        """checkpoint-last's json path, or '' when no checkpoint was written yet."""
        last = (self.run_dir / LAST).with_suffix(".json")
        return str(last) if last.exists() else ""

    def save_bundle(self, model: nn.Module, arch: dict[str, Any], class_names: list[str], pre: Preprocessing,
                    meta: dict[str, Any]) -> Path:
        """Write the final model bundle; returns model.json's path."""
        try:
            return save_bundle(self.run_dir, model, arch, class_names, pre, meta)
        except OSError as exc:
            raise write_failed(self.run_dir / "model.safetensors", exc, self.state.last_checkpoint) from None

    def close(self, outcome: str, step: int, started: float, data_paths: dict[str, str], error: str | None) -> None:
        """Record how the run ended in status.json, close metrics.jsonl and release the lock."""
        if self.metrics is not None:
            self.metrics.close()
        self.status.update(status=outcome, seconds=round(time.time() - started, 3), step=step, data_paths=data_paths)
        if error:
            self.status["error"] = error
        try:
            write_json(self.run_dir / "status.json", self.status)
        except OSError:  # a full disk: the error being raised says more than this would
            pass
        self.lock.release()


class NullSession(RunSession):
    """What ranks other than 0 hold: the run directory's paths, and no files written."""

    def open(self, resumed: bool, extra: dict[str, Any], started: float) -> None:
        """Nothing to lock or write."""

    def record(self, event: ev.Event) -> None:
        """Drop the event."""

    def save_checkpoint(self, model: nn.Module, optimizer: Any, scheduler: Any, position: Position, extra: dict[str, Any],
                        tensors: dict[str, torch.Tensor] | None = None) -> Path:
        """The path rank 0 writes."""
        return (self.run_dir / LAST).with_suffix(".json")

    def keep_best(self) -> None:
        """Rank 0 keeps it."""

    def best_weights(self) -> dict[str, torch.Tensor] | None:
        """Rank 0 writes the bundle: nothing to load here."""
        return None

    def save_bundle(self, model: nn.Module, arch: dict[str, Any], class_names: list[str], pre: Preprocessing,
                    meta: dict[str, Any]) -> Path:
        """The path rank 0 writes."""
        return self.run_dir / "model.json"

    def close(self, outcome: str, step: int, started: float, data_paths: dict[str, str], error: str | None) -> None:
        """Nothing to close."""
