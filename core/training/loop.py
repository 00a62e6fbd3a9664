"""The training loop: ``fit -> stage -> epoch -> step``, reading like the notebook.

``fit`` yields the run's opening events, trains each remaining stage and saves the final
model. A stage freezes what its mode freezes, makes its optimiser, schedule and data
pipeline, and trains its epochs. An epoch is ``for images, labels in batches: forward ->
loss -> backward -> step``, then validation. After each batch and each epoch the hooks run
(``core.training.hooks``: reporting, guards, checkpoints, stops) and their events are
yielded; a hook that ends the run sets ``state.should_stop`` and the loop returns at that
boundary. Nothing here asks how many processes there are: ``setup.strategy`` answers
(``core.training.strategy``).
"""

from __future__ import annotations

import time
from typing import Iterator

import torch

from core import events as ev
from core.config import KEEPS_LAST_ON_TEST, RunConfig
from core.data.datasets import targets_of
from core.data.loaders import to_device
from core.device import autocast, device_name, is_out_of_memory
from core.errors import DataError, out_of_memory
from core.models.build import count_params
from core.models.freeze import freeze, param_groups, train_mode
from core.runs.checkpoint import load_model_state
from core.training.ema import PREFIX as EMA_PREFIX
from core.training.features import ExtractionStopped
from core.training.hooks import Run
from core.training.mixing import make_criterion, make_mixer
from core.training.pipeline import Pipeline, pipeline_steps
from core.training.plan import Stage
from core.training.schedule import current_lr, make_optimizer, make_scheduler, step_scheduler
from core.training.state import EpochState, StageRun
from core.training.validate import validate


def fit(run: Run) -> Iterator[ev.Event]:
    """The whole run: opening events, each remaining stage, then the final model."""
    yield from opening(run)
    for index, stage in enumerate(run.setup.stages):
        if index < run.setup.restore.start.stage:
            continue
        yield from train_stage(run, index, stage)
        if run.state.should_stop:
            return
    yield from finish(run)


def opening(run: Run) -> Iterator[ev.Event]:
    """``RunStarted`` and the run log's first lines (data path notes, workers, resume, left-out images)."""
    setup, state, config = run.setup, run.state, run.setup.config
    first = setup.stages[min(setup.restore.start.stage, len(setup.stages) - 1)]
    freeze(setup.model, setup.info, first.mode, config.unfreeze_stages)
    yield ev.RunStarted(
        str(run.session.run_dir), config.to_dict(), config.command_line(), str(setup.device), device_name(setup.device),
        tuple(setup.splits.class_names), len(setup.splits.train), len(setup.splits.val), config.total_epochs,
        setup.total_steps, count_params(setup.model, trainable_only=True), count_params(setup.model),
        setup.restore.start.epochs_done, state.step, tuple((s.name, s.epochs) for s in setup.stages),
    )
    lines = [*setup.notes, setup.strategy.describe(setup.global_batch), setup.restore.log_line(setup.steps_per_epoch)]
    for line in lines:
        if line:
            yield ev.MessageLogged("info", line)
    for line in setup.screened:
        yield ev.MessageLogged("warning", line)
    if setup.screened:
        yield ev.MessageLogged("warning", f"{len(setup.screened)} unreadable image(s) left out (see `tlwork check-data`; "
                                          "--strict stops instead)")
    if setup.splits.val_source == "held-out":
        yield ev.MessageLogged("info", f"validating on {len(setup.splits.val)} held-out training images "
                                       f"(--val-split {config.val_split:g})")


