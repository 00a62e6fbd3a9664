"""The learning-rate range test (Smith 2015; fastai's ``lr_find`` and Lightning's ``Tuner.lr_find``).

``lr_find(config)`` builds the run exactly as ``train`` would (``setup.build``: data, model,
stages, sample order) but opens no run directory. For each stage it trains a bounded number
of steps (``steps``, 100 as both anchors) with the rate growing exponentially from
``start_lr`` to ``end_lr``, records the loss smoothed by a debiased moving average
(beta 0.98, both anchors), stops once the smoothed loss passes four times its best (both
anchors' threshold) or turns non-finite, and yields ``LrFound`` with the curve and a
suggestion (``suggest``). Each loss is read on the host at once: the test must see a
divergence when it happens, which is the one reason for a sync per step here.

Stage-aware: a linear probe runs on cached backbone features (``core.training.pipeline``,
seconds), fine-tuning and partial on the full network through the stage's data path. For
probe-then-finetune the probe is tested first; the head is then trained for the run's probe
epochs at the probe's suggestion and the fine-tuning stage is tested from there, so its
curve is not that of a random head. Afterwards the model's weights and every RNG (torch,
CUDA, Python, NumPy) are as they were before; the optimisers were the test's own.
"""

from __future__ import annotations

import copy
import math
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from core import events as ev
from core.config import RunConfig
from core.data.loaders import to_device
from core.device import autocast
from core.errors import ConfigError
from core.models.freeze import freeze, param_groups, train_mode
from core.models.info import ModelInfo
from core.training.features import ExtractionStopped
from core.training.pipeline import Pipeline, pipeline_steps
from core.training.plan import Stage
from core.training.schedule import make_optimizer
from core.training.setup import Setup, build
from core.training.strategy import SingleProcess

START_LR = 1e-7
END_LR = 10.0
STEPS = 100
MIN_STEPS = 20
BETA = 0.98
DIVERGENCE = 4.0
LOSS_FLOOR = 0.05
QUIET_STEPS = 10
EMIT_INTERVAL = 0.1


@dataclass(frozen=True)
class Suggestion:
    """The suggested rate, the rule that chose it and why, and both rules' answers."""

    lr: float
    rule: str
    reason: str
    valley: float
    steepest: float


def lr_find(
    config: RunConfig,
    *,
    steps: int = STEPS,
    start_lr: float = START_LR,
    end_lr: float = END_LR,
    stop: threading.Event | None = None,
    build_fn: Callable[..., tuple[nn.Module, ModelInfo]] | None = None,
) -> Iterator[ev.Event]:
    """Range-test each stage of ``config``; see the module docstring. Yields ``LrFound`` per stage."""
    if steps < MIN_STEPS:
        raise ConfigError(f"--steps must be at least {MIN_STEPS} (got {steps}); a shorter curve gives no usable suggestion")
    if not 0 < start_lr < end_lr:
        raise ConfigError(f"--start-lr must be above 0 and below --end-lr (got {start_lr:g} and {end_lr:g}); try 1e-7 and 10")
    rng = _rng_state()
    setup: Setup | None = None
    initial: dict[str, torch.Tensor] = {}
    try:
        setup = build(config, SingleProcess(), None, build_fn)
        initial = copy.deepcopy(setup.model.state_dict())
        found: ev.LrFound | None = None
        for index, stage in enumerate(setup.stages):
            if found is not None:  # probe-then-finetune: a short probe at the probe's suggestion first
                yield from _train_probe(setup, setup.stages[index - 1], found.suggestion, stop)
            found = yield from _range_test(setup, stage, steps, start_lr, end_lr, stop)
            if found is None:
                return
            yield found
    finally:
        if setup is not None:
            setup.model.load_state_dict(initial)
        _set_rng_state(rng)


def _range_test(setup: Setup, stage: Stage, steps: int, start_lr: float, end_lr: float,
                stop: threading.Event | None) -> Iterator[ev.Event]:
    """One stage's curve and suggestion (``LrFound``), or None after a stop (``LrFindStopped`` yielded)."""
    optimizer, ratios = _optimizer(setup, stage, start_lr)
    try:
        pipeline = yield from _pipeline(setup, stage, stop)
    except ExtractionStopped:
        yield ev.LrFindStopped(stage.name, 0)
        return None
    train_mode(setup.forward, frozen_bn=stage.bn == "frozen")
    lrs: list[float] = []
    losses: list[float] = []
    average, best, diverged, last = 0.0, math.inf, False, time.perf_counter()
    for images, labels in _batches(setup, pipeline, steps):
        if stop is not None and stop.is_set():
            yield ev.LrFindStopped(stage.name, len(lrs))
            return None
        lr = start_lr * (end_lr / start_lr) ** (len(lrs) / (steps - 1))
        for group, ratio in zip(optimizer.param_groups, ratios):
            group["lr"] = lr * ratio
        loss = _step(setup, pipeline.forward, optimizer, images, labels).item()  # the divergence check needs it now
        average = BETA * average + (1 - BETA) * loss
        smoothed = average / (1 - BETA ** (len(lrs) + 1))
        # One batch's noise is no divergence: none is called in the first steps, and a nearly perfect fit
        # (a loss near 0 after the probe) is floored, or any rise from it would count.
        rising = len(lrs) >= QUIET_STEPS and smoothed > DIVERGENCE * max(best, LOSS_FLOOR)
        if not math.isfinite(smoothed) or rising:
            diverged = True
            break
        lrs.append(lr)
        losses.append(smoothed)
        best = min(best, smoothed)
        now = time.perf_counter()
        if now - last >= EMIT_INTERVAL:
            last = now
            yield ev.LrFindProgressed(stage.name, len(lrs), steps, lr, smoothed)
    s = suggest(lrs, losses)
    return ev.LrFound(stage.name, stage.mode, tuple(lrs), tuple(losses), s.lr, s.rule, s.reason, s.valley, s.steepest, diverged)


