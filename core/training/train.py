"""The training engine: ``train(config)`` is a generator of typed events.

It builds the data, the backbone and its new head, plans the stages of the chosen mode
(probe-then-finetune has two), and trains batch by batch. It syncs with the device only when
it emits an event, at most every ``EMIT_INTERVAL`` seconds, coalescing per-batch losses into
one ``BatchEnded``. Stopping is cooperative: ``stop`` is checked at each batch boundary; a
stop saves a checkpoint, yields ``RunStopped`` and returns. ``stop_after_epoch`` ends the run
cleanly at the next epoch boundary. The run directory records config.json, metrics.jsonl,
status.json, checkpoints and the final bundle.

Under torchrun (``core.training.strategy``) every worker runs this same loop on its share of each
global batch (the per-device batch times the number of workers) through
DistributedDataParallel; only rank 0 writes the run directory and yields events, and the
figures it reports (loss, accuracy, images/s, validation) are over all workers.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from core import events as ev
from core.config import RunConfig
from core.data.datasets import load_splits
from core.data.loaders import default_workers, to_device
from core.data.safedata import SkipLog, Unreadable, drain
from core.data.sampler import EpochSampler
from core.device import autocast, channels_last_ok, configure, device_name, is_out_of_memory, seed_everything
from core.errors import ConfigError, DataError, NonFiniteLoss, out_of_memory, write_failed
from core.inference.evaluate import Tally
from core.models.build import build_model, count_params
from core.models.freeze import freeze, train_mode, trainable_parameters
from core.runs.bundle import save_bundle
from core.runs.checkpoint import (
    Position,
    copy_checkpoint,
    load_model_state,
    load_optimizer_state,
    load_scheduler_state,
    restore_rng,
    save_checkpoint,
)
from core.runs.lock import RunLock
from core.runs.resumption import BEST, LAST, ResumePoint, check_same_data, saved_preprocessing, start_point
from core.runs.store import MetricsWriter, create_run_dir, read_status, write_json
from core.training import strategy as distributed
from core.training.batchsize import auto_batch_size
from core.training.features import ExtractionStopped
from core.training.guards import finite_weights, first_nonfinite, kept, nonfinite_advice, nonfinite_message
from core.training.pipeline import DataCache, make_pipeline, recorded_paths
from core.training.plan import plan_stages, preprocessing_for
from core.training.schedule import current_lr, make_optimizer, make_scheduler

EMIT_INTERVAL = 0.1


class _Run:
    """State shared by the steps of one run (kept off the generator's locals for clarity)."""

    def __init__(self, config: RunConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.step = 0
        self.first_step = 0  # the step this process started at (a resumed run's ETA counts from it)
        self.best = -1.0
        self.nonfinite = 0  # batches skipped for a non-finite loss (--skip-nonfinite)
        self.last_checkpoint: str | None = None  # "path (epoch E, step S)" of the last good checkpoint
        self.started = time.time()


def train(
    config: RunConfig,
    *,
    stop: threading.Event | None = None,
    stop_after_epoch: threading.Event | None = None,
    resume: ResumePoint | None = None,
) -> Iterator[ev.Event]:
    """Train as ``config`` says, yielding events; see the module docstring.

    ``resume`` (from ``core.training.resume.prepare``) continues a run in its own directory from its
    checkpoint: same sample order, stage, schedule and RNG states. Started by torchrun, it
    joins the workers' process group and leaves it however the run ends; ranks other than 0
    yield nothing.
    """
    ctx, joined = distributed.ensure(config.device)
    try:
        events = _train(config, ctx, stop=stop, stop_after_epoch=stop_after_epoch, resume=resume)
        if ctx.is_main:
            yield from events
        else:
            for _ in events:  # the other ranks train in step with rank 0, silently
                pass
    except Exception as exc:
        if ctx.active and distributed.is_lost_worker(exc):
            raise distributed.worker_lost(ctx, exc) from None
        raise
    finally:
        if joined:
            distributed.teardown()


def _train(
    config: RunConfig,
    ctx: distributed.Context,
    *,
    stop: threading.Event | None,
    stop_after_epoch: threading.Event | None,
    resume: ResumePoint | None,
) -> Iterator[ev.Event]:
    config = config.resolved()
    device = distributed.rank_device(config.device, ctx.local_rank, ctx.world)
    if config.sync_bn and device.type != "cuda":
        raise ConfigError(
            "--sync-bn needs CUDA GPUs (PyTorch's SyncBatchNorm runs only there); drop it on this device, "
            "where each worker normalises its own share of the batch"
        )
    configure(device, config.cudnn_benchmark)
    seed_everything(config.seed)
    # Downloads (datasets, ImageNet weights) happen once per machine, before the other workers look.
    downloads = config.dataset in ("cifar10", "cifar100") or config.weights == "imagenet" or config.backbone.startswith("hf:")
    with distributed.local_main_first(downloads, ctx):
        splits = load_splits(config.dataset, config.data_dir, config.val_split, config.seed)
        # A resumed run's weights come from its checkpoint: the weights file is not read again.
        weights = "none" if resume is not None else config.weights
        model, info = build_model(config.backbone, len(splits.class_names), weights, splits.class_names)
    pre = preprocessing_for(config, splits, info) if resume is None else saved_preprocessing(resume.meta)
    model.to(device)
    if config.sync_bn and ctx.active:
        model = distributed.convert_sync_bn(model)
    if channels_last_ok(device, config.channels_last):
        model.to(memory_format=torch.channels_last)
    stages = plan_stages(config)
    notes: list[str] = []
    if config.batch_size == "auto":
        found, note = auto_batch_size(model, info, config, stages, device, len(splits.class_names), len(splits.train))
        found = distributed.agree_min(found, ctx)  # every worker's GPU must hold it
        config = dataclasses.replace(config, batch_size=found)
        notes.append(note)
    assert isinstance(config.batch_size, int)
    batch_size = config.batch_size
    forward: nn.Module = torch.compile(model) if config.compile else model  # type: ignore[assignment]
    workers = default_workers(device) if config.workers is None else config.workers
    # --batch-size is per device; a resumed run keeps its global batch on any number of workers.
    global_batch = int(resume.meta.get("global_batch_size", batch_size)) if resume is not None else batch_size * ctx.world
    local_batch = ctx.shard.local_batch(global_batch)
    sampler = EpochSampler(len(splits.train), config.seed, ctx.shard, global_batch)
    steps_per_epoch = -(-sampler.usable // global_batch)
    total_steps = steps_per_epoch * sum(s.epochs for s in stages)
    cache = DataCache(splits, pre, device, config.data, recorded_paths(resume.meta if resume is not None else None))
    notes.extend(cache.notes())
    skips = SkipLog(config.strict)
    screened = [f"left out unreadable image {path}: {reason}" for path, _, reason in splits.unreadable]
    if splits.unreadable and config.strict:
        skips.add([Unreadable(-1, *splits.unreadable[0])])  # raises the --strict error

    if resume is None:
        if ctx.is_main:
            run_dir = Path(config.runs_dir)
            try:  # a full or read-only disk is exit 8 with a message, not a traceback
                run_dir = create_run_dir(config)
                (run_dir / "config.json").write_text(config.to_json() + "\n")
            except OSError as exc:
                raise write_failed(run_dir, exc, None) from None
        run_dir = Path(distributed.broadcast(str(run_dir) if ctx.is_main else "", ctx))
    else:
        run_dir = resume.run_dir
        check_same_data(resume.meta, splits.class_names, len(splits.train), batch_size)
        load_model_state(model, resume.tensors)
    lock = RunLock(run_dir)
    if ctx.is_main and not lock.acquire():
        raise ConfigError(f"run {run_dir} is already being trained by another process (pid {lock.holder()})")
    state = _Run(config, device)
    start = start_point([s.epochs for s in stages], resume.position if resume else None)
    if resume is not None:
        state.step = state.first_step = resume.position.step
        state.best = resume.position.best_val_accuracy
        state.nonfinite = resume.position.nonfinite_skipped
        state.last_checkpoint = f"{resume.checkpoint} (epoch {resume.position.epoch}, step {resume.position.step})"
    status = read_status(run_dir) if resume is not None else {}
    status.update({"status": "running", "started": status.get("started", state.started), "pid": os.getpid()})
    if resume is not None:
        status["resumed"] = int(status.get("resumed", 0)) + 1
    status.pop("error", None)
    if ctx.active:
        status["workers"] = ctx.world
    if ctx.is_main:
        try:
            write_json(run_dir / "status.json", status)
        except OSError as exc:
            raise write_failed(run_dir / "status.json", exc, state.last_checkpoint) from None
    metrics: Any = MetricsWriter(run_dir / "metrics.jsonl") if ctx.is_main else distributed.NullMetrics(run_dir / "metrics.jsonl")
    origin = resume.meta.get("cwd") if resume is not None else os.getcwd()
    last_val = resume.meta.get("val") if resume is not None else None
    val: dict[str, Any] = dict(last_val) if isinstance(last_val, dict) else {"top1": 0.0, "loss": float("nan")}

    def emit(event: ev.Event) -> ev.Event:
        if not isinstance(event, ev.BatchEnded):
            try:
                metrics.write(ev.to_record(event))
            except OSError as exc:
                raise write_failed(metrics.path, exc, state.last_checkpoint) from None
        return event

    def checkpoint(
        kind: str, stage_index: int, epoch: int, batch: int, done: bool, totals: tuple[Any, Any, int] | None,
        optimizer: torch.optim.Optimizer, scheduler: Any, unchecked: tuple[list[torch.Tensor], list[int]] | None = None,
    ) -> ev.CheckpointSaved:
        # Never replace the last good checkpoint with weights a NaN has already reached.
        if unchecked and unchecked[0]:
            bad = first_nonfinite(torch.stack(unchecked[0]).float().tolist(), unchecked[1])
            if bad is not None:
                raise NonFiniteLoss(nonfinite_message(bad[1], epoch, bad[0], state.step - batch + bad[0], state.last_checkpoint))
        if not finite_weights(model):
            raise NonFiniteLoss(
                f"the weights became NaN or infinite by epoch {epoch}, batch {batch} (step {state.step}); the run stopped "
                f"and {kept(state.last_checkpoint)}; {nonfinite_advice(state.last_checkpoint)}"
            )
        if totals:
            totals = distributed.sum_totals(totals[0], totals[1], int(totals[2]), ctx)
        sums = (float(totals[0].item()), int(totals[1].item()), int(totals[2])) if totals else (0.0, 0, 0)
        position = Position(stage_index, epoch, batch, state.step, state.best, done, state.nonfinite, *sums)
        extra = {
            "cwd": origin, "preprocessing": pre.to_dict(), "class_names": list(splits.class_names),
            "train_size": len(splits.train), "batch_size": batch_size, "stages": [s.name for s in stages], "val": val,
            "global_batch_size": global_batch, "workers": ctx.world, "data_paths": cache.paths(),
        }
        if ctx.is_main:
            path = save_checkpoint(run_dir / LAST, model, optimizer, scheduler, position, extra)
        else:
            path = (run_dir / LAST).with_suffix(".json")
        state.last_checkpoint = f"{path} (epoch {epoch}, step {state.step})"
        return ev.CheckpointSaved(str(path), epoch, state.step, kind)

    outcome = "failed"
    try:
        freeze(model, info, stages[min(start.stage, len(stages) - 1)].mode, config.unfreeze_stages)
        yield emit(
            ev.RunStarted(
                str(run_dir), config.to_dict(), config.command_line(), str(device), device_name(device),
                tuple(splits.class_names), len(splits.train), len(splits.val), config.total_epochs, total_steps,
                count_params(model, trainable_only=True), count_params(model), start.epochs_done, state.step,
            )
        )
        for note in notes:
            yield emit(ev.MessageLogged("info", note))
        if ctx.active:
            yield emit(ev.MessageLogged("info", f"data-parallel on {ctx.world} workers ({ctx.backend}): global batch "
                                        f"{global_batch}, {local_batch} per worker"))
        if resume is not None:
            yield emit(ev.MessageLogged("info", f"resumed from {resume.checkpoint}: {start.describe(steps_per_epoch)}"))
        for line in screened:
            yield emit(ev.MessageLogged("warning", line))
        if screened:
            yield emit(ev.MessageLogged("warning", f"{len(screened)} unreadable image(s) left out (see `tlwork check-data`; --strict stops instead)"))
        if splits.val_source == "held-out":
            yield emit(ev.MessageLogged("info", f"validating on {len(splits.val)} held-out training images (--val-split {config.val_split:g})"))
        epoch = start.epochs_done
        for stage_index, stage in enumerate(stages):
            if stage_index < start.stage:
                continue
            freeze(model, info, stage.mode, config.unfreeze_stages)
            params = trainable_parameters(model)
            optimizer = make_optimizer(params, config.optimizer, stage.lr, config.momentum, config.weight_decay)
            scheduler = make_scheduler(
                optimizer, stage.scheduler, steps_per_epoch, stage.epochs, config.step_size, config.step_gamma, config.warmup_epochs
            )
            resumed_here = resume is not None and stage_index == start.stage
            if resume is not None and resumed_here and start.same_stage:
                load_optimizer_state(optimizer, resume.meta, resume.tensors)
                load_scheduler_state(scheduler, resume.meta)
            try:
                loader = make_pipeline(
                    cache=cache, model=model, forward=forward, info=info, stage_mode=stage.mode, augment=stage.augment,
                    batch_size=global_batch, seed=config.seed, workers=workers, channels_last=config.channels_last,
                    amp=config.amp, cache_features=config.cache_features, sampler=sampler, shard=ctx.shard,
                    stop=None if ctx.active else stop,  # workers gather features together: they stop at a batch
                )
            except ExtractionStopped:
                # Nothing of this stage has trained: the last checkpoint (if any) is where it resumes.
                outcome = "stopped"
                last = (run_dir / LAST).with_suffix(".json")
                yield emit(ev.RunStopped(str(run_dir), str(last) if last.exists() else "", epoch, state.step, "stop requested"))
                return
            step_forward = loader.forward  # what training batches run through: DDP's wrapper with workers
            if ctx.active:
                example = (cache.features["train"].features[:1].float() if loader.kind == "features"
                           else torch.zeros(1, 3, pre.size, pre.size, device=device))
                step_forward = distributed.wrap(loader.forward, ctx, device, example, stage.mode != "linear-probe")
            yield emit(ev.MessageLogged("info", f"stage {stage.name}: {loader.kind} data path"))
            # Several workers weight each sample by its share of the global batch (distributed.scaled_loss).
            criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing, reduction="none" if ctx.active else "mean")
            first_epoch = sum(s.epochs for s in stages[:stage_index]) + 1
            yield emit(ev.StageStarted(stage.name, first_epoch, stage.epochs, stage.lr, sum(p.numel() for p in params)))
            if resume is not None and resumed_here:
                # Last, so nothing between the checkpoint and the next batch draws from the RNGs.
                restore_rng(resume.meta, resume.tensors)
            distributed.reseed_rank(config.seed, state.step, ctx)
            for _ in range(start.epochs_in_stage if resumed_here else 0, stage.epochs):
                epoch += 1
                skip = start.batch if resumed_here and epoch == start.epochs_done + 1 else 0
                sampler.set_epoch(epoch, skip * local_batch)
                batches = len(loader)
                yield emit(ev.EpochStarted(epoch, config.total_epochs, stage.name, batches))
                epoch_start = time.perf_counter()
                batch_lr = current_lr(optimizer)
                train_mode(forward)
                loss_sum = torch.zeros((), device=device, dtype=torch.float64)
                correct = torch.zeros((), device=device, dtype=torch.long)
                seen = 0
                if skip and resume is not None and ctx.is_main:  # the resumed epoch's totals so far (global: once)
                    loss_sum += resume.position.loss_sum
                    correct += resume.position.correct
                    seen = resume.position.seen
                pending: list[torch.Tensor] = []
                pending_batches: list[int] = []
                window_start = last_emit = time.perf_counter()
                window_images = 0
                wait = 0.0
                fetch_start = time.perf_counter()
                for batch_index, (images, labels) in enumerate(loader.epoch_batches(epoch, sampler.order(), skip), skip + 1):
                    wait += time.perf_counter() - fetch_start
                    distributed.fault_point("batch", epoch, batch_index, ctx)
                    for line in skips.add(drain(cache.unreadable)):
                        yield emit(ev.MessageLogged("warning", line))
                    stepped = False
                    if images is None and ctx.active:  # the other workers are waiting for this one's gradients
                        raise DataError(f"every image of a batch on worker {ctx.rank} was unreadable (epoch {epoch}, batch "
                                        f"{batch_index}); run `tlwork check-data` on the dataset and remove them")
                    if images is not None:  # None: every image of the batch was unreadable
                        try:
                            images = to_device(images, device, config.channels_last)
                            labels = labels.to(device, non_blocking=True)
                            with autocast(device, config.amp):
                                logits = step_forward(images)
                                loss = criterion(logits.float(), labels)
                            if ctx.active:
                                real, global_count = ctx.shard.counts(sampler.usable, global_batch, batch_index - 1)
                                real = min(real, labels.shape[0])
                                per_sample, loss = loss, distributed.scaled_loss(loss, real, global_count, ctx.world)
                            optimizer.zero_grad(set_to_none=True)
                            loss.backward()
                            if ctx.active:  # the global batch's mean loss, as one process would report it
                                loss = distributed.all_sum(loss.detach().clone(), ctx) / ctx.world
                            # --skip-nonfinite must know before stepping: one sync per batch, only then.
                            stepped = not config.skip_nonfinite or bool(torch.isfinite(loss).item())
                            if stepped:
                                optimizer.step()
                        except Exception as exc:
                            if not is_out_of_memory(exc):
                                raise
                            raise out_of_memory(str(device), batch_size, f"epoch {epoch}, batch {batch_index}") from None
                        if not stepped:
                            optimizer.zero_grad(set_to_none=True)
                            state.nonfinite += 1
                            yield emit(ev.MessageLogged("warning", f"epoch {epoch}, batch {batch_index}: loss is not finite; "
                                                        f"batch skipped ({state.nonfinite} of at most {config.max_nonfinite})"))
                            if state.nonfinite > config.max_nonfinite:
                                raise NonFiniteLoss(
                                    f"{state.nonfinite} batches had a non-finite loss, more than --max-nonfinite "
                                    f"{config.max_nonfinite} (the last at epoch {epoch}, batch {batch_index}); the run stopped "
                                    f"and {kept(state.last_checkpoint)}; lower --lr"
                                )
                    batch_lr = current_lr(optimizer)  # the rate this batch trained at, before the schedule moves on
                    step_scheduler(scheduler, quiet=not stepped)
                    state.step += 1
                    if stepped:
                        detached = loss.detach()
                        pending.append(detached)
                        pending_batches.append(batch_index)
                        if ctx.active:  # this worker's real samples; the epoch's totals are summed at its end
                            loss_sum += per_sample[:real].detach().double().sum()
                            correct += (logits.detach()[:real].argmax(1) == labels[:real]).sum()
                            seen += real
                            window_images += global_count  # images/s over all workers
                        else:
                            loss_sum += detached.double() * labels.shape[0]
                            correct += (logits.detach().argmax(1) == labels).sum()
                            seen += labels.shape[0]
                            window_images += labels.shape[0]
                    now = time.perf_counter()
                    if pending and (now - last_emit >= EMIT_INTERVAL or batch_index == batches):
                        losses = torch.stack(pending).float().tolist()  # the one host sync per emit
                        now = time.perf_counter()
                        elapsed = time.time() - state.started
                        rate = window_images / max(1e-9, now - window_start)
                        eta = elapsed / max(1, state.step - state.first_step) * (total_steps - state.step)
                        yield ev.BatchEnded(
                            epoch, batch_index, batches, state.step, total_steps, tuple(losses),
                            batch_lr, rate, min(1.0, wait / max(1e-9, now - window_start)),
                            elapsed, eta, stage.name,
                        )
                        bad = first_nonfinite(losses, pending_batches)
                        if bad is not None:
                            message = nonfinite_message(bad[1], epoch, bad[0], state.step - batch_index + bad[0], state.last_checkpoint)
                            yield emit(ev.MessageLogged("error", message))
                            raise NonFiniteLoss(message)
                        pending, pending_batches, window_images, wait = [], [], 0, 0.0
                        window_start = last_emit = time.perf_counter()
                    totals = (loss_sum, correct, seen)
                    unchecked = (pending, pending_batches)
                    if config.checkpoint_every and state.step % config.checkpoint_every == 0 and batch_index < batches:
                        yield emit(checkpoint("batch", stage_index, epoch, batch_index, False, totals, optimizer, scheduler, unchecked))
                    if distributed.agree(stop is not None and stop.is_set(), ctx):  # every worker stops at the same batch
                        saved = checkpoint("stop", stage_index, epoch, batch_index, False, totals, optimizer, scheduler, unchecked)
                        yield emit(saved)
                        outcome = "stopped"
                        yield emit(ev.RunStopped(str(run_dir), saved.path, epoch, state.step, "stop requested"))
                        return
                    fetch_start = time.perf_counter()
                loss_sum, correct, seen = distributed.sum_totals(loss_sum, correct, seen, ctx)
                if seen == 0:
                    raise DataError("no training image of this epoch could be read; run `tlwork check-data` on the dataset")
                train_seconds = time.perf_counter() - epoch_start
                try:
                    val = validate(loader.forward, loader.val_batches(), len(splits.class_names), device, config)
                except Exception as exc:
                    if not is_out_of_memory(exc):
                        raise
                    raise out_of_memory(str(device), batch_size, f"validating after epoch {epoch}") from None
                improved = val["top1"] > state.best
                state.best = max(state.best, val["top1"])
                yield emit(
                    ev.EpochEnded(
                        epoch, config.total_epochs, stage.name, loss_sum.item() / max(1, seen), correct.item() / max(1, seen),
                        val["loss"], val["top1"], batch_lr, time.perf_counter() - epoch_start,
                        seen / max(1e-9, train_seconds),
                    )
                )
                for line in skips.add(drain(cache.unreadable)):
                    yield emit(ev.MessageLogged("warning", line))
                summary = skips.end_epoch(epoch)
                if summary:
                    yield emit(ev.MessageLogged("warning", summary))
                val = {"top1": val["top1"], "loss": val["loss"]}
                saved = checkpoint("epoch", stage_index, epoch, batches, True, None, optimizer, scheduler)
                if improved and ctx.is_main:
                    copy_checkpoint(run_dir / LAST, run_dir / BEST)
                yield emit(saved)
                stopping = distributed.agree(stop is not None and stop.is_set(), ctx)
                after_epoch = distributed.agree(stop_after_epoch is not None and stop_after_epoch.is_set(), ctx)
                if (stopping or after_epoch) and epoch < config.total_epochs:
                    outcome = "stopped"
                    reason = "stop requested" if stopping else "stopped after epoch"
                    yield emit(ev.RunStopped(str(run_dir), saved.path, epoch, state.step, reason))
                    return
        try:
            bundle = save_bundle(
                run_dir, model, info.arch(), splits.class_names, pre,
                {"run": run_dir.name, "val_accuracy": val["top1"], "dataset": config.dataset, "amp": config.amp,
                 "batch_size": batch_size, "command_line": config.command_line(),
                 "global_batch_size": global_batch, "workers": ctx.world},
            ) if ctx.is_main else run_dir / "model.json"
        except OSError as exc:
            raise write_failed(run_dir / "model.safetensors", exc, state.last_checkpoint) from None
        yield emit(ev.CheckpointSaved(str(bundle), epoch, state.step, "bundle"))
        outcome = "finished"
        yield emit(
            ev.RunFinished(str(run_dir), str(bundle), val["top1"], val["loss"], state.best, epoch, time.time() - state.started)
        )
    except (GeneratorExit, KeyboardInterrupt):
        outcome = "interrupted"
        raise
    except BaseException as exc:
        lost = distributed.worker_lost(ctx, exc) if ctx.active and distributed.is_lost_worker(exc) else None
        status["error"] = f"{type(lost or exc).__name__}: {lost or exc}"
        if lost is not None:
            raise lost from None
        raise
    finally:
        metrics.close()
        status.update(status=outcome, seconds=round(time.time() - state.started, 3), step=state.step, data_paths=cache.paths())
        try:
            if ctx.is_main:
                write_json(run_dir / "status.json", status)
        except OSError:  # a full disk: the error being raised says more than this would
            pass
        lock.release()


def validate(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int, device: torch.device, config: RunConfig) -> dict[str, Any]:
    """Loss and top-1 on the validation loader, in eval mode (the caller restores train mode)."""
    model.eval()
    tally = Tally(num_classes, device)
    with torch.inference_mode(), autocast(device, config.amp):
        for images, labels in loader:
            tally.update(model(to_device(images, device, config.channels_last)), labels.to(device, non_blocking=True))
    return distributed.reduce_tally(tally).summary()  # each worker scored its share: sum them


def step_scheduler(scheduler: Any, quiet: bool = False) -> None:
    """Step the per-batch schedule; ``quiet`` hides torch's warning for a batch with no optimiser step."""
    if not quiet:
        scheduler.step()
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        scheduler.step()