def train_stage(run: Run, index: int, stage: Stage) -> Iterator[ev.Event]:
    """Freeze for the stage's mode, make its optimiser, schedule and pipeline, and train its epochs."""
    setup, config, state = run.setup, run.setup.config, run.state
    freeze(setup.model, setup.info, stage.mode, config.unfreeze_stages)
    groups = param_groups(setup.model, setup.info, stage.lr, config.layer_decay)
    optimizer = make_optimizer(groups, config.optimizer, stage.lr, config.momentum, config.weight_decay)
    scheduler = make_scheduler(optimizer, stage.scheduler, setup.updates_per_epoch, stage.epochs, config.step_size,
                               config.step_gamma, config.warmup_epochs)
    setup.restore.stage(index, optimizer, scheduler)
    setup.restore.gradients(index, setup.model)
    state.end_stage = False
    try:
        pipeline = yield from _pipeline(run, stage)
    except ExtractionStopped:  # nothing of this stage trained: the last checkpoint (if any) is where it resumes
        run.state.stop()
        yield ev.RunStopped(str(run.session.run_dir), run.session.last_path(), run.state.epoch, run.state.step, "stop requested")
        return
    forward = setup.strategy.wrap(pipeline.forward, setup.device, _example(run, pipeline), stage.mode != "linear-probe")
    classes = len(setup.splits.class_names)
    criterion = make_criterion(config, targets_of(setup.splits.train), classes, setup.device)
    mixer = make_mixer(config, classes) if stage.mix else None
    current = StageRun(index, stage, optimizer, scheduler, pipeline, forward, criterion, mixer)
    yield ev.MessageLogged("info", f"stage {stage.name}: {pipeline.kind} data path")
    extras = _extras(config, stage, setup.global_batch)
    if extras:
        yield ev.MessageLogged("info", f"stage {stage.name}: {extras}")
    trains_backbone = stage.mode != "linear-probe"
    rates = tuple((g["name"], g["lr"]) for g in groups) if len(groups) > 1 else ()
    yield ev.StageStarted(stage.name, state.epochs_before(index) + 1, stage.epochs, stage.lr,
                          sum(p.numel() for g in groups for p in g["params"]), stage.bn if trains_backbone else "", rates)
    yield from run.each("on_stage_start", current)
    setup.restore.rng(index)  # last, so nothing between the checkpoint and the next batch draws from the RNGs
    setup.strategy.reseed(config.seed, state.step)
    for _ in range(setup.restore.epochs_done(index), stage.epochs):
        yield from train_epoch(run, current)
        if state.should_stop or state.end_stage:
            return


def _extras(config: RunConfig, stage: Stage, batch: int) -> str:
    """The run-log line naming the stage's EMA, mixing, class balance, accumulation and clipping ('' for none)."""
    parts = []
    if stage.mix:
        mixes = [f"{name} {alpha:g}" for name, alpha in (("mixup", config.mixup), ("cutmix", config.cutmix)) if alpha]
        parts.append(" or ".join(mixes) + (f" on {config.mix_prob:.0%} of batches" if config.mix_prob < 1 else "")
                     + " (train accuracy counts each image's dominant label)")
    elif config.mixes:
        parts.append("no mixing (this stage trains on cached features, not images)")
    if config.ema:
        parts.append(f"EMA of the weights, decay {config.ema:g}" + (" with warm-up" if config.ema_warmup else ""))
    if config.class_weights != "none":
        parts.append(f"{config.class_weights} class weights in the loss")
    if config.sampler != "shuffle":
        parts.append(f"{config.sampler} sampler")
    if config.accumulate > 1:
        parts.append(f"one update per {config.accumulate} batches ({config.accumulate * batch} images)")
    if config.clip_grad:
        parts.append(f"gradient norm clipped to {config.clip_grad:g}")
    return "; ".join(parts)


def _pipeline(run: Run, stage: Stage) -> Iterator[ev.Event]:
    setup, config = run.setup, run.setup.config
    return pipeline_steps(
        cache=setup.cache, model=setup.model, forward=setup.forward, info=setup.info, stage_mode=stage.mode,
        augment=stage.augment, batch_size=setup.global_batch, seed=config.seed, workers=setup.workers,
        channels_last=config.channels_last, amp=config.amp, cache_features=config.cache_features, sampler=setup.sampler,
        shard=setup.strategy.shard, stop=setup.strategy.stop_during_extraction(run.stop), gather=setup.strategy.gather_rows,
    )


