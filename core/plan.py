"""What a run will do, decided before it starts: its stages, its sample order, its preprocessing.

``plan_stages`` turns a resolved config into stages (probe-then-finetune has two: the
notebook's probe, then fine-tuning). ``EpochSampler`` gives each epoch a shuffled order that
depends only on (seed, epoch), so a resumed run, and every data path, sees the same samples in
the same order; with several workers it deals each global batch out round-robin.
``preprocessing_for`` fixes the input size, normalisation and interpolation a bundle records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch.utils.data import Sampler

from core.config import RunConfig
from core.data import Splits
from core.models import ModelInfo
from core.transforms import Preprocessing


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
    """A shuffled order that depends only on (seed, epoch), so a resumed run sees the same order.

    With a ``core.distributed.Shard`` of several ranks, iterating yields this rank's rows of
    each global batch of ``batch_size`` (``local_order``); ``order`` stays the whole permutation.
    """

    def __init__(self, size: int, seed: int, shard: Any = None, batch_size: int = 0) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0
        self.skip = 0
        self.shard = shard
        self.batch_size = batch_size  # the global batch, which the shard deals out

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Order for ``epoch``; ``skip`` drops the first samples (already trained on)."""
        self.epoch, self.skip = epoch, skip

    @property
    def usable(self) -> int:
        """Samples per epoch: all but one when the last batch would hold a single image.

        BatchNorm cannot train on one image at 1x1 spatial size (ResNet at 32 px), so such a
        trailing sample sits the epoch out; it is a different random image each epoch.
        """
        single = self.batch_size > 1 and self.size % self.batch_size == 1
        return self.size - 1 if single else self.size

    def order(self) -> list[int]:
        """The permutation for the current epoch (``usable`` samples)."""
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.size, generator=gen)[: self.usable].tolist()

    def local_order(self) -> list[int]:
        """This rank's samples for the epoch (the full permutation for one process)."""
        if self.shard is None or self.shard.world == 1:
            return self.order()
        return self.shard.split(self.order(), self.batch_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.local_order()[self.skip:])

    def __len__(self) -> int:
        if self.shard is None or self.shard.world == 1:
            return self.usable - self.skip
        return len(self.local_order()) - self.skip


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
