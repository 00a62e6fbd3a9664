"""One interface over every model tlwork can score or classify with.

``load_classifier(ref)`` accepts ``last``, a run name or directory, a bundle path, and
``hf:ID_OR_PATH`` for Hugging Face models, and returns a ``Classifier``: a model in eval
mode on the device, its class names, the preprocessing it expects, and ``logits(batch)``.
Evaluation and classification both go through it, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from core.data.transforms import Preprocessing
from core.device import channels_last_ok
from core.models.hf import load_pretrained, processor_preprocessing, processor_transform
from core.runs.bundle import load_bundle
from core.runs.store import resolve_model


@dataclass
class Classifier:
    """A ready-to-use model and what it needs."""

    name: str
    model: nn.Module
    class_names: list[str]
    preprocessing: Preprocessing
    logits: Callable[[torch.Tensor], torch.Tensor]
    path: Path | None = None
    amp: bool = True
    # PIL image -> input tensor when the model brings its own (a Hugging Face image processor);
    # None means eval_transform(preprocessing).
    transform: Callable[[Any], torch.Tensor] | None = None
    info: Any = None  # a bundle's ModelInfo (its stages), for Grad-CAM; None for Hugging Face models


def load_classifier(ref: str, device: torch.device, runs_dir: str = "runs") -> Classifier:
    """The model named by ``ref`` on ``device``: a Hugging Face model as it is, or a run's bundle."""
    if ref.startswith("hf:"):
        return _pretrained_hf(ref[3:], device)
    path = resolve_model(ref, runs_dir)
    bundle = load_bundle(path, device)
    if channels_last_ok(device):  # as in training, so evaluation reproduces its numbers
        bundle.model.to(memory_format=torch.channels_last)
    amp = bool(bundle.meta.get("amp", True))
    return Classifier(str(path), bundle.model, bundle.class_names, bundle.preprocessing, bundle.model, path, amp,
                      info=bundle.info)


def _pretrained_hf(id_or_path: str, device: torch.device) -> Classifier:
    """A pretrained Hugging Face classifier with its own labels and image processor."""
    wrapper, class_names, processor = load_pretrained(id_or_path)
    wrapper = wrapper.to(device).eval()
    size, mean, std, interpolation = processor_preprocessing(processor, wrapper.model.config)
    pre = Preprocessing(size, mean, std, interpolation)
    transform = processor_transform(processor) if processor is not None else None
    # fp32 like the pipeline (amp=False), so top-k scores match it; path=None: no tlwork run beside it.
    return Classifier(f"hf:{id_or_path}", wrapper, class_names, pre, wrapper, None, False, transform)
