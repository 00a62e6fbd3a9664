"""Escape stops a running evaluation or classification, with the real engines.

Each test evaluates (or classifies) with the session's tiny trained run (``finished_run``).
``Held`` (tui_fixtures) wraps the real engine function and, on its first call only, waits
after the first progress event until ``stop`` is set, as a slow batch would: the key is
pressed while the engine is certainly mid-way, however fast this machine is. Nothing else
about the engine changes: ``stop`` is the worker's, and the real engine is what has to honour it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.widgets import Input, OptionList, ProgressBar, Static
from textual.worker import WorkerState
from tinydata import FinishedRun, make_image_folder
from tui_fixtures import Held, wait_for

from core import events as ev
from tui import engines
from tui.app import make_app
from tui.screens.classify import ClassifyScreen
from tui.screens.evaluate import EvaluateScreen
from tui.widgets.fields import ChoiceField
from tui.widgets.prob_bars import ProbabilityBars


def footer_keys(screen: Any) -> set[str]:
    """The keys the footer shows now (``check_action`` leaves out the ones that cannot run)."""
    return {key for key, active in screen.active_bindings.items() if active.binding.show}


async def test_escape_stops_a_real_evaluation_and_the_next_one_completes(
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
        # The job's end is handled after every event its worker posted, so once it is, nothing
        # the engine yielded can still arrive.
        await wait_for(pilot, lambda: not screen.running)
        assert first is not None and first.state == WorkerState.SUCCESS  # the engine stopped itself
        events, ended = evaluator.calls[0]
        assert ended.is_set(), "the engine's generator was left running"
        assert not any(isinstance(e, ev.EvaluationEnded) for e in events)  # stopped, not run to the end
        assert max(e.batch for e in events if isinstance(e, ev.EvalBatchEnded)) < 57
        summary = str(screen.query_one("#eval-summary", Static).render())
        assert summary.startswith("stopped after") and "of 57 batches" in summary and "failed" not in summary
        assert screen.result is None and bar.progress == 0  # no stale progress
        assert "escape" not in footer_keys(screen)

        await pilot.press("ctrl+r")  # the same evaluation again, not held this time
        await wait_for(pilot, lambda: screen.result is not None or not screen.running, timeout=120)
        assert screen.worker is not None and screen.worker.state == WorkerState.SUCCESS
        assert screen.result is not None and screen.result.images == 900 and screen.result.split == "test"
        assert str(screen.query_one("#eval-summary", Static).render()).startswith("top-1")
        assert evaluator.calls[1][1].is_set()


async def test_escape_stops_a_real_classification_and_keeps_what_it_classified(
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
        await wait_for(pilot, lambda: not screen.running)  # handled after every event the worker posted
        assert first is not None and first.state == WorkerState.SUCCESS  # the engine stopped itself
        events, ended = classifier.calls[0]
        assert ended.is_set(), "the engine's generator was left running"
        classified = [e for e in events if isinstance(e, ev.ImageClassified)]
        assert 0 < len(classified) < 120
        results = screen.query_one("#classify-results", OptionList)
        assert results.option_count == len(screen.results) == len(classified)  # each one it yielded, once
        assert str(results.border_title) == f"results (stopped after {len(classified)} of 120)"
        assert "escape" not in footer_keys(screen)

        await pilot.press("enter")  # again, to the end this time
        await wait_for(pilot, lambda: not screen.running and len(classifier.calls) == 2, timeout=120)
        assert screen.worker is not None and screen.worker.state == WorkerState.SUCCESS
        assert len(screen.results) == 120 and results.option_count == 120
        assert results.border_title == "results"
        assert screen.query_one("#top-k", ProbabilityBars).predictions  # the first image's guesses
