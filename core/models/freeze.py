"""Freeze modes: which parameters train, and which modules stay in eval mode.

``freeze(model, info, mode, unfreeze_stages)`` sets ``requires_grad``; ``train_mode(model)``
replaces ``model.train()`` during training: every BatchNorm whose parameters are frozen, and
every fully frozen top-level stage, stays in eval mode, so a linear probe's running
statistics never move and frozen dropout or stochastic depth adds no noise.
"""

from __future__ import annotations

from torch import nn

from core.models.info import ModelInfo


def freeze(model: nn.Module, info: ModelInfo, mode: str, unfreeze_stages: int = 1) -> None:
    """Set ``requires_grad`` for ``mode``: linear-probe, finetune or partial."""
    if mode == "finetune":
        trainable = None
    elif mode == "linear-probe":
        trainable = set()
    elif mode == "partial":
        trainable = {n for g in info.stages[-unfreeze_stages:] for n in g}
    else:
        raise ValueError(f"unknown freeze mode {mode!r}")
    head = info.head + "."
    for name, param in model.named_parameters():
        param.requires_grad = trainable is None or name.startswith(head) or name in trainable


def train_mode(model: nn.Module) -> nn.Module:
    """``model.train()``, but frozen parts stay in eval mode (see module docstring)."""
    model.train()
    for module in model.modules():
        params = list(module.parameters())
        if not params or any(p.requires_grad for p in params):
            continue
        # A frozen subtree: BatchNorm keeps its statistics; a frozen block keeps dropout off.
        if isinstance(module, nn.modules.batchnorm._BatchNorm) or _is_block(module):
            module.eval()
    return model


def _is_block(module: nn.Module) -> bool:
    """Containers and blocks (anything with children), not single stateless layers."""
    return any(True for _ in module.children())


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimiser should update."""
    return [p for p in model.parameters() if p.requires_grad]
