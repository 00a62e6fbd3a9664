"""The training engine: ``train(config)`` is a generator of typed events.

It builds the data, the backbone and its new head, plans the stages of the chosen mode
(probe-then-finetune has two), and trains batch by batch. It syncs with the device only when
it emits an event, at most every ``EMIT_INTERVAL`` seconds, coalescing per-batch losses into
one ``BatchEnded``. Stopping is cooperative: ``stop`` is checked at each batch boundary; a
stop saves a checkpoint, yields ``RunStopped`` and returns. ``stop_after_epoch`` ends the run
cleanly at the next epoch boundary. The run directory records config.json, metrics.jsonl,
status.json, checkpoints and the final bundle.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch
from torch import nn
from torch.utils.data import Sampler

from core import events as ev
from core.bundle import save_bundle
from core.checkpoint import Position, save_checkpoint
from core.config import RunConfig
from core.data import Splits, load_splits
from core.device import autocast, configure, device_name, pick_device, seed_everything
from core.evaluate import Tally, default_workers, to_device
from core.freeze import freeze, train_mode, trainable_parameters
from core.models import ModelInfo, build_model, count_params
from core.pipeline import DataCache, make_pipeline
from core.runs import MetricsWriter, create_run_dir, write_json
from core.schedule import current_lr, make_optimizer, make_scheduler
from core.transforms import Preprocessing

EMIT_INTERVAL = 0.1


@dataclass(frozen=True)
class Stage:
    """A stretch of the run with one freeze mode, learning rate, augmentation and schedule."""

    name: str
    mode: str
    epochs: int
    lr: float
    augment: str
    scheduler: str


def plan_stages(config: RunConfig) -> list[Stage]:
    """The stages of a resolved config; probe-then-finetune probes as the notebook does first."""
    assert config.lr is not None and config.augment is not None and config.scheduler is not None
    if config.mode == "probe-then-finetune":
        assert config.probe_lr is not None
        return [
            Stage("probe", "linear-probe", config.probe_epochs, config.probe_lr, "none", "none"),
            Stage("finetune", "finetune", config.epochs, config.lr, config.augment, config.scheduler),
        ]
    name = {"linear-probe": "probe", "finetune": "finetune", "partial": "partial"}[config.mode]
    return [Stage(name, config.mode, config.epochs, config.lr, config.augment, config.scheduler)]


class EpochSampler(Sampler[int]):
    """A shuffled order that depends only on (seed, epoch), so a resumed run sees the same order."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Order for ``epoch``; ``skip`` drops the first samples (already trained on)."""
        self.epoch, self.skip = epoch, skip

    def order(self) -> list[int]:
        """The full permutation for the current epoch."""
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.size, generator=gen).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.skip:])

    def __len__(self) -> int:
        return self.size - self.skip


def preprocessing_for(config: RunConfig, splits: Splits, info: ModelInfo) -> Preprocessing:
    """Input size, normalisation (the dataset's or the backbone's) and interpolation.

    A backbone that fixes its input (an ``hf:`` model: its image processor's size, mean and
    std, which its position embeddings and pretraining assume) gets exactly that.
    """
    if info.size is not None:
        return Preprocessing(info.size, tuple(info.mean), tuple(info.std), info.interpolation)
    if config.normalize == "backbone":
        mean, std = info.mean, info.std
    else:
        mean, std = splits.mean, splits.std
    return Preprocessing(config.image_size, tuple(mean), tuple(std), info.interpolation)


