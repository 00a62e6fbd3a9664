"""What runs around the training loop: hooks, in a fixed order, and the checkpointer they share.

A hook has three moments: ``on_stage_start`` (after the stage's optimiser exists),
``after_batch`` (after each optimiser step) and ``after_epoch`` (after validation). Each
returns the events to yield, and the loop yields them in hook order, so the engine stays a
generator that never raises to stop: a hook that ends the run sets ``state.stop()``
(Lightning's ``should_stop``) and the loop returns at that boundary. Faults (a non-finite
loss) are errors and raise.

``default_hooks`` gives the order, which is part of the engine's contract:

1. ``NonFiniteGuard``: a batch skipped under ``--skip-nonfinite`` is logged and counted;
   too many stop the run with ``NonFiniteLoss``.
2. ``EmaUpdate``: ``--ema``: the weights' moving average takes in each optimiser update
   (before any checkpoint, so checkpoints hold it as of their batch).
3. ``BatchReporter``: every ``emit_interval`` seconds (and at an epoch's last batch) one
   ``BatchEnded`` with every loss (and, under ``--clip-grad``, every gradient norm) since the
   last one: the only host sync of the batch loop. A NaN among them stops the run naming its batch.
4. ``UnreadableLog``: images the loader had to skip, named once, and a summary per epoch.
5. ``EarlyStopping``: ``--patience N`` epochs without validation improvement end the stage
   (before the checkpoint, so the checkpoint knows the stage is over).
6. ``PeriodicCheckpoint``: ``--checkpoint-every N`` batches.
7. ``EpochCheckpoint``: checkpoint-last at every epoch's end, copied to checkpoint-best when
   validation improved (timm's ``CheckpointSaver`` owns last and best the same way).
8. ``StopRequests``: ``stop`` at a batch boundary saves a checkpoint and yields
   ``RunStopped``; ``stop_after_epoch`` does so at the epoch's end. Last, so ``RunStopped`` is
   the run's last event.

Extra hooks passed to ``train(..., hooks=...)`` run after these.
"""

from __future__ import annotations

import threading
import time
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Iterator

import torch

from core import events as ev
from core.data.safedata import drain
from core.errors import NonFiniteLoss
from core.runs.checkpoint import GRAD_PREFIX, Position
from core.training.ema import WeightsEma
from core.training.guards import finite_weights, first_nonfinite, kept, nonfinite_advice, nonfinite_message
from core.training.state import EpochState, RunState, StageRun

if TYPE_CHECKING:
    from core.training.session import RunSession
    from core.training.setup import Setup


class Hook:
    """A piece of run behaviour around the loop; every method may yield events."""

    def on_stage_start(self, run: Run, stage: StageRun) -> Iterator[ev.Event]:
        """The stage's optimiser, schedule and pipeline exist; no batch has trained yet."""
        return iter(())

    def after_batch(self, run: Run, epoch: EpochState) -> Iterator[ev.Event]:
        """A batch trained (``epoch.batch``); ``epoch.stepped`` says whether the optimiser stepped."""
        return iter(())

    def after_epoch(self, run: Run, epoch: EpochState, improved: bool) -> Iterator[ev.Event]:
        """The epoch's validation ran (``run.state.val``); ``improved`` beat every earlier epoch."""
        return iter(())


class Run:
    """What the loop and its hooks share: the set-up, the session, the state and the checkpointer."""

    def __init__(self, setup: Setup, session: RunSession, state: RunState, hooks: list[Hook], origin: str,
                 stop: threading.Event | None = None) -> None:
        self.setup = setup
        self.stop = stop  # feature extraction honours it directly (see SingleProcess.stop_during_extraction)
        self.session = session
        self.state = state
        self.hooks = hooks
        self.origin = origin  # the directory the run started in: config paths are relative to it
        config = setup.config
        self.ema = WeightsEma(setup.model, config.ema, config.ema_warmup) if config.ema else None
        setup.restore.ema(self.ema)
        self.checkpointer = Checkpointer(self)

    def weight_sets(self) -> Iterator[tuple[str, AbstractContextManager[None]]]:
        """Each set of weights validation scores: the live ones, then (``--ema``) their moving average."""
        yield "live", nullcontext()
        if self.ema is not None:
            yield "ema", self.ema.swapped(self.setup.model)

    def each(self, moment: str, *args: object) -> Iterator[ev.Event]:
        """Every hook's events for ``moment``, in hook order; stops early once a hook ended the run."""
        for hook in self.hooks:
            yield from getattr(hook, moment)(self, *args)
            if self.state.should_stop:
                return


