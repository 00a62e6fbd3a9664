"""Set-up: everything a run needs, built before it starts (nothing here yields events).

``build`` resolves the config, picks the device, seeds every RNG, loads the dataset, builds
the backbone with its new head (a resumed run's weights come from its checkpoint, not the
weights file), fixes the preprocessing, plans the stages, finds the batch size, and makes
the sample order and the data cache that the stages share. The ``Setup`` it returns is the
run's fixed part; ``core.training.loop`` trains with it.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from core.config import RunConfig
from core.data.checkdata import imbalance_line
from core.data.datasets import Splits, load_splits, targets_of
from core.data.exclude import read_exclude
from core.data.loaders import default_workers
from core.data.safedata import SkipLog, Unreadable
from core.data.sampler import BalancedSampler, EpochSampler
from core.data.transforms import Preprocessing
from core.device import channels_last_ok, configure, seed_everything
from core.errors import ConfigError
from core.models.build import build_model
from core.models.info import ModelInfo
from core.models.shipped import describe_weights, resolve_weights
from core.runs.checkpoint import load_model_state
from core.runs.resumption import ResumePoint, check_same_data, saved_preprocessing
from core.training.batchsize import auto_batch_size
from core.training.pipeline import DataCache, recorded_paths
from core.training.plan import Stage, plan_stages, preprocessing_for
from core.training.restore import Restore
from core.training.strategy import SingleProcess


@dataclass
class Setup:
    """The fixed part of a run."""

    config: RunConfig  # resolved, with an integer batch size
    strategy: SingleProcess
    device: torch.device
    splits: Splits
    model: nn.Module
    info: ModelInfo
    pre: Preprocessing
    stages: list[Stage]
    forward: nn.Module  # what batches run through: the model, or torch.compile's wrapper of it
    workers: int
    global_batch: int  # the per-device batch times the workers (a resumed run keeps its own)
    sampler: EpochSampler
    cache: DataCache
    skips: SkipLog
    restore: Restore
    notes: list[str] = field(default_factory=list)  # info lines for the run log
    screened: list[str] = field(default_factory=list)  # images left out before training, as warning lines

    @property
    def steps_per_epoch(self) -> int:
        """Optimiser steps in one epoch."""
        return -(-self.sampler.usable // self.global_batch)

    @property
    def updates_per_epoch(self) -> int:
        """Optimiser updates in one epoch (what schedules count): one per ``--accumulate`` batches."""
        return -(-self.steps_per_epoch // self.config.accumulate)

    @property
    def total_steps(self) -> int:
        """Optimiser steps over the whole run."""
        return self.steps_per_epoch * sum(s.epochs for s in self.stages)


def build(config: RunConfig, strategy: SingleProcess, resume: ResumePoint | None,
          build_fn: Callable[..., tuple[nn.Module, ModelInfo]] | None = None) -> Setup:
    """Build a run's data, model, stages and sample order; see the module docstring.

    ``build_fn`` builds the model (default ``build_model``, looked up when called, so fault
    tests can wrap it to attach hooks to the real model).
    """
    build_fn = build_fn or build_model
    config = config.resolved()
    device = strategy.device(config.device)
    if config.sync_bn and device.type != "cuda":
        raise ConfigError(
            "--sync-bn needs CUDA GPUs (PyTorch's SyncBatchNorm runs only there); drop it on this device, "
            "where each worker normalises its own share of the batch"
        )
    configure(device, config.cudnn_benchmark)
    seed_everything(config.seed)
    stages = plan_stages(config)
    restore = Restore(resume, [s.epochs for s in stages])
    # config.json names the file ``--weights imagenet`` stood for when tlwork ships it.
    config = dataclasses.replace(config, weights=resolve_weights(config.backbone, config.weights))
    splits, model, info = _data_and_model(config, strategy, restore, build_fn)
    pre = preprocessing_for(config, splits, info) if restore.point is None else saved_preprocessing(restore.meta)
    model.to(device)
    model = strategy.prepare(model, config.sync_bn)
    if channels_last_ok(device, config.channels_last):
        model.to(memory_format=torch.channels_last)
    config, notes = _batch_size(config, strategy, model, info, stages, device, splits)
    shipped = describe_weights(config.weights) if restore.point is None else None
    notes = [shipped, *notes] if shipped else notes
    if config.exclude is not None:
        notes.append(f"--exclude {config.exclude}: left out {splits.excluded} listed image(s) from training and "
                     "validation (nothing was moved or deleted)")
    assert isinstance(config.batch_size, int)
    forward: nn.Module = torch.compile(model) if config.compile else model  # type: ignore[assignment]
    workers = default_workers(device) if config.workers is None else config.workers
    # --batch-size is per device; a resumed run keeps its global batch on any number of workers.
    global_batch = int(restore.meta.get("global_batch_size", config.batch_size * strategy.world))
    sampler = make_sampler(config, splits, strategy, global_batch)
    notes += imbalance_notes(config, splits)
    cache = DataCache(splits, pre, device, config.data, recorded_paths(restore.meta or None))
    skips = SkipLog(config.strict)
    screened = [f"left out unreadable image {path}: {reason}" for path, _, reason in splits.unreadable]
    if splits.unreadable and config.strict:
        skips.add([Unreadable(-1, *splits.unreadable[0])])  # raises the --strict error
    if restore.point is not None:
        check_same_data(restore.meta, splits.class_names, len(splits.train), config.batch_size)
        load_model_state(model, restore.point.tensors)
    return Setup(config, strategy, device, splits, model, info, pre, stages, forward, workers, global_batch,
                 sampler, cache, skips, restore, notes + cache.notes(), screened)


def make_sampler(config: RunConfig, splits: Splits, strategy: SingleProcess, global_batch: int) -> EpochSampler:
    """The run's sample order: every image once per epoch, or (``--sampler balanced``) every class equally often."""
    if config.sampler == "balanced":
        return BalancedSampler(targets_of(splits.train), config.seed, strategy.shard, global_batch)
    return EpochSampler(len(splits.train), config.seed, strategy.shard, global_batch)


