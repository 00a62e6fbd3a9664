"""Cached-feature linear probing: run the frozen backbone once, train the head on its output.

A linear probe's backbone is frozen and in eval mode, so its output for an image never
changes: the notebook recomputes it in every epoch anyway. With no augmentation,
``extract`` runs the backbone once over a dataset (bf16 on CUDA) and keeps the input of the
head block (the features) on the device; every epoch then trains only the head block on
those features, in the same sample order, so it reaches the same head weights as the
uncached path within floating-point tolerance. The head block is the top-level module that
holds the new classifier and no backbone stage (ResNet's ``fc``, EfficientNet's
``classifier`` with its dropout), so dropout before the classifier still applies each epoch.
"""

from __future__ import annotations

import threading
from typing import Any, Iterable

import torch
from torch import nn

from core.device import autocast
from core.models import ModelInfo


def head_block(model: nn.Module, info: ModelInfo) -> str:
    """The outermost module path containing the head and no backbone-stage parameter."""
    staged = {n for g in info.stages for n in g}
    parts = info.head.split(".")
    for depth in range(1, len(parts) + 1):
        path = ".".join(parts[:depth])
        names = [f"{path}.{n}" for n, _ in model.get_submodule(path).named_parameters()]
        if not any(n in staged for n in names):
            return path
    return info.head


class _Capture:
    """A forward pre-hook that keeps the input of a module and aborts the rest of the forward."""

    class Done(Exception):
        pass

    def __init__(self, module: nn.Module) -> None:
        self.value: torch.Tensor | None = None
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.value = args[0]
        raise _Capture.Done

    def close(self) -> None:
        self.handle.remove()


def trunk_features(model: nn.Module, block: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The input ``block`` receives when ``model`` runs on ``images`` (the forward stops there)."""
    capture = _Capture(block)
    try:
        model(images)
    except _Capture.Done:
        pass
    finally:
        capture.close()
    if capture.value is None:
        raise RuntimeError("the head block was never called; feature caching does not apply to this model")
    return capture.value


def extract(
    model: nn.Module,
    block: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    amp: bool = True,
    stop: threading.Event | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) for every batch, in order, on the device (bf16 on CUDA).

    Raises ``ExtractionStopped`` between batches once ``stop`` is set, so a stop during a
    long extraction takes effect in seconds, not after the whole pass.
    """
    was_training = model.training
    model.eval()
    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    dtype = torch.bfloat16 if device.type == "cuda" and amp else torch.float32
    with torch.inference_mode(), autocast(device, amp):
        for images, y in batches:
            if stop is not None and stop.is_set():
                model.train(was_training)
                raise ExtractionStopped
            feats.append(trunk_features(model, block, images.to(device, non_blocking=True)).to(dtype))
            labels.append(y.to(device, non_blocking=True))
    model.train(was_training)
    return torch.cat(feats), torch.cat(labels)


class ExtractionStopped(Exception):
    """A stop was requested while features were being extracted."""


class FeatureBatches:
    """Batches of cached features in a given sample order."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return self.features.shape[0]

    def batches(self, order: Any, batch_size: int, skip_batches: int = 0) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """(features, labels) batches following ``order``, from batch ``skip_batches`` on."""
        order_t = torch.as_tensor(order, dtype=torch.long).to(self.features.device)
        for start in range(skip_batches * batch_size, order_t.numel(), batch_size):
            index = order_t[start:start + batch_size]
            yield self.features.index_select(0, index).float(), self.labels.index_select(0, index)
