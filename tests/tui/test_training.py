"""The training screen with the scripted engine: progress, curves, stopping, quitting, errors."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
from textual.widgets import DataTable, ProgressBar, RichLog, Static
from tui_fixtures import CUDA_MEMORY, DEMO_CONFIG, PTF, ScriptedEngine, loss_at, make_test_app, wait_for

from core import events as ev
from core.errors import ConfigError
from tui.screens.dialogs import ConfirmScreen, ErrorScreen
from tui.widgets.loss_chart import LossChart
from tui.widgets.memory import MemoryPanel


def log_text(app: Any) -> str:
    """The log pane's text with wrapping undone (runs of white space become one space)."""
    return " ".join(" ".join(line.text for line in app.training.query_one("#run-log", RichLog).lines).split())


async def test_a_run_fills_every_panel(workspace: Path, engine: ScriptedEngine) -> None:
    app = make_test_app(engine)
    async with app.run_test(size=(110, 34)) as pilot:
        await app.start_run(PTF)
        training = app.training
        await wait_for(pilot, lambda: training.state == "finished")
        steps = PTF.total_epochs * engine.batches
        # Every per-batch loss reaches the chart, in order, however the events were coalesced.
        assert training.losses == [loss_at(s) for s in range(1, steps + 1)]
        assert training.query_one("#loss-chart", LossChart).values == tuple(training.losses)
        table = training.query_one("#epoch-table", DataTable)
        assert table.row_count == 3
        assert [table.get_row_at(i)[1] for i in range(3)] == ["probe", "finetune", "finetune"]
        run_bar = training.query_one("#run-progress", ProgressBar)
        assert (run_bar.progress, run_bar.total) == (steps, steps)
        assert "done" in str(training.query_one("#run-count").render())
        assert "412 img/s" in str(training.query_one("#speed", Static).render())
        assert "finetune" in str(training.query_one("#stage-info", Static).render())
        assert "finished: val acc" in str(training.query_one("#run-title", Static).render())
        assert "saved bundle runs/scripted-run/model.json" in log_text(app)
        # Footer: stop actions are gone, follow-ups are offered.
        assert training.check_action("stop", ()) is False
        assert training.check_action("evaluate", ()) is True


async def test_stop_now_asks_then_keeps_a_checkpoint(workspace: Path, held_engine: ScriptedEngine) -> None:
    app = make_test_app(held_engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.start_run(DEMO_CONFIG)
        training = app.training
        await wait_for(pilot, lambda: training.last_batch is not None and training.last_batch.step == 5)
        assert training.check_action("stop", ()) is True
        await pilot.press("s")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")  # changed my mind: the run goes on
        await pilot.pause()
        assert training.state == "running" and not held_engine.saw_stop.is_set()
        await pilot.press("s", "y")
        await wait_for(pilot, lambda: training.state == "stopped")
        assert held_engine.saw_stop.is_set()
        assert "checkpoint runs/scripted-run/checkpoint-last.json" in str(training.query_one("#run-title", Static).render())
        assert training.check_action("new_run", ()) is True


async def test_stop_after_this_epoch(workspace: Path, held_engine: ScriptedEngine) -> None:
    app = make_test_app(held_engine)
    async with app.run_test(size=(110, 34)) as pilot:
        await app.start_run(DEMO_CONFIG)
        training = app.training
        await wait_for(pilot, lambda: training.last_batch is not None)
        await pilot.press("e")
        await wait_for(pilot, lambda: training.state == "stopped")
        assert training.epoch == 1
        assert training.query_one("#epoch-table", DataTable).row_count == 1
        assert "stopped after epoch" in log_text(app)
        assert not held_engine.saw_stop.is_set()  # a clean end of epoch, not a mid-epoch stop


async def test_quit_during_a_run_stops_it_first(workspace: Path, held_engine: ScriptedEngine) -> None:
    app = make_test_app(held_engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.start_run(DEMO_CONFIG)
        await wait_for(pilot, lambda: app.training.last_batch is not None)
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen) and app.return_code is None
        training = app.training
        await pilot.press("y")
        await wait_for(pilot, lambda: app.return_code is not None)
    assert held_engine.saw_stop.is_set()
    assert training.state == "stopped"


async def test_quit_when_idle_exits_at_once(workspace: Path) -> None:
    app = make_test_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: app.return_code is not None)


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
async def test_sighup_stops_the_run_and_exits(workspace: Path, held_engine: ScriptedEngine) -> None:
    app = make_test_app(held_engine)
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.hangup_installed  # otherwise the signal below would kill the test process
        await app.start_run(DEMO_CONFIG)
        await wait_for(pilot, lambda: app.training.last_batch is not None)
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(pilot, lambda: app.return_code is not None)
    assert held_engine.saw_stop.is_set()
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL  # handler removed on exit


def failing_engine(error: BaseException) -> Any:
    def engine(config: Any, *, stop: threading.Event | None = None, stop_after_epoch: threading.Event | None = None) -> Iterator[Any]:
        yield ev.MessageLogged("info", "about to fail")
        raise error

    return engine


