"""Batches for scoring and streaming: the evaluation DataLoader, device-resident or streamed evaluation batches, loader process counts and moving a batch to the device."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch.utils.data import DataLoader

from core.data.safedata import worker_options
from core.data.transforms import Preprocessing, Transformed, eval_transform


def make_loader(
    dataset: Any,
    pre: Preprocessing,
    batch_size: int,
    device: torch.device,
    workers: int | None = None,
    transform: Callable[[Any], torch.Tensor] | None = None,
) -> DataLoader:
    """A deterministic evaluation loader for raw (image, label) items (``transform`` overrides ``pre``)."""
    workers = default_workers(device) if workers is None else workers
    return DataLoader(
        Transformed(dataset, transform or eval_transform(pre)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        **worker_options(workers),  # a stop signal to the process group is the main process's to handle
    )


def eval_batches(
    data: Any, pre: Preprocessing, batch_size: int, device: torch.device, workers: int | None,
    transform: Any = None, native_size: int | None = None,
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Batches in dataset order: device-resident when the split fits the budget, else streamed.

    Both give bit-identical tensors (``core.data.fastdata``); a model with its own transform (a
    Hugging Face processor) always streams through that transform.
    """
    from core.data import fastdata

    if transform is None and fastdata.decoded_size(data, pre.size, native_size) <= fastdata.memory_budget(device):
        images, labels = fastdata.decode_all(data, pre.size, pre.interpolation)
        return fastdata.DeviceImages(images, labels, pre, device).batches(range(len(data)), batch_size)
    return make_loader(data, pre, batch_size, device, workers, transform)


def default_workers(device: torch.device) -> int:
    """Loader processes: none on CPU (the model uses every core), up to 8 beside a GPU."""
    import os

    if device.type == "cpu":
        return 0
    return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """Move a batch to the device, channels-last on CUDA."""
    from core.device import channels_last_ok

    fmt = torch.channels_last if channels_last_ok(device, channels_last) and images.dim() == 4 else torch.contiguous_format
    return images.to(device, non_blocking=True, memory_format=fmt)


