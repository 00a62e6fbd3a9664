"""Escape cancels a running evaluation or classification, with the real engines.

Each test evaluates (or classifies) with the session's tiny trained run (``finished_run``).
``Held`` wraps the real engine function and, on its first call only, waits after the first
progress event until ``stop`` is set, as a slow batch would: the key is pressed while the
engine is certainly mid-way, however fast this machine is. Nothing else about the engine
changes: ``stop`` is the worker's, and the real engine is what has to honour it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from textual.widgets import Input, OptionList, ProgressBar, Static
from textual.worker import WorkerState
from tinydata import FinishedRun, make_image_folder
from tui_fixtures import wait_for

from core import events as ev
from tui import engines
from tui.app import make_app
from tui.screens.classify import ClassifyScreen
from tui.screens.evaluate import EvaluateScreen
from tui.widgets.fields import ChoiceField
from tui.widgets.prob_bars import ProbabilityBars


@dataclass
class Held:
    """``engine`` as it is, except that its first call pauses after its first ``after`` event until ``stop`` is set."""

    engine: Callable[..., Iterator[Any]]
    after: type
    calls: list[tuple[list[Any], threading.Event]] = field(default_factory=list)
    held: threading.Event = field(default_factory=threading.Event)  # set once it waits

    def __call__(self, *args: Any, stop: threading.Event | None = None, **kwargs: Any) -> Iterator[Any]:
        events: list[Any] = []
        ended = threading.Event()  # set once the engine's generator is finished or closed
        self.calls.append((events, ended))
        hold = len(self.calls) == 1
        try:
            for event in self.engine(*args, stop=stop, **kwargs):
                events.append(event)
                yield event
                if hold and isinstance(event, self.after):
                    hold = False
                    self.held.set()
                    deadline = time.monotonic() + 30
                    while stop is not None and not stop.is_set() and time.monotonic() < deadline:
                        time.sleep(0.01)
        finally:
            ended.set()


def footer_keys(screen: Any) -> set[str]:
    """The keys the footer shows now (``check_action`` leaves out the ones that cannot run)."""
    return {key for key, active in screen.active_bindings.items() if active.binding.show}


async def test_escape_cancels_a_real_evaluation_and_the_next_one_completes(
    finished_run: FinishedRun, tmp_path: Path, monkeypatch: Any,
) -> None:
    monkeypatch.chdir(tmp_path)
    big = make_image_folder(tmp_path / "big", train=1, test=300)  # 900 test images: 57 batches of 16
    evaluator = Held(engines.evaluate, ev.EvalBatchEnded)
    app = make_app(evaluator=evaluator, runs_dir=str(finished_run.runs_dir), cursor_blink=False)
    async with app.run_test(size=(110, 34)) as pilot:
        await pilot.press("f3")
        screen = app.screen
        assert isinstance(screen, EvaluateScreen)
        assert "escape" not in footer_keys(screen)  # nothing to cancel yet
        screen.query_one("#eval-dataset", ChoiceField).set_value(f"imagefolder:{big}")
        await pilot.press("ctrl+r")
        bar = screen.query_one("#eval-progress", ProgressBar)
        await wait_for(pilot, lambda: (bar.progress or 0) > 0 or not screen.running, timeout=120)
        assert screen.running and bar.total == 57
        await wait_for(pilot, lambda: "escape" in footer_keys(screen))

        first = screen.worker
        await pilot.press("escape")
        await wait_for(pilot, lambda: not screen.running)
        assert first is not None and first.state == WorkerState.CANCELLED
        events, ended = evaluator.calls[0]
        assert ended.wait(30), "the engine's generator was left running"
        assert not any(isinstance(e, ev.EvaluationEnded) for e in events)  # stopped, not run to the end
        assert max(e.batch for e in events if isinstance(e, ev.EvalBatchEnded)) < 57
        summary = str(screen.query_one("#eval-summary", Static).render())
        assert summary.startswith("cancelled") and "failed" not in summary
        assert screen.result is None and bar.progress == 0  # no stale progress
        await pilot.pause(0.3)  # anything the cancelled engine posted late must not show
        assert bar.progress == 0 and str(screen.query_one("#eval-summary", Static).render()).startswith("cancelled")
        await wait_for(pilot, lambda: "escape" not in footer_keys(screen))

        await pilot.press("ctrl+r")  # the same evaluation again, not held this time
        await wait_for(pilot, lambda: screen.result is not None or not screen.running, timeout=120)
        assert screen.worker is not None and screen.worker.state == WorkerState.SUCCESS
        assert screen.result is not None and screen.result.images == 900 and screen.result.split == "test"
        assert str(screen.query_one("#eval-summary", Static).render()).startswith("top-1")
        assert evaluator.calls[1][1].is_set()


async def test_escape_cancels_a_real_classification_and_keeps_what_it_classified(
    finished_run: FinishedRun, tmp_path: Path, monkeypatch: Any,
) -> None:
    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "photos", classes=("snaps",), train=120, layout="flat")  # 4 batches of 32
    classifier = Held(engines.classify, ev.ImageClassified)
    app = make_app(classifier=classifier, runs_dir=str(finished_run.runs_dir), browse_dir="photos", cursor_blink=False)
    async with app.run_test(size=(110, 34)) as pilot:
        await app.open_classify(str(finished_run.run_dir))
        screen = app.screen
        assert isinstance(screen, ClassifyScreen)
        screen.query_one("#image-path", Input).value = "photos/snaps"
        await pilot.press("enter")
        await wait_for(pilot, lambda: classifier.held.is_set() and "escape" in footer_keys(screen), timeout=120)

        first = screen.worker
        await pilot.press("escape")
        await wait_for(pilot, lambda: not screen.running)
        assert first is not None and first.state == WorkerState.CANCELLED
        events, ended = classifier.calls[0]
        assert ended.wait(30), "the engine's generator was left running"
        classified = [e for e in events if isinstance(e, ev.ImageClassified)]
        assert 0 < len(classified) < 120 and not any(isinstance(e, ev.ClassificationEnded) for e in events)
        results = screen.query_one("#classify-results", OptionList)
        await pilot.pause(0.3)
        assert results.option_count == len(screen.results) <= len(classified)  # nothing after the cancel shows
        assert "cancelled" in str(results.border_title)
        await wait_for(pilot, lambda: "escape" not in footer_keys(screen))

        await pilot.press("enter")  # again, to the end this time
        await wait_for(pilot, lambda: not screen.running and len(classifier.calls) == 2, timeout=120)
        assert screen.worker is not None and screen.worker.state == WorkerState.SUCCESS
        assert len(screen.results) == 120 and results.option_count == 120
        assert results.border_title == "results"
        assert screen.query_one("#top-k", ProbabilityBars).predictions  # the first image's guesses
