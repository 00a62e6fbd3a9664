"""``--batch-size auto``: the largest batch that fits in device memory, found as Lightning does.

``search`` is Lightning's ``binsearch`` batch-size scaler: double the size until a trial
runs out of memory (or reaches the limit), then binary-search between the last size that
fit and the first that did not. ``memory_trial`` makes the trial: two real training steps
(forward, backward, optimiser step) on random inputs of the run's image size, with the
stage's layers frozen as they will be, so gradients and optimiser state are counted. The
model's weights, BatchNorm statistics, ``requires_grad`` flags and every RNG are restored
afterwards, so a run with ``auto`` trains exactly as one given the size it found. Off CUDA,
where running out of memory kills the process instead of raising, the search stops at
``NON_CUDA_LIMIT``.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Callable, Iterator

import torch
from torch import nn

from core.config import RunConfig
from core.device import autocast, is_out_of_memory
from core.errors import OutOfMemory
from core.models.freeze import freeze, train_mode, trainable_parameters
from core.models.info import ModelInfo
from core.training.plan import Stage
from core.training.schedule import make_optimizer

START = 2
MAX_TRIALS = 25
NON_CUDA_LIMIT = 64


def fits(trial: Callable[[int], None], size: int, device: torch.device) -> bool:
    """Run ``trial(size)``; False when it ran out of memory (other errors propagate)."""
    try:
        trial(size)
        return True
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
    # Out of the except block, the failed trial's tensors are unreachable: give them back.
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return False


def search(fit: Callable[[int], bool], limit: int, start: int = START, max_trials: int = MAX_TRIALS) -> tuple[int, list[tuple[int, bool]]]:
    """(largest size that fit, [(size, fitted), ...]); size 0 when not even 1 fits."""
    tried: list[tuple[int, bool]] = []
    low, high = 0, None
    size = max(1, min(start, limit))
    while len(tried) < max_trials:
        ok = fit(size)
        tried.append((size, ok))
        if ok:
            low = size
            if high is None:
                if size >= limit:
                    break
                size = min(2 * size, limit)
                continue
        else:
            high = size
        if high - low <= 1:
            break
        size = (low + high) // 2
    return low, tried


@contextlib.contextmanager
def preserved(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Run a block, then put back the model's state, flags and modes and every RNG."""
    snapshot = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    cuda = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        model.load_state_dict(snapshot)
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
            p.grad = None
        for m, mode in zip(model.modules(), modes):
            m.training = mode


def memory_trial(
    model: nn.Module,
    params: list[nn.Parameter],
    make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    device: torch.device,
    image_size: int,
    num_classes: int,
    autocast: Callable[[], contextlib.AbstractContextManager[object]],
    channels_last: bool = False,
) -> Callable[[int], None]:
    """A trial running two training steps at a given batch size (call inside ``preserved``)."""
    from core.device import channels_last_ok

    fmt = torch.channels_last if channels_last_ok(device, channels_last) else torch.contiguous_format

    def trial(size: int) -> None:
        optimizer = make_optimizer(params)
        images = torch.randn(size, 3, image_size, image_size, device=device).contiguous(memory_format=fmt)
        labels = torch.randint(0, num_classes, (size,), device=device)
        for _ in range(2):
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                loss = nn.functional.cross_entropy(model(images).float(), labels)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        optimizer.zero_grad(set_to_none=True)

    return trial


def describe(found: int, tried: list[tuple[int, bool]], limit: int, device: torch.device) -> str:
    """The log line for a finished search."""
    steps = ", ".join(f"{size} {'fits' if ok else 'out of memory'}" for size, ok in tried)
    capped = ""
    if found >= limit and all(ok for _, ok in tried):
        capped = f" (the limit: {'the training set size' if device.type == 'cuda' else f'at most {limit} off CUDA'})"
    return f"--batch-size auto: tried {steps}; using {found}{capped}"


def not_even_one(device: torch.device) -> OutOfMemory:
    """The error when a single image does not fit."""
    return OutOfMemory(
        f"{device} ran out of memory at batch size 1 while searching for --batch-size auto; "
        "try a smaller --image-size or backbone, or --mode linear-probe",
        1,
    )


def auto_batch_size(
    model: nn.Module, info: ModelInfo, config: RunConfig, stages: list[Stage], device: torch.device, num_classes: int, train_size: int
) -> tuple[int, str]:
    """(batch size, log line) for ``--batch-size auto``, measured on the run's hungriest stage."""
    # Fine-tuning keeps the most activations and optimiser state: measure the stage that trains most.
    order = {"linear-probe": 0, "partial": 1, "finetune": 2}
    stage = max(stages, key=lambda s: order.get(s.mode, 2))
    limit = train_size if device.type == "cuda" else min(train_size, NON_CUDA_LIMIT)
    with preserved(model, device):
        freeze(model, info, stage.mode, config.unfreeze_stages)
        train_mode(model)
        params = trainable_parameters(model)
        trial = memory_trial(
            model, params,
            lambda p: make_optimizer(p, config.optimizer, stage.lr, config.momentum, config.weight_decay),
            device, config.image_size, num_classes,
            lambda: autocast(device, config.amp), config.channels_last,
        )
        found, tried = search(lambda size: fits(trial, size, device), limit)
    if found < 1:
        raise not_even_one(device)
    return found, describe(found, tried, limit, device)