def imbalance_notes(config: RunConfig, splits: Splits) -> list[str]:
    """A run-log line suggesting the class-balance options when the training classes are skewed (as check-data warns)."""
    if config.class_weights != "none" or config.sampler != "shuffle":
        return []
    counts = Counter(targets_of(splits.train))
    skew = imbalance_line({name: counts.get(i, 0) for i, name in enumerate(splits.class_names)})
    return [f"{skew}; consider --class-weights balanced or --sampler balanced"] if skew else []


def _data_and_model(config: RunConfig, strategy: SingleProcess, restore: Restore,
                    build_fn: Callable[..., tuple[nn.Module, ModelInfo]]) -> tuple[Splits, nn.Module, ModelInfo]:
    """The dataset and the model with its new head; downloads happen once per machine, first."""
    downloads = config.dataset in ("cifar10", "cifar100") or config.weights == "imagenet" or config.backbone.startswith("hf:")
    with strategy.main_first(downloads):
        splits = load_splits(config.dataset, config.data_dir, config.val_split, config.seed, exclude=excluded(config))
        # A resumed run's weights come from its checkpoint: the weights file is not read again.
        weights = "none" if restore.point is not None else config.weights
        model, info = build_fn(config.backbone, len(splits.class_names), weights, splits.class_names)
    return splits, model, info


def excluded(config: RunConfig) -> frozenset[str]:
    """The resolved paths ``--exclude`` lists (none without it)."""
    return read_exclude(config.exclude) if config.exclude is not None else frozenset()


def _batch_size(config: RunConfig, strategy: SingleProcess, model: nn.Module, info: ModelInfo, stages: list[Stage],
                device: torch.device, splits: Splits) -> tuple[RunConfig, list[str]]:
    """The config with ``--batch-size auto`` replaced by the largest size every worker's device holds."""
    if config.batch_size != "auto":
        return config, []
    found, note = auto_batch_size(model, info, config, stages, device, len(splits.class_names), len(splits.train))
    found = strategy.agree_min(found)
    return dataclasses.replace(config, batch_size=found), [note]
