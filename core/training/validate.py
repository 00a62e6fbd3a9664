"""Validation during training: loss and top-1 on the validation batches, in eval mode.

It uses ``core.inference.evaluate.Tally``, the same accumulator ``tlwork eval`` uses, so a
bundle evaluated later reproduces the accuracy its run reported; with several workers each
scores its share and the strategy sums the tallies.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from core.config import RunConfig
from core.data.loaders import to_device
from core.device import autocast
from core.inference.evaluate import Tally
from core.training.strategy import SingleProcess


def validate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int, device: torch.device,
             config: RunConfig, strategy: SingleProcess) -> dict[str, Any]:
    """Loss and top-1 over the whole validation split (the caller restores train mode)."""
    model.eval()
    tally = Tally(num_classes, device)
    with torch.inference_mode(), autocast(device, config.amp):
        for images, labels in batches:
            tally.update(model(to_device(images, device, config.channels_last)), labels.to(device, non_blocking=True))
    return strategy.reduce_tally(tally).summary()
