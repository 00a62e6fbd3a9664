"""What a run will do, decided before it starts: its stages, its sample order, its preprocessing.

``plan_stages`` turns a resolved config into stages (probe-then-finetune has two: the
notebook's probe, then fine-tuning). ``EpochSampler`` gives each epoch a shuffled order that
depends only on (seed, epoch), so a resumed run, and every data path, sees the same samples in
the same order; with several workers it deals each global batch out round-robin.
``preprocessing_for`` fixes the input size, normalisation and interpolation a bundle records.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.config import RunConfig
from core.data.datasets import Splits
from core.data.transforms import Preprocessing
from core.models.info import ModelInfo


@dataclass(frozen=True)
class Stage:
    """A stretch of the run with one freeze mode, learning rate, augmentation and schedule."""

    name: str
    mode: str
    epochs: int
    lr: float
    augment: str
    scheduler: str
    bn: str = "frozen"  # BatchNorm while this stage trains: frozen (inference mode) or train
    mix: bool = False  # MixUp/CutMix its batches (never a probe on cached features: those are not images)


def plan_stages(config: RunConfig) -> list[Stage]:
    """The stages of a resolved config; probe-then-finetune probes as the notebook does first."""
    assert config.lr is not None and config.augment is not None and config.scheduler is not None
    if config.mode == "probe-then-finetune":
        assert config.probe_lr is not None
        return [
            Stage("probe", "linear-probe", config.probe_epochs, config.probe_lr, "none", "none"),
            Stage("finetune", "finetune", config.epochs, config.lr, config.augment, config.scheduler, config.bn,
                  config.mixes),
        ]
    name = {"linear-probe": "probe", "finetune": "finetune", "partial": "partial"}[config.mode]
    return [Stage(name, config.mode, config.epochs, config.lr, config.augment, config.scheduler, config.bn, config.mixes)]




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
