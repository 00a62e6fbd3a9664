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


def device_memory(device: str) -> dict[str, float]:
    """CUDA allocator and NVML figures on a GPU; the process's memory and CPU use otherwise."""
    from core.device import memory_stats, process_stats

    if device.startswith("cuda"):
        import torch

        return memory_stats(torch.device(device))
    return process_stats()