def _example(run: Run, pipeline: Pipeline) -> torch.Tensor:
    """One input as the stage's module takes it (the strategy's dry run looks for unused parameters)."""
    if pipeline.kind == "features":
        return run.setup.cache.features["train"].features[:1].float()
    return torch.zeros(1, 3, run.setup.pre.size, run.setup.pre.size, device=run.setup.device)


def _epoch_state(run: Run, current: StageRun, skip: int) -> EpochState:
    """A new epoch's state, with a resumed epoch's running totals (counted once, on rank 0)."""
    loss_sum, correct, seen = run.setup.strategy.main_value(run.setup.restore.totals(skip), (0.0, 0, 0))
    device = run.setup.device
    return EpochState(
        current.index, current.stage, run.state.epoch, len(current.pipeline), current.optimizer, current.scheduler,
        torch.tensor(float(loss_sum), device=device, dtype=torch.float64), torch.tensor(int(correct), device=device),
        int(seen), batch=skip, lr=current_lr(current.optimizer), accumulate=run.setup.config.accumulate,
    )


def train_epoch(run: Run, current: StageRun) -> Iterator[ev.Event]:
    """One epoch: every batch in the sampler's order, then validation."""
    setup, state = run.setup, run.state
    state.epoch += 1
    skip = setup.restore.skip(current.index, state.epoch)
    setup.sampler.set_epoch(state.epoch, skip * setup.strategy.shard.local_batch(setup.global_batch))
    yield ev.EpochStarted(state.epoch, setup.config.total_epochs, current.stage.name, len(current.pipeline))
    epoch = _epoch_state(run, current, skip)
    train_mode(setup.forward, frozen_bn=current.stage.bn == "frozen")
    batches = current.pipeline.epoch_batches(state.epoch, setup.sampler.order(), skip)
    fetch_start = time.perf_counter()
    for epoch.batch, (images, labels) in enumerate(batches, skip + 1):
        epoch.wait += time.perf_counter() - fetch_start
        setup.strategy.fault_point(epoch.epoch, epoch.batch)
        train_step(run, current, epoch, images, labels)
        yield from run.each("after_batch", epoch)
        if state.should_stop:
            return
        fetch_start = time.perf_counter()
    yield from end_epoch(run, current, epoch)


def train_step(run: Run, current: StageRun, epoch: EpochState, images: torch.Tensor | None, labels: torch.Tensor | None) -> None:
    """forward -> loss -> backward -> step on one batch, then the schedule's step."""
    setup = run.setup
    setup.strategy.check_batch(images is None, epoch.epoch, epoch.batch)
    epoch.stepped = epoch.nonfinite = False
    if images is not None and labels is not None:  # None: every image of the batch was unreadable
        try:
            _forward_backward(run, current, epoch, images, labels)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            where = f"epoch {epoch.epoch}, batch {epoch.batch}"
            raise out_of_memory(str(setup.device), int(setup.config.batch_size), where) from None
    epoch.lr = current_lr(current.optimizer)  # the rate this batch trained at, before the schedule moves on
    if epoch.closes_update:  # schedules count optimiser updates (--accumulate N: one per N batches)
        step_scheduler(current.scheduler, quiet=not epoch.stepped)
    run.state.step += 1


