"""Resume as state restoring itself: what a checkpoint gives back, applied where the loop needs it.

``Restore`` wraps the ``ResumePoint`` of ``core.runs.resumption.prepare`` (or nothing, for a
fresh run) and hands each part back at the point the loop reaches: the run's counters before
it starts, the stage's optimiser and schedule when that stage starts, the RNG states just
before its first batch (so nothing between the checkpoint and that batch draws from them),
and the resumed epoch's running totals and the batches its sampler skips. A fresh run gets a
``Restore`` that gives nothing back, so the loop has no resume branches of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from core.errors import ConfigError
from core.runs.checkpoint import GRAD_PREFIX, Position, load_optimizer_state, load_scheduler_state, restore_rng
from core.runs.resumption import ResumePoint
from core.training.state import RunState


@dataclass(frozen=True)
class Start:
    """Where a (resumed) run's loop begins."""

    stage: int  # index of the first stage to run; len(stages) when only the final model is missing
    epochs_in_stage: int  # epochs of that stage already done
    batch: int  # batches of the next epoch already done
    same_stage: bool  # the checkpoint's optimiser and scheduler belong to that stage
    epochs_done: int  # epochs done over the whole run before the loop's first epoch

    def describe(self, steps_per_epoch: int) -> str:
        """``continuing at epoch 3, batch 5/13`` or ``... its first batch``."""
        where = f"batch {self.batch + 1}/{steps_per_epoch}" if self.batch else "its first batch"
        return f"continuing at epoch {self.epochs_done + 1}, {where}"


def start_point(stage_epochs: list[int], position: Position | None) -> Start:
    """The loop's start for a checkpoint ``position`` (None: a fresh run)."""
    if position is None:
        return Start(0, 0, 0, False, 0)
    stage = position.stage
    if not 0 <= stage < len(stage_epochs):
        raise ConfigError(f"checkpoint stage {stage} does not exist in this run; the checkpoint is damaged")
    before = sum(stage_epochs[:stage])
    in_stage = position.epoch - before - (0 if position.epoch_done else 1)
    if not 0 <= in_stage <= stage_epochs[stage]:
        raise ConfigError(f"checkpoint epoch {position.epoch} does not fit this run's stages; the checkpoint is damaged")
    batch = 0 if position.epoch_done else position.batch
    if in_stage >= stage_epochs[stage]:
        return Start(stage + 1, 0, 0, False, before + in_stage)
    return Start(stage, in_stage, batch, True, before + in_stage)


class Restore:
    """What a checkpoint gives back to the run resuming from it (nothing for a fresh run)."""

    def __init__(self, point: ResumePoint | None, stage_epochs: list[int]) -> None:
        self.point = point
        self.stage_epochs = _stage_epochs(stage_epochs, point.meta if point is not None else {})
        self.start = start_point(self.stage_epochs, point.position if point is not None else None)

    @property
    def meta(self) -> dict[str, Any]:
        """The checkpoint's JSON header ({} for a fresh run)."""
        return self.point.meta if self.point is not None else {}

    def run_state(self, state: RunState) -> None:
        """The step, best accuracy, skip count, last checkpoint and last validation, as the checkpoint left them."""
        state.stage_epochs = list(self.stage_epochs)
        if self.point is None:
            return
        position = self.point.position
        state.step = state.first_step = position.step
        state.best = position.best_val_accuracy
        state.best_epoch = int(self.point.meta.get("best_epoch", 0))
        best_val = self.point.meta.get("best_val")
        if isinstance(best_val, dict):
            state.best_val = dict(best_val)
        state.nonfinite = position.nonfinite_skipped
        state.epoch = self.start.epochs_done
        state.last_checkpoint = f"{self.point.checkpoint} (epoch {position.epoch}, step {position.step})"
        last_val = self.point.meta.get("val")
        if isinstance(last_val, dict):
            state.val = dict(last_val)

    def log_line(self, steps_per_epoch: int) -> str | None:
        """The run log's line saying where the run continues, or None for a fresh run."""
        if self.point is None:
            return None
        return f"resumed from {self.point.checkpoint}: {self.start.describe(steps_per_epoch)}"

    def resumes(self, stage_index: int) -> bool:
        """True for the stage the checkpoint was written in (or the one after it)."""
        return self.point is not None and stage_index == self.start.stage

    def stage(self, stage_index: int, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        """The optimiser and schedule of the stage the checkpoint was written in."""
        if self.point is not None and self.resumes(stage_index) and self.start.same_stage:
            load_optimizer_state(optimizer, self.point.meta, self.point.tensors)
            load_scheduler_state(scheduler, self.point.meta)

    def ema(self, ema: Any) -> None:
        """``--ema``'s moving average as the checkpoint left it (a fresh run's starts from the model)."""
        if self.point is not None and ema is not None:
            ema.load(self.point.tensors, self.point.meta)

    def gradients(self, stage_index: int, model: torch.nn.Module) -> None:
        """Gradients accumulated toward an update the checkpoint was written before (``--accumulate``)."""
        if self.point is None or not self.resumes(stage_index) or not self.start.same_stage or not self.start.batch:
            return
        for name, param in getattr(model, "_orig_mod", model).named_parameters():
            saved = self.point.tensors.get(GRAD_PREFIX + name)
            if saved is not None:
                # In the parameter's own memory layout (channels_last), as autograd would have made it.
                param.grad = torch.empty_like(param).copy_(saved)

    def rng(self, stage_index: int) -> None:
        """Torch's, Python's and NumPy's RNGs, last before the stage's first batch."""
        if self.point is not None and self.resumes(stage_index):
            restore_rng(self.point.meta, self.point.tensors)

    def patience(self, stage_index: int) -> tuple[float, int] | None:
        """``--patience``'s (stage best, epochs since it improved) when resuming inside that stage."""
        saved = self.meta.get("patience")
        if not self.resumes(stage_index) or not self.start.same_stage or not isinstance(saved, dict):
            return None
        return float(saved.get("stage_best", -1.0)), int(saved.get("stale", 0))

    def epochs_done(self, stage_index: int) -> int:
        """Epochs of the stage already trained."""
        return self.start.epochs_in_stage if self.resumes(stage_index) else 0

    def skip(self, stage_index: int, epoch: int) -> int:
        """Batches of ``epoch`` already trained (the sampler leaves them out)."""
        return self.start.batch if self.resumes(stage_index) and epoch == self.start.epochs_done + 1 else 0

    def totals(self, skip: int) -> tuple[float, int, int]:
        """The resumed epoch's running (loss sum, correct, seen), or zeros when no batch is skipped."""
        if self.point is None or not skip:
            return 0.0, 0, 0
        position = self.point.position
        return position.loss_sum, position.correct, position.seen


def _stage_epochs(planned: list[int], meta: dict[str, Any]) -> list[int]:
    """Each stage's epochs: as planned, or as the checkpoint records once ``--patience`` ended one early."""
    saved = meta.get("stage_epochs")
    if saved is None:
        return list(planned)
    if (not isinstance(saved, list) or len(saved) != len(planned)
            or any(not isinstance(n, int) or not 0 < n <= p for n, p in zip(saved, planned))):
        raise ConfigError(f"checkpoint stage_epochs {saved!r} does not fit this run's stages; the checkpoint is damaged")
    return list(saved)
