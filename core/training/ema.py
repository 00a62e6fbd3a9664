"""``--ema DECAY``: an exponential moving average of the weights, validated beside the live ones.

The average is timm's ``ModelEmaV3`` (a copy of the model whose parameters and floating
buffers, BatchNorm's running statistics included, move toward the live model's after each
optimiser update; integer buffers are copied), stepped with the update count as timm's
``train.py`` does, so the first update copies the weights and ``--ema-warmup`` ramps the
decay up as ``use_warmup`` does. It spans the whole run: probe-then-finetune's fine-tune
stage goes on averaging from where the probe left it.

Validation scores it by loading its weights into the live model for the length of a
``with`` block (``swapped``), so every data path's forward, cached-feature heads included,
validates it unchanged, and the live weights come back bit for bit. ``tensors`` and
``load`` carry it, and its update count, through every checkpoint.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from core.errors import ConfigError

PREFIX = "ema."
"""Checkpoint tensors of the average: ``ema.<state-dict key>``."""


def _base(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)


class WeightsEma:
    """The moving average of one model's weights."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool) -> None:
        from timm.utils.model_ema import ModelEmaV3

        self.average = ModelEmaV3(_base(model), decay=decay, use_warmup=warmup)
        self.updates = 0  # optimiser updates averaged so far

    def update(self, model: nn.Module) -> None:
        """Average in the weights after an optimiser update."""
        self.updates += 1
        self.average.update(_base(model), step=self.updates)

    @contextmanager
    def swapped(self, model: nn.Module) -> Iterator[None]:
        """``model`` holds the average's weights inside the block, its own again after it."""
        target = _base(model)
        live = {k: v.detach().clone() for k, v in target.state_dict().items()}
        target.load_state_dict(self.average.module.state_dict())
        try:
            yield
        finally:
            target.load_state_dict(live)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The average's state as checkpoint tensors."""
        return {PREFIX + k: v for k, v in self.average.module.state_dict().items()}

    def header(self) -> dict[str, Any]:
        """What a checkpoint's header records of it."""
        return {"ema_updates": self.updates}

    def load(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """The average as a checkpoint left it."""
        state = {k[len(PREFIX):]: v for k, v in tensors.items() if k.startswith(PREFIX)}
        if not state:
            raise ConfigError("the checkpoint holds no EMA weights though the run has --ema; the checkpoint is damaged")
        self.average.module.load_state_dict(state, strict=True)
        self.updates = int(meta.get("ema_updates", 0))
