"""Preprocessing and augmentation policies (torchvision.transforms.v2).

``Preprocessing`` (from the torch-free ``core.data.preprocessing``) is what a bundle stores
so evaluation and ``classify`` see exactly what training saw: image size, mean, std and
interpolation. ``eval_transform`` resizes and normalises; ``train_transform`` adds the
chosen augmentation first. Augmentations run on uint8 tensors at the image's native size
where it is known (the notebook crops CIFAR at 32 with padding 4, then resizes), else after
resizing with padding size/8.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torchvision.transforms import InterpolationMode, v2

from core.data.preprocessing import Preprocessing


def _interp(name: str) -> InterpolationMode:
    try:
        return InterpolationMode(name)
    except ValueError:
        return InterpolationMode.BILINEAR


def _finish(pre: Preprocessing) -> list[Callable[..., Any]]:
    return [
        v2.Resize((pre.size, pre.size), interpolation=_interp(pre.interpolation), antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(pre.mean), list(pre.std)),
    ]


def eval_transform(pre: Preprocessing) -> v2.Compose:
    """PIL image or uint8 tensor -> normalised float tensor of the model's input size."""
    return v2.Compose([v2.ToImage(), *_finish(pre)])


def train_transform(pre: Preprocessing, augment: str, native_size: int | None = None) -> v2.Compose:
    """``eval_transform`` with the ``augment`` policy applied first."""
    if augment == "none":
        return eval_transform(pre)
    crop_size = native_size or pre.size
    crop = [v2.RandomCrop(crop_size, padding=max(1, crop_size // 8)), v2.RandomHorizontalFlip(0.5)]
    resize, to_float, normalize = _finish(pre)
    if native_size is None:
        # Unknown native size: resize first so the crop works on a known square.
        steps: list[Any] = [v2.ToImage(), resize, *crop]
    else:
        steps = [v2.ToImage(), *crop]
    if augment == "randaugment":
        steps.append(v2.RandAugment(num_ops=2, magnitude=9))
    elif augment == "trivialaugment":
        steps.append(v2.TrivialAugmentWide())
    elif augment != "crop-flip":
        raise ValueError(f"unknown augmentation {augment!r}")
    if native_size is not None:
        steps.append(resize)
    steps += [to_float, normalize]
    if augment == "trivialaugment":
        steps.append(v2.RandomErasing(p=0.25))
    return v2.Compose(steps)


class Transformed(torch.utils.data.Dataset):
    """Apply ``transform`` to the images of a (image, label) dataset."""

    def __init__(self, base: Any, transform: Callable[[Any], torch.Tensor]) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        return self.transform(image), label
