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

from core.transforms import Preprocessing


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


def load_classifier(ref: str, device: torch.device, runs_dir: str = "runs") -> Classifier:
    """The model named by ``ref`` on ``device``."""
    if ref.startswith("hf:"):
        from core import hf

        return hf.load_hf_classifier(ref[3:], device)
    from core.bundle import load_bundle, read_meta
    from core.runs import resolve_model

    path = resolve_model(ref, runs_dir)
    meta = read_meta(path)
    if meta["arch"].get("kind") == "hf":
        from core import hf

        return hf.load_hf_bundle(path, device)
    bundle = load_bundle(path, device)
    from core.device import channels_last_ok

    if channels_last_ok(device):  # as in training, so evaluation reproduces its numbers
        bundle.model.to(memory_format=torch.channels_last)
    amp = bool(meta.get("amp", True))
    return Classifier(str(path), bundle.model, bundle.class_names, bundle.preprocessing, bundle.model, path, amp)