class Checkpointer:
    """Writes checkpoint-last (and keeps checkpoint-best), never over a NaN the weights already hold."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def save(self, kind: str, epoch: EpochState, done: bool) -> ev.CheckpointSaved:
        """A checkpoint of ``kind`` (batch, epoch, stop) at the epoch's current batch."""
        run, state, setup = self.run, self.run.state, self.run.setup
        self._check_finite(epoch)
        totals = setup.strategy.sum_totals(*epoch.totals()) if not done else None
        sums = (float(totals[0].item()), int(totals[1].item()), int(totals[2])) if totals else (0.0, 0, 0)
        position = Position(epoch.stage_index, epoch.epoch, epoch.batch, state.step, state.best, done, state.nonfinite, *sums)
        path = run.session.save_checkpoint(setup.model, epoch.optimizer, epoch.scheduler, position, self._header(),
                                           self._tensors())
        state.last_checkpoint = f"{path} (epoch {epoch.epoch}, step {state.step})"
        return ev.CheckpointSaved(str(path), epoch.epoch, state.step, kind)

    def _check_finite(self, epoch: EpochState) -> None:
        state = self.run.state
        if epoch.pending:
            bad = first_nonfinite(torch.stack(epoch.pending).float().tolist(), epoch.pending_batches)
            if bad is not None:
                step = state.step - epoch.batch + bad[0]
                raise NonFiniteLoss(nonfinite_message(bad[1], epoch.epoch, bad[0], step, state.last_checkpoint))
        if not finite_weights(self.run.setup.model):
            raise NonFiniteLoss(
                f"the weights became NaN or infinite by epoch {epoch.epoch}, batch {epoch.batch} (step {state.step}); "
                f"the run stopped and {kept(state.last_checkpoint)}; {nonfinite_advice(state.last_checkpoint)}"
            )

    def _tensors(self) -> dict[str, torch.Tensor]:
        """Besides the model's: the EMA's weights, and gradients accumulated toward an update not yet taken."""
        model = getattr(self.run.setup.model, "_orig_mod", self.run.setup.model)
        tensors = {GRAD_PREFIX + n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        if self.run.ema is not None:
            tensors.update(self.run.ema.tensors())
        return tensors

    def _header(self) -> dict[str, object]:
        """What a checkpoint records besides its position: enough to check and continue the run."""
        setup, state = self.run.setup, self.run.state
        return {
            "cwd": self.run.origin,
            "preprocessing": setup.pre.to_dict(), "class_names": list(setup.splits.class_names),
            "train_size": len(setup.splits.train), "batch_size": setup.config.batch_size,
            "stages": [s.name for s in setup.stages], "val": dict(state.val),
            "global_batch_size": setup.global_batch, "workers": setup.strategy.world, "data_paths": setup.cache.paths(),
            "best_epoch": state.best_epoch, "best_val": dict(state.best_val), "stage_epochs": list(state.stage_epochs),
            "patience": {"stage_best": state.stage_best, "stale": state.stale},
            **(self.run.ema.header() if self.run.ema is not None else {}),
        }


class NonFiniteGuard(Hook):
    """``--skip-nonfinite``: log and count each skipped batch; more than ``--max-nonfinite`` is a fault."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def after_batch(self, run: Run, epoch: EpochState) -> Iterator[ev.Event]:
        if not epoch.nonfinite:
            return
        state = run.state
        state.nonfinite += 1
        yield ev.MessageLogged("warning", f"epoch {epoch.epoch}, batch {epoch.batch}: loss is not finite; "
                                          f"batch skipped ({state.nonfinite} of at most {self.limit})")
        if state.nonfinite > self.limit:
            raise NonFiniteLoss(
                f"{state.nonfinite} batches had a non-finite loss, more than --max-nonfinite {self.limit} (the last at "
                f"epoch {epoch.epoch}, batch {epoch.batch}); the run stopped and {kept(state.last_checkpoint)}; lower --lr"
            )


class EmaUpdate(Hook):
    """``--ema``: the moving average takes in the weights after each optimiser update."""

    def after_batch(self, run: Run, epoch: EpochState) -> Iterator[ev.Event]:
        if run.ema is not None and epoch.stepped:
            run.ema.update(run.setup.model)
        return iter(())


class BatchReporter(Hook):
    """One ``BatchEnded`` per ``interval`` seconds with every loss since the last: the loop's one host sync."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.last = 0.0  # when the last report went out (each epoch's window starts afresh)

    def after_batch(self, run: Run, epoch: EpochState) -> Iterator[ev.Event]:
        now = time.perf_counter()
        if not epoch.pending or (now - max(self.last, epoch.started) < self.interval and not epoch.last_batch):
            return
        setup, state = run.setup, run.state
        window = max(1e-9, now - epoch.window_start)
        rate, wait = epoch.window_images / window, min(1.0, epoch.wait / window)
        pending, batches = epoch.take_pending()
        norms = epoch.take_norms()
        synced = torch.stack(pending + norms).float().tolist()  # the one host sync per report
        losses, grad_norms = synced[:len(pending)], synced[len(pending):]
        elapsed = time.time() - state.started
        eta = elapsed / max(1, state.step - state.first_step) * (setup.total_steps - state.step)
        yield ev.BatchEnded(epoch.epoch, epoch.batch, epoch.batches, state.step, setup.total_steps, tuple(losses),
                            epoch.lr, rate, wait, elapsed, eta, epoch.stage.name, tuple(grad_norms))
        self.last = time.perf_counter()
        bad = first_nonfinite(losses, batches)
        if bad is not None:
            step = state.step - epoch.batch + bad[0]
            message = nonfinite_message(bad[1], epoch.epoch, bad[0], step, state.last_checkpoint)
            yield ev.MessageLogged("error", message)
            raise NonFiniteLoss(message)


