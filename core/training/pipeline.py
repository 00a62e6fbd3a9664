"""Which data path a training stage uses, and the module it trains through.

``make_pipeline`` picks, per stage:

- ``features``: a linear probe with no augmentation trains its head block on backbone
  features computed once (``core.training.features``);
- ``device``: images decoded once into a uint8 tensor on the device and augmented there in
  batches (``core.data.fastdata``), when the dataset fits the memory budget and the augmentation
  is ``none`` or ``crop-flip`` (``DataCache`` decides once per run; a resumed run keeps the
  checkpoint's record);
- ``stream``: a multi-worker DataLoader with pinned memory and per-image torchvision
  transforms, for everything else (and on request, ``--data stream``).

A linear probe with augmentation still runs the frozen backbone under ``no_grad`` and
back-propagates through the head block only. Every path follows ``EpochSampler``'s order.

With several workers (``core.training.strategy``) ``batch_size`` is the global batch and ``shard``
says which rows of each global batch this rank trains on; validation and feature extraction
take the rank's round-robin share of the natural order, and extracted features are gathered
back, so every rank holds the whole feature cache.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Iterable, Iterator

import torch
from torch import nn

from core import events as ev
from core.data import fastdata, safedata
from core.data.loaders import make_loader
from core.data.sampler import Shard
from core.data.transforms import Preprocessing, train_transform
from core.device import channels_last_ok
from core.errors import ConfigError
from core.models.info import ModelInfo
from core.training.features import FeatureBatches, extract_steps, head_block, trunk_features


class FrozenTrunk(nn.Module):
    """Full-model forward whose backbone part runs without autograd (for augmented probing)."""

    def __init__(self, model: nn.Module, block: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = trunk_features(self.model, self.block, x)
        return self.block(features)


@dataclass
class DataCache:
    """Decoded datasets and cached features shared by the stages of one run.

    With ``--data auto`` each split is held on the device when it fits the memory budget
    (``fastdata.memory_budget``: on CUDA a share of the memory free when it is decided) and
    streams otherwise. The validation split's path is decided when the cache is made and the
    training split's when a stage first asks for it (the first stage's start, or never when
    its augmentation streams), so both are decided before the first checkpoint; ``paths``
    records them. A resumed run passes the checkpoint's record as ``recorded`` and keeps
    those paths instead of deciding again: the two paths feed the model slightly different
    float pixels and different crop-flip draws, and a resumed run must continue the very run
    it resumes. A recorded ``device`` split that no longer fits the budget is a
    ``ConfigError``, not a silent switch to streaming.
    """

    splits: Any
    pre: Preprocessing
    device: torch.device
    mode: str  # auto | device | stream
    recorded: dict[str, str] = field(default_factory=dict)  # split -> device | stream, from the checkpoint resumed
    images: dict[str, fastdata.DeviceImages | None] = field(default_factory=dict)
    features: dict[str, FeatureBatches] = field(default_factory=dict)
    unreadable: list[safedata.Unreadable] = field(default_factory=list)  # the training loop drains and logs these
    decided: dict[str, str] = field(default_factory=dict)  # split -> device | stream, once decided (see ``path``)

    def __post_init__(self) -> None:
        self.recorded = dict(self.recorded) if self.mode == "auto" else {}  # an explicit --data needs no record
        for split, path in sorted(self.recorded.items()):  # refuse before the run starts, not at its first validation
            if path == "device":
                need, budget = self._need(split), fastdata.memory_budget(self.device)
                if need > budget:
                    raise ConfigError(
                        f"this run held its {split} images on {self.device} ({_mb(need)}) and resumes on that path, but "
                        f"the memory budget now allows {_mb(budget)}; resume with more free memory (or a larger "
                        f"TLWORK_CACHE_MB), or start a new run with --data stream"
                    )
        self.decided = dict(self.recorded)
        self.path("val")  # every path validates (or extracts features) through it

    def _need(self, split: str) -> int:
        return fastdata.decoded_size(getattr(self.splits, split), self.pre.size, self.splits.native_size)

    def path(self, split: str) -> str:
        """``device`` or ``stream`` for ``split``: the explicit mode, the recorded path, or the budget's verdict."""
        if split not in self.decided:
            if self.mode != "auto":
                self.decided[split] = self.mode
            else:
                fits = self._need(split) <= fastdata.memory_budget(self.device)
                self.decided[split] = "device" if fits else "stream"
        return self.decided[split]

    def paths(self) -> dict[str, str]:
        """The path of every split decided so far (for the checkpoint and status.json)."""
        return dict(self.decided)

    def notes(self) -> list[str]:
        """A line for the run log when the paths come from the checkpoint instead of the budget."""
        if not self.recorded:
            return []
        kept = ", ".join(f"{split} {path}" for split, path in sorted(self.recorded.items()))
        return [f"--data auto: keeping the data paths this run started with ({kept}), whatever the memory budget now"]

    def device_images(self, split: str) -> fastdata.DeviceImages | None:
        """The split as a device tensor, or None when it streams instead."""
        if split not in self.images:
            if self.path(split) == "stream":
                self.images[split] = None
            else:
                data = getattr(self.splits, split)
                images, labels = fastdata.decode_all(data, self.pre.size, self.pre.interpolation)
                self.images[split] = fastdata.DeviceImages(images, labels, self.pre, self.device)
        return self.images[split]


def _mb(size: int) -> str:
    """``1.5 GB``, ``150.0 MB`` or ``84 KB``."""
    if size >= 2**30:
        return f"{size / 2**30:.1f} GB"
    return f"{size / 2**20:.1f} MB" if size >= 2**20 else f"{size / 2**10:.0f} KB"