def _optimizer(setup: Setup, stage: Stage, lr: float) -> tuple[torch.optim.Optimizer, list[float]]:
    """The stage's freezing and optimiser at ``lr``, and each group's rate relative to the head's (layer decay)."""
    config = setup.config
    freeze(setup.model, setup.info, stage.mode, config.unfreeze_stages)
    groups = param_groups(setup.model, setup.info, lr, config.layer_decay)
    optimizer = make_optimizer(groups, config.optimizer, lr, config.momentum, config.weight_decay)
    return optimizer, [g["lr"] / lr for g in groups]


def _pipeline(setup: Setup, stage: Stage, stop: threading.Event | None) -> Iterator[ev.Event]:
    """The stage's data path, as the training loop makes it (cached features for a probe)."""
    config = setup.config
    return pipeline_steps(
        cache=setup.cache, model=setup.model, forward=setup.forward, info=setup.info, stage_mode=stage.mode,
        augment=stage.augment, batch_size=setup.global_batch, seed=config.seed, workers=setup.workers,
        channels_last=config.channels_last, amp=config.amp, cache_features=config.cache_features, sampler=setup.sampler,
        stop=stop,
    )


def _batches(setup: Setup, pipeline: Pipeline, steps: int, epochs: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` training batches (or ``epochs`` whole epochs), epoch after epoch in the sampler's order."""
    done, epoch = 0, 0
    while (done < steps) if epochs is None else (epoch < epochs):
        epoch += 1
        setup.sampler.set_epoch(epoch)
        for images, labels in pipeline.epoch_batches(epoch, setup.sampler.order(), 0):
            if images is None:  # every image of the batch was unreadable
                continue
            yield images, labels
            done += 1
            if epochs is None and done >= steps:
                return


def _step(setup: Setup, forward: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
          labels: torch.Tensor) -> torch.Tensor:
    """forward -> loss -> backward -> step, as the loop does; returns the loss (on the device)."""
    config = setup.config
    images = to_device(images, setup.device, config.channels_last)
    labels = labels.to(setup.device, non_blocking=True)
    with autocast(setup.device, config.amp):
        logits = forward(images)
    loss = nn.functional.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _train_probe(setup: Setup, stage: Stage, lr: float, stop: threading.Event | None) -> Iterator[ev.Event]:
    """Train the head for the probe stage's epochs at ``lr`` (no validation), so fine-tuning starts from a trained head."""
    optimizer, _ = _optimizer(setup, stage, lr)
    try:
        pipeline = yield from _pipeline(setup, stage, stop)
    except ExtractionStopped:
        return
    train_mode(setup.forward, frozen_bn=True)
    for images, labels in _batches(setup, pipeline, 0, epochs=stage.epochs):
        if stop is not None and stop.is_set():
            return
        _step(setup, pipeline.forward, optimizer, images, labels)
    yield ev.MessageLogged("info", f"trained the head for {stage.epochs} probe epoch(s) at lr {lr:.2g} before testing fine-tuning")


def suggest(lrs: list[float], losses: list[float]) -> Suggestion:
    """The suggested rate: the steepest descent (Lightning's default), with fastai's valley beside it.

    Both look at the curve without its first tenth and last five points (fastai's trim: the
    start is noise at rates too small to move the loss, the end is the blow-up). Steepest
    descent is the rate where the smoothed loss falls fastest per decade of rate: the
    rate at which training makes the most progress before it turns unstable. Valley
    (fastai's default since 2.5) takes the middle of the longest falling run of the loss;
    on a frozen-feature probe that run starts in the long, nearly flat stretch of tiny rates
    (noise makes it "fall" there), so the valley lands far too low: measured on ../shared
    (bench/RESULTS.md, "LR finder"), a 5-epoch probe at the valley's 2.1e-4 scores 55.0% on
    held-out images, at the notebook's 1e-3 62.0%, at the steepest descent's 3.4e-3 64.2%.
    """
    if len(lrs) < 3:
        raise ConfigError(
            f"the loss diverged after {len(lrs)} step(s) of the range test; lower --start-lr (e.g. 1e-8) or check the data"
        )
    skip_start, skip_end = len(lrs) // 10, 5 if len(lrs) > 15 else 0
    rates = lrs[skip_start:len(lrs) - skip_end]
    curve = losses[skip_start:len(losses) - skip_end]
    steepest = _steepest(rates, curve)
    valley = rates[_valley(curve)]
    lowest = rates[min(range(len(curve)), key=curve.__getitem__)]
    reason = (f"steepest descent: the smoothed loss falls fastest per decade at {steepest:.2g}, "
              f"below its minimum at {lowest:.2g} (fastai's valley rule would say {valley:.2g})")
    return Suggestion(steepest, "steepest", reason, valley, steepest)


def _steepest(lrs: list[float], losses: list[float]) -> float:
    """The rate where the loss falls fastest against log(lr)."""
    slopes = [(losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i])) for i in range(len(lrs) - 1)]
    return lrs[min(range(len(slopes)), key=slopes.__getitem__)] if slopes else lrs[0]


def _valley(losses: list[float]) -> int:
    """fastai's valley: the index halfway into the longest falling run of the loss."""
    n = len(losses)
    run = [1] * n  # run[i]: the longest decreasing subsequence ending at i
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[end] < run[i]:
            end, start = i, i - run[i]
    third = (end - start) / 3
    return max(0, min(n - 1, start + int(third) + int(third / 2)))


def _rng_state() -> dict[str, Any]:
    import numpy as np

    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
