"""Backbones: build one, load its pretrained weights, give it a new head, find its stages.

``build_model`` makes a torchvision, timm (``timm:NAME``) or Hugging Face (``hf:ID``)
classifier with a fresh head for the dataset's classes and returns it with a ``ModelInfo``
that names the head, the trainable stages (for ``partial`` mode) and the backbone's own
preprocessing. Weights come from ``imagenet`` (the file shipped with tlwork for the backbones in
``shipped.SHIPPED``, otherwise downloaded once into the torch or Hugging Face cache; a failed
download says which file to put where, never falls back to random weights), ``none`` or a PATH (safetensors, or a state dict read with ``weights_only=True``);
a head whose shape differs from the new one is dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import ConfigError, WeightsUnavailable
from core.models.hub import cache_hint
from core.models.info import IMAGENET_MEAN, IMAGENET_STD, ModelInfo
from core.models.shipped import resolve_weights
from core.models.weights import find_head, load_into, read_state_dict


def parse_backbone(backbone: str) -> tuple[str, str]:
    """``timm:convnext_tiny`` -> (``timm``, ``convnext_tiny``); ``resnet18`` -> (``torchvision``, ...)."""
    for kind in ("timm", "hf"):
        if backbone.startswith(kind + ":"):
            return kind, backbone[len(kind) + 1:]
    return "torchvision", backbone


def build_model(
    backbone: str, num_classes: int, weights: str = "imagenet", class_names: list[str] | None = None
) -> tuple[nn.Module, ModelInfo]:
    """A classifier for ``num_classes`` built on ``backbone`` with ``weights`` loaded.

    ``class_names`` label the head where the model records them (an ``hf:`` model's id2label).
    ``imagenet`` for a backbone whose weights ship with tlwork loads that file (``shipped``).
    """
    weights = resolve_weights(backbone, weights)
    kind, name = parse_backbone(backbone)
    if kind == "timm":
        model, info = _build_timm(name, num_classes, weights)
    elif kind == "hf":
        from core.models import hf

        model, info = hf.build_hf_classifier(name, num_classes, weights, class_names)
    else:
        model, info = _build_torchvision(name, num_classes, weights)
    # Layers between the trunk and the new head (MobileNet's pre-logits) belong to the last stage.
    staged = {n for g in info.stages for n in g}
    rest = [n for n, _ in model.named_parameters() if n not in staged and not n.startswith(info.head + ".")]
    if rest and info.stages:
        info.stages[-1] += rest
    head = model.get_submodule(info.head)
    if info.fresh_head and isinstance(head, nn.Linear):
        init_head(head)
    return model, info


def init_head(head: nn.Linear) -> None:
    """A new head starts near zero (MAE's linear-probe init: trunc-normal, std 0.01, zero bias).

    Library inits differ widely (timm's EfficientNet scales by 1/sqrt(classes), which gives
    logits in the tens on 1280-d features and a loss of 7+ at the notebook's SGD 1e-3), so
    every backbone gets the same well-behaved start.
    """
    nn.init.trunc_normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)


def _build_torchvision(name: str, num_classes: int, weights: str) -> tuple[nn.Module, ModelInfo]:
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ConfigError(f"unknown torchvision backbone {name!r}; see `tlwork backbones`")
    model = torchvision.models.get_model(name, weights=None)
    head = find_head(model)
    _replace_module(model, head, nn.Linear(_get_module(model, head).in_features, num_classes))
    info = ModelInfo("torchvision", name, head, _stages(model, head))
    if weights == "imagenet":
        enum = torchvision.models.get_model_weights(name).DEFAULT
        state = _download_torchvision(name, enum)
        load_into(model, state, info.head, source=f"ImageNet weights for {name}")
        info.mean, info.std = tuple(enum.transforms().mean), tuple(enum.transforms().std)
        info.interpolation = str(enum.transforms().interpolation.value)
    elif weights != "none":
        info.fresh_head = not load_into(model, read_state_dict(weights), info.head, source=weights)
    return model, info


def _download_torchvision(name: str, enum: Any) -> dict[str, torch.Tensor]:
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    filename = enum.url.rsplit("/", 1)[-1]
    try:
        return enum.get_state_dict(progress=True, check_hash=False)
    except Exception as exc:  # network errors come as URLError, OSError, HTTPError...
        raise WeightsUnavailable(
            f"could not download ImageNet weights for {name} ({type(exc).__name__}: {exc}); "
            f"download {enum.url} and place it at {cache / filename}, or pass --weights PATH"
        ) from None


def _build_timm(name: str, num_classes: int, weights: str) -> tuple[nn.Module, ModelInfo]:
    import timm

    if not timm.is_model(name):
        raise ConfigError(f"unknown timm model {name!r}; list them with python -c \"import timm; print(timm.list_models('*{name[:6]}*'))\"")
    if weights == "imagenet":
        _check_timm_weights_reachable(name)
    try:
        model = timm.create_model(name, pretrained=weights == "imagenet", num_classes=num_classes)
    except Exception as exc:
        if weights != "imagenet":
            raise
        cfg = timm.models.get_pretrained_cfg(name)
        where = cache_hint(getattr(cfg, "hf_hub_id", None) or name)
        raise WeightsUnavailable(
            f"could not download ImageNet weights for timm:{name} ({type(exc).__name__}); {where}, "
            "or pass --weights PATH (a .safetensors file in timm layout)"
        ) from None
    head = model.pretrained_cfg.get("classifier") or find_head(model)
    cfg = model.pretrained_cfg
    info = ModelInfo(
        "timm",
        name,
        head if isinstance(head, str) else head[0],
        _timm_stages(model),
        tuple(cfg.get("mean", IMAGENET_MEAN)),
        tuple(cfg.get("std", IMAGENET_STD)),
        str(cfg.get("interpolation", "bilinear")),
    )
    if weights not in ("imagenet", "none"):
        info.fresh_head = not load_into(model, read_state_dict(weights), info.head, source=weights)
    return model, info


def _check_timm_weights_reachable(name: str) -> None:
    """Fail at once when timm's weights are not cached and the Hub cannot be reached.

    Without this, huggingface_hub retries each candidate file with backoff: about a minute
    of retry messages before the error on a machine with no network.
    """
    import timm
    from huggingface_hub import constants, try_to_load_from_cache

    from core.models.hub import hub_reachable

    repo = getattr(timm.models.get_pretrained_cfg(name), "hf_hub_id", None)
    if not repo:
        return  # weights come from a plain URL; timm's own download reports its failure
    files = ("model.safetensors", "pytorch_model.bin")
    if any(isinstance(try_to_load_from_cache(repo, f), str) for f in files):
        return
    if constants.is_offline_mode() or not hub_reachable():
        raise WeightsUnavailable(
            f"could not download ImageNet weights for timm:{name}: the Hugging Face Hub cannot be reached and "
            f"{constants.HF_HUB_CACHE} holds no copy; download {constants.ENDPOINT}/{repo}/resolve/main/model.safetensors "
            "and pass it as --weights PATH, or run once with network access to fill the cache"
        )








def _get_module(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


def _replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)




def _stages(model: nn.Module, head: str) -> list[list[str]]:
    """Parameter groups from the input side to the head, for ``partial`` mode.

    A model's top-level blocks are its stages (ResNet's layer1-4). A single trunk container
    (EfficientNet's ``features``) is opened into its children, and so is a list inside a
    wrapper (a ViT encoder's ``layers``). A bare layer (a stem conv, a final norm) joins the
    neighbouring block; loose parameters (a class token) join the stem.
    """

    def with_params(module: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(n, c) for n, c in module.named_children() if any(True for _ in c.parameters())]

    def is_list(module: nn.Module) -> bool:
        return isinstance(module, (nn.Sequential, nn.ModuleList)) and len(with_params(module)) > 1

    top = [(n, c) for n, c in with_params(model) if n != head.split(".")[0]]
    units: list[tuple[str, nn.Module]] = []
    loose = [n for n, _ in model.named_parameters(recurse=False)]
    for name, child in top:
        if is_list(child) and len(top) == 1:
            units += [(f"{name}.{n}", c) for n, c in with_params(child)]
        elif not is_list(child) and any(is_list(c) for _, c in with_params(child)):
            loose += [f"{name}.{n}" for n, _ in child.named_parameters(recurse=False)]
            for n, c in with_params(child):
                units += [(f"{name}.{n}.{k}", g) for k, g in with_params(c)] if is_list(c) else [(f"{name}.{n}", c)]
        else:
            units.append((name, child))
    groups: list[list[str]] = []
    pending = loose
    for prefix, module in units:
        names = [f"{prefix}.{p}" for p, _ in module.named_parameters()]
        if not with_params(module) and groups:  # a bare layer after the blocks
            groups[-1] += names
        elif not with_params(module):
            pending += names
        else:
            groups.append(pending + names)
            pending = []
    if pending:
        groups.append(pending)
    return groups


def _timm_stages(model: nn.Module) -> list[list[str]]:
    from timm.models import group_parameters

    head = model.pretrained_cfg.get("classifier") or ""
    heads = (head,) if isinstance(head, str) else tuple(head)
    try:
        groups = group_parameters(model, model.group_matcher(coarse=True))
        out = [list(v) for _, v in sorted(groups.items())]
    except Exception:  # models without a group matcher fall back to the generic grouping
        return _stages(model, heads[0])
    out = [[n for n in g if not any(n.startswith(h + ".") for h in heads if h)] for g in out]
    return [g for g in out if g]


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters, or of those that will be updated."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
