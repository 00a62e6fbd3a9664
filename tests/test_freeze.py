"""Freeze modes: what a linear probe, a fine-tune and a partial run may and may not change.

The first tests drive ``core.models.freeze`` with real optimiser steps on real backbones (a
torchvision ResNet-18 and a timm ResNet). The engine tests then start a run from a weights
file and compare the saved bundle with that file, tensor for tensor: a linear probe must
leave every backbone parameter and every BatchNorm running statistic bit-identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file
from tinydata import TINY_BACKBONE
from torch import nn

from core.config import RunConfig
from core.models.build import build_model
from core.models.freeze import freeze, train_mode, trainable_parameters
from core.models.info import ModelInfo
from core.training.schedule import make_optimizer
from core.training.train import train

BACKBONES = ["resnet18", TINY_BACKBONE]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (BatchNorm statistics included), copied."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def take_steps(model: nn.Module, info: ModelInfo, mode: str, unfreeze_stages: int = 1, steps: int = 2) -> None:
    """A few SGD steps on random 32x32 images, as the engine sets them up for ``mode``."""
    torch.manual_seed(0)
    freeze(model, info, mode, unfreeze_stages)
    train_mode(model)
    optimizer = make_optimizer(trainable_parameters(model), "sgd", lr=0.1)
    for _ in range(steps):
        images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4,))
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def is_head(name: str, info: ModelInfo) -> bool:
    return name.startswith(info.head + ".")


def bn_buffers(state: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in state if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_linear_probe_changes_only_the_head(backbone: str) -> None:
    model, info = build_model(backbone, 3, "none")
    before = snapshot(model)
    assert bn_buffers(before), "the test needs a backbone with BatchNorm"
    take_steps(model, info, "linear-probe")
    moved = changed(before, snapshot(model))
    assert moved == {k for k in before if is_head(k, info)}
    assert not moved & bn_buffers(before)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_finetune_changes_the_backbone_and_its_statistics(backbone: str) -> None:
    model, info = build_model(backbone, 3, "none")
    before = snapshot(model)
    take_steps(model, info, "finetune")
    moved = changed(before, snapshot(model))
    params = {n for n, _ in model.named_parameters()}
    assert params <= moved
    assert bn_buffers(before) <= moved


def test_resnet18_stages_are_its_four_layers() -> None:
    model, info = build_model("resnet18", 10, "none")
    assert info.head == "fc"
    tops = [sorted({n.split(".")[0] for n in group}) for group in info.stages]
    assert tops == [["bn1", "conv1", "layer1"], ["layer2"], ["layer3"], ["layer4"]]


@pytest.mark.parametrize("backbone", ["resnet18", TINY_BACKBONE, "mobilenet_v3_large", "timm:test_efficientnet"])
def test_stages_partition_the_backbone(backbone: str) -> None:
    model, info = build_model(backbone, 3, "none")
    grouped = [n for group in info.stages for n in group]
    assert len(grouped) == len(set(grouped)), "a parameter sits in two stages"
    backbone_params = {n for n, _ in model.named_parameters() if not is_head(n, info)}
    assert set(grouped) == backbone_params
    assert len(info.stages) >= 4


@pytest.mark.parametrize(("backbone", "k", "trainable"), [
    ("resnet18", 1, {"layer4", "fc"}),
    ("resnet18", 2, {"layer3", "layer4", "fc"}),
    (TINY_BACKBONE, 1, {"layer4", "fc"}),
    (TINY_BACKBONE, 3, {"layer2", "layer3", "layer4", "fc"}),
])  # fmt: skip
def test_partial_trains_exactly_the_last_k_stages_and_the_head(backbone: str, k: int, trainable: set[str]) -> None:
    model, info = build_model(backbone, 3, "none")
    freeze(model, info, "partial", unfreeze_stages=k)
    on = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n.split(".")[0] for n in on} == trainable
    assert on == {n for g in info.stages[-k:] for n in g} | {n for n, _ in model.named_parameters() if is_head(n, info)}


def test_partial_steps_leave_the_frozen_stages_and_their_statistics_alone() -> None:
    model, info = build_model("resnet18", 3, "none")
    before = snapshot(model)
    take_steps(model, info, "partial", unfreeze_stages=1)
    moved = changed(before, snapshot(model))
    assert {k.split(".")[0] for k in moved} == {"layer4", "fc"}
    assert bn_buffers({k: v for k, v in before.items() if k.startswith("layer4.")}) <= moved


def test_train_mode_keeps_frozen_batchnorm_in_eval() -> None:
    model, info = build_model("resnet18", 3, "none")
    freeze(model, info, "partial", unfreeze_stages=1)
    train_mode(model)
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            assert module.training == name.startswith("layer4."), name


# The engine end to end: start from a weights file, compare the bundle with the file.


@pytest.fixture
def weights_file(tmp_path: Path) -> Path:
    """A random-initialised TINY_BACKBONE state dict (3 classes) written with torch.save."""
    torch.manual_seed(123)
    model, _ = build_model(TINY_BACKBONE, 3, "none")
    path = tmp_path / "start.pth"
    torch.save(model.state_dict(), path)
    return path


def bundle_after(config: RunConfig) -> dict[str, torch.Tensor]:
    finished = list(train(config))[-1]
    return load_file(str(Path(finished.run_dir) / "model.safetensors"))


def test_a_linear_probe_run_keeps_the_backbone_bit_identical(
    tiny_config: Callable[..., RunConfig], weights_file: Path
) -> None:
    start = torch.load(weights_file, weights_only=True)
    trained = bundle_after(tiny_config(mode="linear-probe", weights=str(weights_file), epochs=2, lr=0.05))
    assert trained.keys() == start.keys()
    moved = {k for k in start if not torch.equal(start[k], trained[k])}
    assert moved == {"fc.weight", "fc.bias"}


def test_a_finetune_run_moves_the_backbone(tiny_config: Callable[..., RunConfig], weights_file: Path) -> None:
    start = torch.load(weights_file, weights_only=True)
    trained = bundle_after(tiny_config(mode="finetune", weights=str(weights_file), lr=0.05))
    moved = {k for k in start if not torch.equal(start[k], trained[k])}
    assert {"conv1.0.weight", "fc.weight"} <= moved
    # Pretrained weights: --bn auto is frozen, so the BatchNorm statistics stay the file's.
    assert not {k for k in moved if k.endswith(("running_mean", "running_var"))}
    with_train_bn = bundle_after(tiny_config(mode="finetune", weights=str(weights_file), lr=0.05, bn="train", name="bn-train"))
    assert not torch.equal(start["layer1.0.bn1.running_mean"], with_train_bn["layer1.0.bn1.running_mean"])
