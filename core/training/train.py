"""The training engine's entry point: ``train(config)`` is a generator of typed events.

``train`` joins the processes' strategy (one process, or a torchrun data-parallel job),
builds the run (``setup``), opens its run directory (``session``), and runs the loop
(``loop.fit``) with its hooks (``hooks``), recording every event but ``BatchEnded`` in
metrics.jsonl before yielding it. It syncs with the device only when it emits an event, at
most every ``emit_interval`` seconds, coalescing per-batch losses into one ``BatchEnded``.
Stopping is cooperative: ``stop`` is checked at each batch boundary; a stop saves a
checkpoint, yields ``RunStopped`` and returns. ``stop_after_epoch`` ends the run cleanly
at the next epoch boundary. status.json says how the run ended, whatever ended it.

Under torchrun every worker runs this same generator on its share of each global batch;
only rank 0 writes the run directory and yields events, and the figures it reports (loss,
accuracy, images/s, validation) are over all workers (``core.training.strategy``).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, Iterator, Sequence

from torch import nn

from core import events as ev
from core.config import RunConfig
from core.models.info import ModelInfo
from core.runs.resumption import ResumePoint
from core.training.hooks import Hook, Run, default_hooks
from core.training.loop import fit
from core.training.session import NullSession, RunSession
from core.training.setup import build
from core.training.state import RunState
from core.training.strategy import SingleProcess, join
from core.training.trackers import tracked

EMIT_INTERVAL = 0.1
"""Seconds between ``BatchEnded`` events (each one is a host sync)."""


def train(
    config: RunConfig,
    *,
    stop: threading.Event | None = None,
    stop_after_epoch: threading.Event | None = None,
    resume: ResumePoint | None = None,
    hooks: Sequence[Hook] = (),
    emit_interval: float = EMIT_INTERVAL,
    build_fn: Callable[..., tuple[nn.Module, ModelInfo]] | None = None,
) -> Iterator[ev.Event]:
    """Train as ``config`` says, yielding events; see the module docstring.

    Args:
        resume: from ``core.runs.resumption.prepare``: continue a run in its own directory from
            its checkpoint (same sample order, stage, schedule and RNG states).
        hooks: extra hooks, run after the engine's own (``core.training.hooks``).
        emit_interval: seconds between ``BatchEnded`` events (0 reports every batch).
        build_fn: builds the model (``core.models.build.build_model``'s signature; the default is that).
    """
    strategy = join(config.device)
    try:
        yield from strategy.events(_train(config, strategy, stop, stop_after_epoch, resume, hooks, emit_interval, build_fn))
    except Exception as exc:
        lost = strategy.lost(exc)
        if lost is not None:
            raise lost from None
        raise
    finally:
        strategy.close()


def _train(
    config: RunConfig, strategy: SingleProcess, stop: threading.Event | None, stop_after_epoch: threading.Event | None,
    resume: ResumePoint | None, hooks: Sequence[Hook], emit_interval: float,
    build_fn: Callable[..., tuple[nn.Module, ModelInfo]] | None,
) -> Iterator[ev.Event]:
    setup = build(config, strategy, resume, build_fn)
    run_dir = resume.run_dir if resume is not None else Path(strategy.from_main(lambda: str(RunSession.create(setup.config))))
    state = RunState()
    setup.restore.run_state(state)
    session: RunSession = strategy.main_value(RunSession, NullSession)(run_dir, state)
    session.open(resumed=resume is not None, extra=strategy.status(), started=state.started)
    origin = resume.meta.get("cwd") if resume is not None else os.getcwd()
    engine_hooks = default_hooks(setup, stop, stop_after_epoch, emit_interval)
    run = Run(setup, session, state, [*engine_hooks, *hooks], str(origin) if origin else "", stop)
    error: str | None = None
    # --log trackers read the stream metrics.jsonl gets, on the one process that writes the run (trackers.py).
    events = tracked(fit(run), setup.config, run_dir, stop) if strategy.is_main and setup.config.log else fit(run)
    try:
        for event in events:
            session.record(event)
            yield event
    except (GeneratorExit, KeyboardInterrupt):
        state.outcome = "interrupted"
        raise
    except BaseException as exc:
        lost = strategy.lost(exc)
        error = f"{type(lost or exc).__name__}: {lost or exc}"
        if lost is not None:
            raise lost from None
        raise
    finally:
        session.close(state.outcome, state.step, state.started, setup.cache.paths(), error)
