"""The scripted engine against the real one: the same sequence of events, so the fake the
TUI tests drive cannot drift from what ``core.training.train.train`` yields.

Each case runs the real engine on ``tiny_config`` (three batches an epoch on the CPU) and the
scripted one on the same config, then compares event types in order, with each run of
``BatchEnded`` collapsed to one (the real engine coalesces batches by time) and the kind of
each checkpoint and the text of each log line's stage, which the screens key on.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterable, Iterator

import pytest
from tui_fixtures import ScriptedEngine

from core import events as ev
from core.config import RunConfig


def shape(events: Iterable[Any]) -> list[str]:
    """Event type names in order; a run of BatchEnded counts once."""
    out: list[str] = []
    for event in events:
        name = type(event).__name__
        if isinstance(event, ev.CheckpointSaved):
            name += f"({event.kind})"
        elif isinstance(event, (ev.StageStarted, ev.EpochStarted)):
            name += f"({event.stage})"
        elif isinstance(event, ev.RunStopped):
            name += f"({event.reason})"
        elif isinstance(event, ev.ExtractionProgressed):
            name += f"({event.split})"
        if name.startswith(("BatchEnded", "ExtractionProgressed")) and out and out[-1] == name:
            continue
        out.append(name)
    return out


def stopping_at_first_batch(events: Iterator[Any], stop: threading.Event) -> Iterator[Any]:
    """``events``, setting ``stop`` once the first batch is reported (as the stop key would)."""
    for event in events:
        yield event
        if isinstance(event, ev.BatchEnded):
            stop.set()


def run(engine: Callable[..., Iterator[Any]], config: RunConfig, case: str) -> list[Any]:
    stop, after_epoch = threading.Event(), threading.Event()
    if case == "stop after epoch":
        after_epoch.set()
    events = engine(config, stop=stop, stop_after_epoch=after_epoch)
    if case == "stop now":
        events = stopping_at_first_batch(events, stop)
    return list(events)


CASES = (
    ("finetune", "to the end", {"mode": "finetune", "epochs": 2}),
    ("linear-probe", "to the end", {"mode": "linear-probe", "epochs": 2}),
    ("probe-then-finetune", "to the end", {"mode": "probe-then-finetune", "probe_epochs": 1, "epochs": 1}),
    ("stop-now", "stop now", {"mode": "finetune", "epochs": 2}),
    ("stop-after-epoch", "stop after epoch", {"mode": "finetune", "epochs": 2}),
)


@pytest.mark.parametrize(("case", "overrides"), [(c, o) for _, c, o in CASES], ids=[i for i, _, _ in CASES])
def test_the_scripted_engine_yields_the_real_engines_sequence(
    case: str, overrides: dict[str, Any], tiny_config: Callable[..., RunConfig],
) -> None:
    from core.training.train import train

    config = tiny_config(**overrides)
    real = run(train, config, case)
    fake = run(ScriptedEngine(batches=3), config, case)
    assert shape(fake) == shape(real)
    real_start, fake_start = real[0], fake[0]
    assert isinstance(real_start, ev.RunStarted) and isinstance(fake_start, ev.RunStarted)
    assert fake_start.total_epochs == real_start.total_epochs
    # The stage plan: the real engine fills it in a parallel change; until then it is empty.
    assert real_start.stages == fake_start.stages  # the engine sends its stage plan
    assert [m.message for m in fake if isinstance(m, ev.MessageLogged)] == [
        m.message for m in real if isinstance(m, ev.MessageLogged)
    ]