class _Run:
    """State shared by the steps of one run (kept off the generator's locals for clarity)."""

    def __init__(self, config: RunConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.step = 0
        self.best = -1.0
        self.started = time.time()


def train(
    config: RunConfig,
    *,
    stop: threading.Event | None = None,
    stop_after_epoch: threading.Event | None = None,
) -> Iterator[ev.Event]:
    """Train as ``config`` says, yielding events; see the module docstring."""
    config = config.resolved()
    device = pick_device(config.device)
    configure(device)
    seed_everything(config.seed)
    splits = load_splits(config.dataset, config.data_dir, config.val_split, config.seed)
    model, info = build_model(config.backbone, len(splits.class_names), config.weights, splits.class_names)
    pre = preprocessing_for(config, splits, info)
    model.to(device)
    if config.channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    forward: nn.Module = torch.compile(model) if config.compile else model  # type: ignore[assignment]
    stages = plan_stages(config)
    workers = default_workers(device) if config.workers is None else config.workers
    sampler = EpochSampler(len(splits.train), config.seed)
    steps_per_epoch = -(-len(splits.train) // config.batch_size)
    total_steps = steps_per_epoch * sum(s.epochs for s in stages)
    cache = DataCache(splits, pre, device, config.data)

    run_dir = create_run_dir(config)
    (run_dir / "config.json").write_text(config.to_json() + "\n")
    state = _Run(config, device)
    status = {"status": "running", "started": state.started, "pid": _pid()}
    write_json(run_dir / "status.json", status)
    metrics = MetricsWriter(run_dir / "metrics.jsonl")

    def emit(event: ev.Event) -> ev.Event:
        if not isinstance(event, ev.BatchEnded):
            metrics.write(ev.to_record(event))
        return event

    outcome = "failed"
    try:
        freeze(model, info, stages[0].mode, config.unfreeze_stages)
        yield emit(
            ev.RunStarted(
                str(run_dir), config.to_dict(), config.command_line(), str(device), device_name(device),
                tuple(splits.class_names), len(splits.train), len(splits.val), config.total_epochs, total_steps,
                count_params(model, trainable_only=True), count_params(model),
            )
        )
        if splits.val_source == "held-out":
            yield emit(ev.MessageLogged("info", f"validating on {len(splits.val)} held-out training images (--val-split {config.val_split:g})"))
        epoch = 0
        val = {"top1": 0.0, "loss": float("nan")}
        for stage_index, stage in enumerate(stages):
            freeze(model, info, stage.mode, config.unfreeze_stages)
            params = trainable_parameters(model)
            optimizer = make_optimizer(params, config.optimizer, stage.lr, config.momentum, config.weight_decay)
            scheduler = make_scheduler(
                optimizer, stage.scheduler, steps_per_epoch, stage.epochs, config.step_size, config.step_gamma, config.warmup_epochs
            )
            loader = make_pipeline(
                cache=cache, model=model, forward=forward, info=info, stage_mode=stage.mode, augment=stage.augment,
                batch_size=config.batch_size, seed=config.seed, workers=workers, channels_last=config.channels_last,
                amp=config.amp, cache_features=config.cache_features, sampler=sampler,
            )
            yield emit(ev.MessageLogged("info", f"stage {stage.name}: {loader.kind} data path"))
            criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
            yield emit(ev.StageStarted(stage.name, epoch + 1, stage.epochs, stage.lr, sum(p.numel() for p in params)))
            for _ in range(stage.epochs):
                epoch += 1
                sampler.set_epoch(epoch)
                yield emit(ev.EpochStarted(epoch, config.total_epochs, stage.name, len(loader)))
                epoch_start = time.perf_counter()
                batches = len(loader)
                train_mode(forward)
                loss_sum = torch.zeros((), device=device, dtype=torch.float64)
                correct = torch.zeros((), device=device, dtype=torch.long)
                seen = 0
                pending: list[torch.Tensor] = []
                window_start = last_emit = time.perf_counter()
                window_images = 0
                wait = 0.0
                fetch_start = time.perf_counter()
                for batch_index, (images, labels) in enumerate(loader.epoch_batches(epoch, sampler.order(), 0), 1):
                    wait += time.perf_counter() - fetch_start
                    if stop is not None and stop.is_set():
                        path = save_checkpoint(
                            run_dir / "checkpoint-last", model, optimizer, scheduler,
                            Position(stage_index, epoch, batch_index - 1, state.step, state.best),
                        )
                        yield emit(ev.CheckpointSaved(str(path), epoch, state.step, "stop"))
                        outcome = "stopped"
                        yield emit(ev.RunStopped(str(run_dir), str(path), epoch, state.step, "stop requested"))
                        return
                    images = to_device(images, device, config.channels_last)
                    labels = labels.to(device, non_blocking=True)
                    with autocast(device, config.amp):
                        logits = loader.forward(images)
                        loss = criterion(logits.float(), labels)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    state.step += 1
                    detached = loss.detach()
                    pending.append(detached)
                    loss_sum += detached.double() * labels.shape[0]
                    correct += (logits.detach().argmax(1) == labels).sum()
                    seen += labels.shape[0]
                    window_images += labels.shape[0]
                    now = time.perf_counter()
                    if now - last_emit >= EMIT_INTERVAL or batch_index == batches:
                        losses = torch.stack(pending).float().tolist()  # the one host sync per emit
                        now = time.perf_counter()
                        elapsed = time.time() - state.started
                        rate = window_images / max(1e-9, now - window_start)
                        eta = elapsed / state.step * (total_steps - state.step)
                        yield ev.BatchEnded(
                            epoch, batch_index, batches, state.step, total_steps, tuple(losses),
                            current_lr(optimizer), rate, min(1.0, wait / max(1e-9, now - window_start)),
                            elapsed, eta, stage.name,
                        )
                        pending, window_images, wait = [], 0, 0.0
                        window_start = last_emit = time.perf_counter()
                    fetch_start = time.perf_counter()
                train_seconds = time.perf_counter() - epoch_start
                val = validate(loader.forward, loader.val_batches(), len(splits.class_names), device, config)
                state.best = max(state.best, val["top1"])
                yield emit(
                    ev.EpochEnded(
                        epoch, config.total_epochs, stage.name, loss_sum.item() / max(1, seen), correct.item() / max(1, seen),
                        val["loss"], val["top1"], current_lr(optimizer), time.perf_counter() - epoch_start,
                        seen / max(1e-9, train_seconds),
                    )
                )
                path = save_checkpoint(
                    run_dir / "checkpoint-last", model, optimizer, scheduler,
                    Position(stage_index, epoch, batches, state.step, state.best),
                )
                yield emit(ev.CheckpointSaved(str(path), epoch, state.step, "epoch"))
                if stop_after_epoch is not None and stop_after_epoch.is_set() and epoch < config.total_epochs:
                    outcome = "stopped"
                    yield emit(ev.RunStopped(str(run_dir), str(path), epoch, state.step, "stopped after epoch"))
                    return
        bundle = save_bundle(
            run_dir, model, info.arch(), splits.class_names, pre,
            {"run": run_dir.name, "val_accuracy": val["top1"], "dataset": config.dataset, "amp": config.amp,
             "batch_size": config.batch_size, "command_line": config.command_line()},
        )
        yield emit(ev.CheckpointSaved(str(bundle), epoch, state.step, "bundle"))
        outcome = "finished"
        yield emit(
            ev.RunFinished(str(run_dir), str(bundle), val["top1"], val["loss"], state.best, epoch, time.time() - state.started)
        )
    except GeneratorExit:
        outcome = "interrupted"
        raise
    except BaseException as exc:
        status["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        metrics.close()
        status.update(status=outcome, seconds=round(time.time() - state.started, 3), step=state.step)
        write_json(run_dir / "status.json", status)


def validate(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int, device: torch.device, config: RunConfig) -> dict[str, Any]:
    """Loss and top-1 on the validation loader, in eval mode (the caller restores train mode)."""
    model.eval()
    tally = Tally(num_classes, device)
    with torch.inference_mode(), autocast(device, config.amp):
        for images, labels in loader:
            tally.update(model(to_device(images, device, config.channels_last)), labels.to(device, non_blocking=True))
    return tally.summary()


def _pid() -> int:
    import os

    return os.getpid()
