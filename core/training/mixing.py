"""What a training batch is scored against: MixUp/CutMix targets and class-weighted cross-entropy.

``Mixer`` wraps torchvision's ``transforms.v2.MixUp`` and ``CutMix``. It runs on the batch the
stage's data path hands over (crop and flip already applied, on the device-resident path and
the streaming one alike), mixes ``--mix-prob`` of the batches and, with both set, picks one of
the two per batch as timm's ``Mixup`` switches. Every draw comes from torch's global RNG on
the CPU (torchvision samples its Beta there), which checkpoints save, so a resumed run mixes
as the uninterrupted one would. A batch left unmixed gets one-hot targets, so the loss always
takes class probabilities; cross-entropy's label smoothing applies to mixed targets too.

Training accuracy under mixing is counted against each image's dominant label (the class
with the larger share of it), which ``Mixer`` returns beside the soft targets.

``class_weights`` is ``--class-weights balanced``: scikit-learn's inverse frequency,
``n / (classes * count)``, so an evenly balanced split weighs every class 1.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from core.config import RunConfig


class Mixer:
    """MixUp and/or CutMix of a batch, ``prob`` of the time; otherwise one-hot targets."""

    def __init__(self, mixup: float, cutmix: float, prob: float, num_classes: int) -> None:
        from torchvision.transforms import v2

        self.num_classes = num_classes
        self.prob = prob
        self.choices: list[nn.Module] = []
        if mixup > 0:
            self.choices.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
        if cutmix > 0:
            self.choices.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images, soft targets, dominant labels) for one batch."""
        mix = self.prob >= 1.0 or float(torch.rand(())) < self.prob
        if not mix or not self.choices or labels.shape[0] < 2:
            return images, nn.functional.one_hot(labels, self.num_classes).float(), labels
        pick = self.choices[int(torch.randint(len(self.choices), ()))] if len(self.choices) > 1 else self.choices[0]
        mixed, soft = pick(images, labels)
        return mixed, soft, soft.argmax(1)


def make_mixer(config: RunConfig, num_classes: int) -> Mixer | None:
    """The run's ``Mixer``, or None when neither MixUp nor CutMix is on."""
    if not config.mixes:
        return None
    return Mixer(config.mixup, config.cutmix, config.mix_prob, num_classes)


def class_weights(targets: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights ``n / (classes * count)`` (a class with no image weighs 0)."""
    counts = torch.bincount(torch.as_tensor(list(targets), dtype=torch.long), minlength=num_classes).double()
    weights = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    return weights.float()


def make_criterion(config: RunConfig, targets: Sequence[int], num_classes: int, device: torch.device) -> nn.Module:
    """Per-sample cross-entropy with the run's label smoothing and, under ``--class-weights balanced``, its weights."""
    weight = class_weights(targets, num_classes).to(device) if config.class_weights == "balanced" else None
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing, reduction="none")