def _forward_backward(run: Run, current: StageRun, epoch: EpochState, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Forward, loss and backward of one batch; the optimiser steps after the last batch of its update.

    Under ``--accumulate N`` each batch's loss is scaled by its share of the update's images,
    so N batches of B add up the gradient one batch of N*B gives; gradients are synchronised
    between workers on the update's last batch only (``strategy.accumulating``).
    """
    setup, config, strategy = run.setup, run.setup.config, run.setup.strategy
    images = to_device(images, setup.device, config.channels_last)
    labels = labels.to(setup.device, non_blocking=True)
    images, targets, dominant = current.mix(images, labels) if current.mix is not None else (images, labels, labels)
    real, global_count = strategy.counts(setup.sampler.usable, setup.global_batch, epoch.batch - 1, labels.shape[0])
    if epoch.opens_update:
        current.optimizer.zero_grad(set_to_none=True)
    with strategy.accumulating(current.forward, sync=epoch.closes_update):
        with autocast(setup.device, config.amp):
            logits = current.forward(images)
            per_sample = current.criterion(logits.float(), targets)
        loss = strategy.scaled_loss(per_sample, real, global_count)
        (loss * _share(run, epoch, global_count)).backward()
        reported = strategy.mean_loss(loss.detach())  # the global batch's mean, as one process would report it
    # --skip-nonfinite must know before stepping: one sync per batch, only then.
    if config.skip_nonfinite and not bool(torch.isfinite(reported).item()):
        current.optimizer.zero_grad(set_to_none=True)  # with --accumulate: the update's gradients so far go too
        epoch.nonfinite = True
        return
    if epoch.closes_update:
        _update(run, current, epoch)
    epoch.pending.append(reported)
    epoch.pending_batches.append(epoch.batch)
    epoch.loss_sum += per_sample[:real].detach().double().sum()
    epoch.correct += (logits.detach()[:real].argmax(1) == dominant[:real]).sum()
    epoch.seen += real
    epoch.window_images += global_count  # images/s over all workers


def _share(run: Run, epoch: EpochState, global_count: int) -> float:
    """The batch's share of its update's images (1 without ``--accumulate``)."""
    if epoch.accumulate == 1:
        return 1.0
    setup = run.setup
    shard, usable = setup.strategy.shard, setup.sampler.usable
    total = sum(shard.counts(usable, setup.global_batch, b - 1)[1] for b in epoch.update_batches())
    return global_count / max(1, total)


def _update(run: Run, current: StageRun, epoch: EpochState) -> None:
    """Clip (``--clip-grad``, noting the norm before clipping), step the optimiser, drop the gradients."""
    clip = run.setup.config.clip_grad
    if clip:
        params = [p for group in current.optimizer.param_groups for p in group["params"] if p.grad is not None]
        epoch.pending_norms.append(torch.nn.utils.clip_grad_norm_(params, clip).detach())
    current.optimizer.step()
    current.optimizer.zero_grad(set_to_none=True)
    epoch.stepped = True


def end_epoch(run: Run, current: StageRun, epoch: EpochState) -> Iterator[ev.Event]:
    """Validate, yield ``EpochEnded``, then the hooks' epoch-end events (checkpoints, stops)."""
    setup, state = run.setup, run.state
    loss_sum, correct, seen = setup.strategy.sum_totals(*epoch.totals())
    if seen == 0:
        raise DataError("no training image of this epoch could be read; run `tlwork check-data` on the dataset")
    train_seconds = time.perf_counter() - epoch.started
    scores = _validate(run, current, epoch)
    live, ema = scores["live"], scores.get("ema")
    picked = _pick(scores, setup.splits.val_source == "test")
    improved = scores[picked]["top1"] > state.best
    state.val = {"top1": scores[picked]["top1"], "loss": scores[picked]["loss"], "weights": picked}
    if improved:
        state.best, state.best_epoch, state.best_val = state.val["top1"], epoch.epoch, dict(state.val)
    yield ev.EpochEnded(
        epoch.epoch, setup.config.total_epochs, current.stage.name, loss_sum.item() / max(1, seen),
        correct.item() / max(1, seen), live["loss"], live["top1"], epoch.lr, time.perf_counter() - epoch.started,
        seen / max(1e-9, train_seconds), ema["loss"] if ema else None, ema["top1"] if ema else None,
    )
    epoch.batch = epoch.batches
    yield from run.each("after_epoch", epoch, improved)


def _validate(run: Run, current: StageRun, epoch: EpochState) -> dict[str, dict]:
    """Loss and top-1 of each set of weights the run scores (the live ones; ``--ema``'s average)."""
    setup, scores = run.setup, {}
    for name, weights in run.weight_sets():
        try:
            with weights:
                scores[name] = validate(current.pipeline.forward, current.pipeline.val_batches(),
                                        len(setup.splits.class_names), setup.device, setup.config, setup.strategy)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            where = f"validating after epoch {epoch.epoch}"
            raise out_of_memory(str(setup.device), int(setup.config.batch_size), where) from None
    return scores


def _pick(scores: dict[str, dict], on_test: bool) -> str:
    """Which weights stand for the epoch: the better on held-out images (the live ones on a tie).

    Validating on the test split, choosing between them would tune to the test set: the
    average is kept whenever ``--ema`` is on, as timm keeps its EMA model.
    """
    if on_test:
        return "ema" if "ema" in scores else "live"
    return max(scores, key=lambda name: scores[name]["top1"])


def finish(run: Run) -> Iterator[ev.Event]:
    """Save the kept model (``--keep``: the best or the last epoch's) as a bundle and yield ``RunFinished``."""
    setup, state, config = run.setup, run.state, run.setup.config
    kept, val, line = _kept(run)
    if line:
        yield ev.MessageLogged("info", line)
    meta = {
        "run": run.session.run_dir.name, "val_accuracy": val["top1"], "dataset": config.dataset, "amp": config.amp,
        "batch_size": config.batch_size, "command_line": config.command_line(),
        "global_batch_size": setup.global_batch, "workers": setup.strategy.world,
        "kept_epoch": kept, "kept": config.keep if setup.splits.val_source != "test" else "last",
        "kept_weights": val.get("weights", "live"),
    }
    bundle = run.session.save_bundle(setup.model, setup.info.arch(), setup.splits.class_names, setup.pre, meta)
    yield ev.CheckpointSaved(str(bundle), state.epoch, state.step, "bundle")
    state.outcome = "finished"
    yield ev.RunFinished(str(run.session.run_dir), str(bundle), val["top1"], val["loss"], state.best, state.epoch,
                         time.time() - state.started, kept, meta["kept"], state.ended_early, meta["kept_weights"])


def _kept(run: Run) -> tuple[int, dict[str, float], str]:
    """(the epoch the bundle keeps, its validation figures, a run-log line), loading the kept weights into the model."""
    setup, state, config = run.setup, run.state, run.setup.config
    if setup.splits.val_source == "test":
        note = "" if config.keep == "last" else KEEPS_LAST_ON_TEST
        why = "validating on the test split, they are kept without comparing the two"
        return state.epoch, state.val, _use_current(run, state.val, why) + note
    if config.keep == "last" or state.best_epoch in (0, state.epoch):
        line = f"keeping epoch {state.epoch} (--keep {config.keep}): val_acc {state.val['top1']:.2%}"
        return state.epoch, state.val, _use_current(run, state.val, "they scored better than the live ones") + line
    tensors = run.session.best_weights()
    ema = state.best_val.get("weights") == "ema"
    if tensors is not None:
        load_model_state(setup.model, tensors, EMA_PREFIX if ema else "model.")
    return state.best_epoch, state.best_val, (
        f"keeping epoch {state.best_epoch}{' (its EMA weights)' if ema else ''}, the best on held-out validation "
        f"(val_acc {state.best:.2%}; the last epoch, {state.epoch}, scored {state.val['top1']:.2%}); --keep last keeps the last")


def _use_current(run: Run, val: dict[str, float], why: str) -> str:
    """Put ``--ema``'s average in the model when it stands for the current epoch; the run-log words for it."""
    if val.get("weights") != "ema" or run.ema is None:
        return ""
    load_model_state(run.setup.model, run.ema.tensors(), EMA_PREFIX)
    return f"the bundle holds the EMA weights (--ema; {why}); "
