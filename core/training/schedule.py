"""Optimisers and learning-rate schedules.

Every schedule is stepped once per batch, so a checkpoint taken mid-epoch resumes it exactly.
``step`` reproduces the notebook's per-epoch ``StepLR(5, 0.1)`` on batch steps; ``cosine``
warms up linearly, then decays to zero; ``onecycle`` is torch's ``OneCycleLR``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR


def make_optimizer(
    params: list[nn.Parameter] | list[dict[str, Any]], name: str, lr: float, momentum: float = 0.9,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """SGD with momentum (the notebook's) or AdamW, over parameters or parameter groups (each with its own lr)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    steps_per_epoch: int,
    epochs: int,
    step_size: int = 5,
    gamma: float = 0.1,
    warmup_epochs: int = 0,
) -> LRScheduler:
    """A per-batch scheduler over ``epochs * steps_per_epoch`` steps."""
    total = max(1, epochs * steps_per_epoch)
    if name == "none":
        return LambdaLR(optimizer, lambda step: 1.0)
    if name == "step":
        return LambdaLR(optimizer, lambda step: gamma ** ((step // steps_per_epoch) // step_size))
    if name == "cosine":
        warm = min(warmup_epochs * steps_per_epoch, total - 1)

        def cosine(step: int) -> float:
            if step < warm:
                return (step + 1) / (warm + 1)
            progress = (step - warm) / max(1, total - warm)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        return LambdaLR(optimizer, cosine)
    if name == "onecycle":
        max_lr = [group["lr"] for group in optimizer.param_groups]
        return OneCycleLR(optimizer, max_lr=max_lr, total_steps=total)
    raise ValueError(f"unknown scheduler {name!r}")


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate of the first parameter group."""
    return float(optimizer.param_groups[0]["lr"])


def step_scheduler(scheduler: Any, quiet: bool = False) -> None:
    """Step the per-batch schedule; ``quiet`` hides torch's warning for a batch with no optimiser step."""
    if not quiet:
        scheduler.step()
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        scheduler.step()
