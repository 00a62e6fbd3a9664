"""Freeze modes: which parameters train, and which modules stay in eval mode.

``freeze(model, info, mode, unfreeze_stages)`` sets ``requires_grad``; ``train_mode(model)``
replaces ``model.train()`` during training: every BatchNorm whose parameters are frozen, and
every fully frozen top-level stage, stays in eval mode, so a linear probe's running
statistics never move and frozen dropout or stochastic depth adds no noise. With
``frozen_bn`` (``--bn frozen``) every BatchNorm stays in inference mode, trainable or not:
it normalises with the pretrained running statistics, which stay fixed, while its scale and
shift still train (Keras's transfer-learning guide; timm's ``freeze_batch_norm_2d`` does the
same by swapping modules, which would also freeze the affine parameters).
``param_groups`` gives each backbone stage its own learning rate (``--layer-decay``).
"""

from __future__ import annotations

from typing import Any

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


def train_mode(model: nn.Module, frozen_bn: bool = False) -> nn.Module:
    """``model.train()``, but frozen parts (and with ``frozen_bn`` every BatchNorm) stay in eval mode."""
    model.train()
    for module in model.modules():
        if frozen_bn and isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
            continue
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


def param_groups(model: nn.Module, info: ModelInfo, lr: float, decay: float = 1.0) -> list[dict[str, Any]]:
    """The trainable parameters in optimiser groups, head first: ``lr`` for the head, then
    ``lr * decay**k`` for the k-th backbone stage counted back from the head (timm's layer
    decay over ``info.stages``); parameters in no stage (a stem) get the lowest rate.

    With ``decay`` 1 this is one group. Each group carries a ``name`` for the run log.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if decay >= 1.0:
        return [{"params": [p for _, p in named], "lr": lr, "name": "all"}]
    depth = {name: len(info.stages) - i for i, group in enumerate(info.stages) for name in group}
    head = info.head + "."
    deepest = len(info.stages) + 1
    groups: dict[int, list[nn.Parameter]] = {}
    for name, param in named:
        k = 0 if name.startswith(head) else depth.get(name, deepest)
        groups.setdefault(k, []).append(param)
    return [{"params": params, "lr": lr * decay**k, "name": "head" if k == 0 else f"stage -{k}"}
            for k, params in sorted(groups.items())]
