"""The engine functions the workbench calls unless ``make_app`` is given others.

Each is a thin wrapper that imports its ``core`` module when first called, which happens in a
screen's thread worker: torch loads there, not while the app starts (``tlwork`` opens at
once). Tests pass scripted stand-ins with the same signatures instead.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from core.config import RunConfig

Engine = Callable[..., Iterator[Any]]
Memory = Callable[[str], dict[str, float]]
Overlay = Callable[[str, str], Any]


def train(config: RunConfig, **kwargs: Any) -> Iterator[Any]:
    """``core.training.train.train``."""
    from core.training.train import train as run

    return run(config, **kwargs)


def resume(run_dir: str, **kwargs: Any) -> Iterator[Any]:
    """``core.training.resume.resume``: continue a stopped or killed run from its last checkpoint."""
    from core.training.resume import resume as run

    return run(run_dir, **kwargs)


def evaluate(ref: str, dataset: str | None = None, **kwargs: Any) -> Iterator[Any]:
    """``core.inference.evaluate.evaluate``."""
    from core.inference.evaluate import evaluate as run

    return run(ref, dataset, **kwargs)


def classify(model_ref: str, inputs: list[str], **kwargs: Any) -> Iterator[Any]:
    """``core.inference.classify.classify``."""
    from core.inference.classify import classify as run

    return run(model_ref, inputs, **kwargs)


def lr_find(config: RunConfig, **kwargs: Any) -> Iterator[Any]:
    """``core.training.lrfind.lr_find``: the learning-rate range test of each stage."""
    from core.training.lrfind import lr_find as run

    return run(config, **kwargs)


def mistakes(ref: str, dataset: str | None = None, **kwargs: Any) -> Iterator[Any]:
    """``core.inference.mistakes.find_mistakes``: the highest-loss images of a scored split."""
    from core.inference.mistakes import find_mistakes as run

    return run(ref, dataset, **kwargs)


_explainers: dict[str, Any] = {}


def overlay(ref: str, path: str) -> Any:
    """The Grad-CAM overlay of the image at ``path`` for ``ref``'s prediction (a PIL image); the model loads once per ref."""
    from core.data.images import open_rgb
    from core.device import pick_device
    from core.inference.classifier import load_classifier
    from core.inference.explain import Explainer

    if ref not in _explainers:
        _explainers[ref] = Explainer(load_classifier(ref, pick_device("auto")))
    return _explainers[ref].overlay(open_rgb(path))[0]


def device_memory(device: str) -> dict[str, float]:
    """CUDA allocator and NVML figures on a GPU; the process's memory and CPU use otherwise."""
    from core.device import memory_stats, process_stats

    if device.startswith("cuda"):
        import torch

        return memory_stats(torch.device(device))
    return process_stats()