class UnreadableLog(Hook):
    """Names each image the loader had to skip once, and sums them up at each epoch's end."""

    def after_batch(self, run: Run, epoch: EpochState) -> Iterator[ev.Event]:
        for line in run.setup.skips.add(drain(run.setup.cache.unreadable)):
            yield ev.MessageLogged("warning", line)

    def after_epoch(self, run: Run, epoch: EpochState, improved: bool) -> Iterator[ev.Event]:
        yield from self.after_batch(run, epoch)
        summary = run.setup.skips.end_epoch(epoch.epoch)
        if summary:
            yield ev.MessageLogged("warning", summary)


class EarlyStopping(Hook):
    """``--patience N``: a stage whose validation has not improved for N epochs ends there.

    Per stage: probe-then-finetune's probe ends early and fine-tuning starts; the last
    stage ending early finishes the run (``RunFinished`` says why), which then keeps its best
    epoch as any run does. The counters live in ``RunState`` and every checkpoint, so a
    resumed run counts on where it stopped.
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_stage_start(self, run: Run, stage: StageRun) -> Iterator[ev.Event]:
        state = run.state
        state.stage_best, state.stale = run.setup.restore.patience(stage.index) or (-1.0, 0)
        return iter(())

    def after_epoch(self, run: Run, epoch: EpochState, improved: bool) -> Iterator[ev.Event]:
        state = run.state
        if not self.patience:
            return
        if state.val["top1"] > state.stage_best:
            state.stage_best, state.stale = state.val["top1"], 0
            return
        state.stale += 1
        if state.stale < self.patience:
            return
        state.end_stage = True
        state.stage_epochs[epoch.stage_index] = epoch.epoch - state.epochs_before(epoch.stage_index)
        last = epoch.stage_index == len(run.setup.stages) - 1
        message = (f"early stopping: {epoch.stage.name} stage ended after epoch {epoch.epoch}, no validation improvement "
                   f"for {state.stale} epoch(s) (--patience {self.patience}; its best {state.stage_best:.2%})")
        if last:
            state.ended_early = message
        yield ev.MessageLogged("info", message + ("" if last else "; the next stage starts"))


class PeriodicCheckpoint(Hook):
    """``--checkpoint-every N``: a checkpoint every N optimiser steps inside an epoch."""

    def __init__(self, every: int) -> None:
        self.every = every

    def after_batch(self, run: Run, epoch: EpochState) -> Iterator[ev.Event]:
        if self.every and run.state.step % self.every == 0 and not epoch.last_batch:
            yield run.checkpointer.save("batch", epoch, done=False)


class EpochCheckpoint(Hook):
    """checkpoint-last at each epoch's end; checkpoint-best when validation improved."""

    def after_epoch(self, run: Run, epoch: EpochState, improved: bool) -> Iterator[ev.Event]:
        saved = run.checkpointer.save("epoch", epoch, done=True)
        if improved:
            run.session.keep_best()
        yield saved


class StopRequests(Hook):
    """Cooperative stops: ``stop`` at the next batch boundary, ``stop_after_epoch`` at the epoch's end."""

    def __init__(self, stop: threading.Event | None, after_epoch: threading.Event | None) -> None:
        self.stop = stop
        self.stop_after_epoch = after_epoch

    def after_batch(self, run: Run, epoch: EpochState) -> Iterator[ev.Event]:
        # Every worker must stop at the same batch: the flag is agreed over all of them.
        if run.setup.strategy.agree(self.stop is not None and self.stop.is_set()):
            saved = run.checkpointer.save("stop", epoch, done=False)
            yield saved
            yield self._stopped(run, saved.path, epoch.epoch, "stop requested")

    def after_epoch(self, run: Run, epoch: EpochState, improved: bool) -> Iterator[ev.Event]:
        strategy = run.setup.strategy
        stopping = strategy.agree(self.stop is not None and self.stop.is_set())
        after_epoch = strategy.agree(self.stop_after_epoch is not None and self.stop_after_epoch.is_set())
        if (stopping or after_epoch) and epoch.epoch < sum(run.state.stage_epochs):
            reason = "stop requested" if stopping else "stopped after epoch"
            yield self._stopped(run, run.session.last_path(), epoch.epoch, reason)

    def _stopped(self, run: Run, checkpoint: str, epoch: int, reason: str) -> ev.RunStopped:
        run.state.stop()
        return ev.RunStopped(str(run.session.run_dir), checkpoint, epoch, run.state.step, reason)


def default_hooks(setup: Setup, stop: threading.Event | None, stop_after_epoch: threading.Event | None,
                  emit_interval: float) -> list[Hook]:
    """The engine's hooks, in their documented order."""
    config = setup.config
    return [
        NonFiniteGuard(config.max_nonfinite),
        EmaUpdate(),
        BatchReporter(emit_interval),
        UnreadableLog(),
        EarlyStopping(config.patience),
        PeriodicCheckpoint(config.checkpoint_every),
        EpochCheckpoint(),
        StopRequests(stop, stop_after_epoch),
    ]