async def test_a_user_error_becomes_a_one_line_notification(workspace: Path) -> None:
    app = make_test_app(failing_engine(ConfigError("--weights imagenet: no internet; use --weights none")))
    async with app.run_test(size=(80, 24)) as pilot:
        await app.start_run(DEMO_CONFIG)
        await wait_for(pilot, lambda: app.training.state == "failed" and len(app._notifications) > 0)
        assert any("use --weights none" in str(n.message) for n in app._notifications)
        assert not isinstance(app.screen, ErrorScreen)
        assert "error: ConfigError" in log_text(app)
        assert app.training.check_action("new_run", ()) is True


async def test_an_unexpected_error_shows_its_traceback(workspace: Path) -> None:
    app = make_test_app(failing_engine(RuntimeError("boom")))
    async with app.run_test(size=(80, 24)) as pilot:
        await app.start_run(DEMO_CONFIG)
        await wait_for(pilot, lambda: isinstance(app.screen, ErrorScreen))
        assert "RuntimeError: boom" in app.screen.traceback_text
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.training


async def test_memory_panel_shows_the_device_figures(workspace: Path) -> None:
    engine = ScriptedEngine(hold_at=3, device="cuda:0", device_name="NVIDIA H100")
    asked: list[str] = []

    def memory(device: str) -> dict[str, float]:
        asked.append(device)
        return dict(CUDA_MEMORY)

    app = make_test_app(engine, memory=memory)
    async with app.run_test(size=(110, 34)) as pilot:
        await app.start_run(DEMO_CONFIG)
        await wait_for(pilot, lambda: app.training.last_batch is not None)
        panel = app.training.query_one("#memory", MemoryPanel)
        text = str(panel.render())
        assert asked and set(asked) == {"cuda:0"}
        assert "3.1 / 79.6 GiB, peak 5.0" in text and "gpu util" in text and "93%" in text
        app.training.request_stop()
        await wait_for(pilot, lambda: app.training.state == "stopped")


async def test_one_run_at_a_time(workspace: Path, held_engine: ScriptedEngine) -> None:
    app = make_test_app(held_engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.start_run(DEMO_CONFIG)
        await wait_for(pilot, lambda: app.training.last_batch is not None)
        await app.start_run(DEMO_CONFIG)
        await wait_for(pilot, lambda: any("already going" in str(n.message) for n in app._notifications))
        assert len(held_engine.calls) == 1
        app.training.request_stop()
        await wait_for(pilot, lambda: app.training.state == "stopped")


def with_stages(engine: ScriptedEngine, stages: tuple[tuple[str, int], ...]) -> Any:
    """``engine`` with its RunStarted's stage plan replaced."""

    def run(config: Any, **kwargs: Any) -> Iterator[Any]:
        for event in engine(config, **kwargs):
            yield dataclasses.replace(event, stages=stages) if isinstance(event, ev.RunStarted) else event

    return run


async def test_the_stage_plan_comes_from_the_engine(workspace: Path) -> None:
    # A plan the config alone would not give: the screen must show the engine's.
    app = make_test_app(with_stages(ScriptedEngine(hold_at=3), (("probe", 1), ("finetune", 1), ("polish", 1))))
    async with app.run_test(size=(110, 34)) as pilot:
        await app.start_run(PTF)
        await wait_for(pilot, lambda: app.training.last_batch is not None and app.training.last_batch.step == 3)
        assert app.training.stages == [("probe", 1), ("finetune", 1), ("polish", 1)]
        assert "probe  → finetune → polish" in str(app.training.query_one("#stage-info", Static).render())
        app.training.request_stop()
        await wait_for(pilot, lambda: app.training.state == "stopped")


async def test_without_a_stage_plan_the_current_stage_is_the_plan(workspace: Path) -> None:
    app = make_test_app(with_stages(ScriptedEngine(hold_at=3), ()))
    async with app.run_test(size=(110, 34)) as pilot:
        await app.start_run(PTF)
        await wait_for(pilot, lambda: app.training.last_batch is not None and app.training.last_batch.step == 3)
        assert str(app.training.query_one("#stage-info", Static).render()) == "stage  probe  · epoch 1/3"
        app.training.request_stop()
        await wait_for(pilot, lambda: app.training.state == "stopped")


async def test_the_title_and_footer_follow_the_state(workspace: Path, held_engine: ScriptedEngine) -> None:
    app = make_test_app(held_engine)
    async with app.run_test(size=(110, 34)) as pilot:
        training = app.training
        await app.start_run(DEMO_CONFIG)
        await wait_for(pilot, lambda: training.last_batch is not None)
        footer = {key for key, b in training.active_bindings.items() if b.binding.show}
        assert {"s", "e"} <= footer and "n" not in footer
        training.action_stop_after_epoch()  # what "e" does; asserted before the engine can end the epoch
        assert "(stopping after epoch 1)" in str(training.query_one("#run-title", Static).render())
        assert training.check_action("stop_after_epoch", ()) is False
        await wait_for(pilot, lambda: training.state == "stopped")
        assert training.has_class("-stopped") and not training.has_class("-running")
        footer = {key for key, b in training.active_bindings.items() if b.binding.show}
        assert "n" in footer and "s" not in footer