def recorded_paths(meta: dict[str, Any] | None) -> dict[str, str]:
    """The data paths a checkpoint recorded (``{}`` for a fresh run or an older checkpoint)."""
    record = (meta or {}).get("data_paths")
    if record is None:
        return {}  # written before paths were recorded: the run decides them again
    if not isinstance(record, dict) or any(k not in ("train", "val") or v not in ("device", "stream") for k, v in record.items()):
        raise ConfigError(f"checkpoint data_paths has a bad value {record!r}; the checkpoint is damaged")
    return dict(record)


def _progress(steps: Generator[int, None, Any], split: str, total: int, mine: int,
              interval: float) -> Generator[ev.ExtractionProgressed, None, Any]:
    """``ExtractionProgressed`` for an extraction's steps (this rank's share, scaled to the split); returns its value."""
    started = last = time.perf_counter()
    yield ev.ExtractionProgressed(split, 0, total, 0.0, 0.0)  # eta unknown until a batch is done
    while True:
        try:
            done = next(steps)
        except StopIteration as finished:
            return finished.value
        now = time.perf_counter()
        if now - last >= interval or done >= mine:
            seconds = now - started
            scaled = min(total, round(done * total / max(1, mine)))
            eta = seconds / max(1, done) * (mine - done)
            yield ev.ExtractionProgressed(split, scaled, total, seconds, eta)
            last = now


@dataclass
class Pipeline:
    """A stage's batch source per epoch, validation batches and the module to call."""

    kind: str
    forward: nn.Module
    batches_per_epoch: int
    epoch_batches: Callable[[int, list[int], int], Iterable[tuple[torch.Tensor, torch.Tensor]]]
    val_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]

    def __len__(self) -> int:
        return self.batches_per_epoch


def _natural(n: int) -> list[int]:
    return list(range(n))


def make_pipeline(**options: Any) -> Pipeline:
    """``pipeline_steps`` without its progress events (for callers that show none)."""
    steps = pipeline_steps(**options)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def pipeline_steps(
    *,
    cache: DataCache,
    model: nn.Module,
    forward: nn.Module,
    info: ModelInfo,
    stage_mode: str,
    augment: str,
    batch_size: int,
    seed: int,
    workers: int,
    channels_last: bool,
    amp: bool,
    cache_features: bool,
    sampler: Any,
    stop: threading.Event | None = None,
    shard: Shard | None = None,
    gather: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    interval: float = 0.1,
) -> Generator[ev.ExtractionProgressed, None, Pipeline]:
    """The pipeline for one stage (see the module docstring), returned once made; feature
    extraction yields ``ExtractionProgressed`` every ``interval`` seconds and at each split's
    end, and a stop during it raises ``ExtractionStopped``."""
    device, splits = cache.device, cache.splits
    steps = -(-sampler.usable // batch_size)
    shard = shard or Shard()
    local = shard.local_batch(batch_size)  # what one rank computes per step
    cl = channels_last_ok(device, channels_last)
    probe = stage_mode == "linear-probe"
    block_name = head_block(model, info) if probe else ""
    block = model.get_submodule(block_name) if probe else None

    def image_batches(split: str, order: list[int], aug: str, epoch: int | None, skip: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images = cache.device_images(split) if aug in fastdata.DEVICE_AUGMENTS else None
        if images is not None:
            if epoch is None:  # validation or extraction: ``order`` is already this rank's share
                yield from images.batches(order, local, aug, None, cl, skip_batches=skip)
                return
            gen = fastdata.epoch_generator(device, seed, epoch)
            yield from images.batches(order, batch_size, aug, gen, cl, skip_batches=skip, shard=shard)
            return
        if split == "train" and epoch is not None:
            # Per-sample augmentation streams (seed, epoch, index) and skipped unreadable files (core.data.safedata).
            dataset = safedata.SafeImages(splits.train, train_transform(cache.pre, aug, splits.native_size), seed)
            dataset.set_epoch(epoch)
            loader: Any = safedata.make_loader(dataset, local, device, workers, sampler, seed)  # the sampler shards
        else:
            data = getattr(splits, split)
            loader = make_loader(torch.utils.data.Subset(data, order) if order != _natural(len(data)) else data, cache.pre, local, device, workers)
        for batch in loader:
            images_, labels, unreadable = safedata.unpack(batch)
            cache.unreadable.extend(unreadable)
            if images_ is None:  # every image of the batch was unreadable: the loop still counts the batch
                yield None, None  # type: ignore[misc]
                continue
            yield images_.to(device, non_blocking=True, memory_format=torch.channels_last if cl else torch.contiguous_format), labels.to(device, non_blocking=True)

    if probe and augment == "none" and cache_features and block is not None:
        for split in ("train", "val"):
            if split not in cache.features:
                n = len(getattr(splits, split))
                mine = shard.of(_natural(n))
                extraction = extract_steps(model, block, image_batches(split, mine, "none", None, 0), device, amp, stop)
                feats, labels = yield from _progress(extraction, split, n, len(mine), interval)
                cache.features[split] = FeatureBatches(gather(feats, n), gather(labels, n)) if gather else FeatureBatches(feats, labels)
        train_feats, val_feats = cache.features["train"], cache.features["val"]
        return Pipeline(
            "features", block, steps,
            lambda epoch, order, skip: train_feats.batches(shard.split(order, batch_size), local, skip),
            lambda: val_feats.batches(shard.of(_natural(len(val_feats))), local),
        )
    module = FrozenTrunk(model, block) if probe and block is not None else forward
    kind = "device" if augment in fastdata.DEVICE_AUGMENTS and cache.device_images("train") is not None else "stream"
    return Pipeline(
        kind, module, steps,
        lambda epoch, order, skip: image_batches("train", order, augment, epoch, skip),
        lambda: image_batches("val", shard.of(_natural(len(splits.val))), "none", None, 0),
    )
