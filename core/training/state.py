"""The mutable state of one run and of the epoch it is in, shared by the loop and its hooks.

``RunState`` lives for the whole run: the global step, the best validation accuracy so far,
the skipped-batch count, the last good checkpoint, how the run is ending (``should_stop``,
Lightning's flag, set by a hook and checked by the loop at batch and epoch boundaries).
``EpochState`` lives for one epoch: the optimiser and schedule of its stage, the running
training totals (kept on the device: no host sync per batch) and the batch losses not yet
reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from core.training.pipeline import Pipeline
from core.training.plan import Stage


@dataclass
class RunState:
    """Counters and flags for the whole run."""

    step: int = 0
    first_step: int = 0  # the step this process started at (a resumed run's ETA counts from it)
    best: float = -1.0  # the best validation top-1 so far
    nonfinite: int = 0  # batches skipped for a non-finite loss (--skip-nonfinite)
    last_checkpoint: str | None = None  # "path (epoch E, step S)" of the last good checkpoint
    val: dict[str, Any] = field(default_factory=lambda: {"top1": 0.0, "loss": float("nan")})  # the last validation
    epoch: int = 0  # the last epoch begun (1-based over the run)
    started: float = field(default_factory=time.time)
    outcome: str = "failed"  # finished | stopped | interrupted | failed, for status.json
    should_stop: bool = False  # a hook ended the run cleanly (RunStopped was yielded)
    best_epoch: int = 0  # the epoch that scored ``best`` (what --keep best keeps)
    best_val: dict[str, Any] = field(default_factory=lambda: {"top1": 0.0, "loss": float("nan")})  # its validation
    stage_epochs: list[int] = field(default_factory=list)  # epochs of each stage: planned, or fewer once it ended early
    end_stage: bool = False  # a hook ended the current stage after this epoch (--patience)
    ended_early: str = ""  # why the run finished before its planned epochs, for RunFinished
    stage_best: float = -1.0  # --patience: the best validation top-1 of the current stage
    stale: int = 0  # --patience: epochs of the current stage since it last improved

    def epochs_before(self, stage_index: int) -> int:
        """Epochs of the run before stage ``stage_index`` starts."""
        return sum(self.stage_epochs[:stage_index])

    def stop(self) -> None:
        """End the run at the loop's next boundary, as stopped."""
        self.should_stop = True
        self.outcome = "stopped"


@dataclass
class EpochState:
    """One epoch's training figures and the batch losses waiting for the next report."""

    stage_index: int
    stage: Stage
    epoch: int
    batches: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int = 0
    batch: int = 0  # the last batch done (1-based)
    lr: float = 0.0  # the rate the last batch trained at
    stepped: bool = True  # whether the last batch stepped the optimiser
    nonfinite: bool = False  # the last batch's loss was not finite and --skip-nonfinite skipped it
    pending: list[torch.Tensor] = field(default_factory=list)  # losses not yet synced to the host
    pending_batches: list[int] = field(default_factory=list)
    pending_norms: list[torch.Tensor] = field(default_factory=list)  # --clip-grad: each update's norm before clipping
    accumulate: int = 1  # batches per optimiser update (--accumulate)
    window_images: int = 0  # images since the last report, over all workers
    wait: float = 0.0  # seconds spent waiting for data since the last report
    window_start: float = field(default_factory=time.perf_counter)
    started: float = field(default_factory=time.perf_counter)

    @property
    def last_batch(self) -> bool:
        """True after the epoch's final batch."""
        return self.batch == self.batches

    @property
    def opens_update(self) -> bool:
        """The current batch is the first of an accumulation group (every batch without --accumulate)."""
        return (self.batch - 1) % self.accumulate == 0

    @property
    def closes_update(self) -> bool:
        """The optimiser steps after the current batch: the last of its group, or of the epoch."""
        return self.batch % self.accumulate == 0 or self.last_batch

    def update_batches(self) -> range:
        """The 1-based batches of the current batch's accumulation group."""
        first = self.batch - (self.batch - 1) % self.accumulate
        return range(first, min(first + self.accumulate, self.batches + 1))

    def totals(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(loss sum, correct, seen) so far on this rank."""
        return self.loss_sum, self.correct, self.seen

    def take_pending(self) -> tuple[list[torch.Tensor], list[int]]:
        """The unreported losses and their batch indices, clearing them and the report window."""
        pending, batches = self.pending, self.pending_batches
        self.pending, self.pending_batches, self.window_images, self.wait = [], [], 0, 0.0
        self.window_start = time.perf_counter()
        return pending, batches

    def take_norms(self) -> list[torch.Tensor]:
        """The gradient norms not yet reported, clearing them."""
        norms, self.pending_norms = self.pending_norms, []
        return norms


@dataclass
class StageRun:
    """A stage being trained: its optimiser, schedule, pipeline, and what batches run through."""

    index: int
    stage: Stage
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    pipeline: Pipeline
    forward: nn.Module  # the pipeline's module, wrapped by the strategy (DDP with workers)
    criterion: nn.Module
    mix: Any = None  # core.training.mixing.Mixer for a stage that mixes its batches, else None
