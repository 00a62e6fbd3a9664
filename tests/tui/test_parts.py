"""The workbench's parts on their own: event coalescing, chart maths, completion, the palette."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from tui_fixtures import make_test_app, wait_for

from core import events as ev
from tui.jobs import EventPump, EventsReady
from tui.widgets.loss_chart import bucket, ema
from tui.widgets.memory import describe
from tui.widgets.paths import PathSuggester, expand_images


class Recorder:
    """Stands in for a screen: counts what the pump posts."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    def post_message(self, message: Any) -> bool:
        self.messages.append(message)
        return True


def batch(i: int, batches: int = 1000) -> ev.BatchEnded:
    return ev.BatchEnded(1, i, batches, i, batches, (float(i),), 0.1, 100.0, 0.0, 0.0, 0.0, "probe")


def test_pump_coalesces_a_flood_into_a_few_messages() -> None:
    now = [0.0]
    target = Recorder()
    pump = EventPump(target, interval=0.15, clock=lambda: now[0])  # type: ignore[arg-type]
    for i in range(1, 1000):  # 999 mid-epoch batches within 0.1 s
        now[0] = i * 1e-4
        pump.put(batch(i))
    assert len(target.messages) == 1 and isinstance(target.messages[0], EventsReady)
    drained = pump.drain()
    assert [e.batch for e in drained] == list(range(1, 1000))  # every event, in order
    now[0] = 0.2
    pump.put(batch(1000))  # the last batch of the epoch is shown at once
    assert len(target.messages) == 2 and [e.batch for e in pump.drain()] == [1000]


def test_pump_never_posts_twice_while_a_message_is_outstanding() -> None:
    now = [0.0]
    target = Recorder()
    pump = EventPump(target, interval=0.15, clock=lambda: now[0])  # type: ignore[arg-type]
    pump.put(ev.MessageLogged("info", "a"))
    pump.put(ev.MessageLogged("info", "b"))  # urgent, but the first message has not been handled
    assert len(target.messages) == 1
    assert len(pump.drain()) == 2
    pump.put(ev.MessageLogged("info", "c"))
    assert len(target.messages) == 2


def test_pump_holds_a_quiet_spells_message_until_its_interval_ends() -> None:
    now = [0.0]
    target = Recorder()
    pump = EventPump(target, interval=0.15, clock=lambda: now[0])  # type: ignore[arg-type]
    pump.put(ev.MessageLogged("info", "a"))
    pump.drain()
    target.messages.clear()
    now[0] = 0.05
    pump.put(batch(1))  # a tick soon after a redraw, then perhaps a long batch: posted now, due later
    assert len(target.messages) == 1 and target.messages[0].due == pytest.approx(0.15)
    pump.put(batch(2))  # the outstanding message carries it
    assert len(target.messages) == 1
    pump.put(batch(1000))  # urgent: a second message, due at once
    assert len(target.messages) == 2 and target.messages[1].due == pytest.approx(0.05)
    assert [e.batch for e in pump.drain()] == [1, 2, 1000]


def test_pump_is_safe_across_threads() -> None:
    target = Recorder()
    pump = EventPump(target, interval=0.0)  # type: ignore[arg-type]
    got: list[Any] = []

    def produce() -> None:
        for i in range(1, 2001):
            pump.put(batch(i, 5000))

    thread = threading.Thread(target=produce)
    thread.start()
    while thread.is_alive():
        got.extend(pump.drain())
    thread.join()
    got.extend(pump.drain())
    assert [e.batch for e in got] == list(range(1, 2001))


def test_ema_and_bucket() -> None:
    assert ema([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])  # bias-corrected: no pull towards 0
    smooth = ema([1.0, 0.0] * 50, alpha=0.1)
    assert 0.4 < smooth[-1] < 0.6
    assert bucket([1.0, 2.0, 3.0, 4.0], 2) == [1.5, 3.5]
    assert bucket([1.0, 2.0], 4) == [1.0, 1.0, 2.0, 2.0]  # few points stretch over the width


def test_memory_rows_for_gpu_and_cpu() -> None:
    gpu = describe({"used": 3210.0, "peak": 5120.0, "total": 81559.0, "util": 93.0})
    assert gpu[0][:2] == ("cuda", "3.1 / 79.6 GiB, peak 5.0") and gpu[1][:2] == ("gpu util", "93%")
    assert describe({"rss": 812.0, "cpu": 187.0}) == [("process", "812 MiB", None), ("cpu", "187%", None)]
    assert describe({}) == []


async def test_path_suggester_completes_folders_and_files(workspace: Path) -> None:
    suggest = PathSuggester()
    assert await suggest.get_suggestion("pho") == "photos/"
    assert await suggest.get_suggestion("photos/f") == "photos/frog.png"
    assert await suggest.get_suggestion("photos/zzz") is None
    assert await suggest.get_suggestion("nowhere/x") is None
    assert expand_images("photos") == ["photos/cat.png", "photos/frog.png", "photos/ship.png"]
    assert expand_images("photos/notes.txt") == ["photos/notes.txt"]  # a named file is tried (and reported)


def palette_offers(app: Any, title: str) -> bool:
    """The open command palette has searched, and ``title`` is the highlighted command."""
    from textual.command import CommandList, CommandPalette

    if not isinstance(app.screen, CommandPalette):
        return False
    commands = app.screen.query_one(CommandList)
    if commands.highlighted is None:
        return False
    return str(commands.get_option_at_index(commands.highlighted).prompt).startswith(title)


async def test_command_palette_offers_the_main_actions(workspace: Path) -> None:
    app = make_test_app()
    async with app.run_test(size=(110, 34)) as pilot:
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert {"Go to Set-up", "Go to Training", "Go to Evaluate", "Go to Classify", "Go to Runs", "Demo preset", "Start run"} <= set(titles)
        assert "Stop run now" not in titles  # nothing is running
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"demo preset")
        await wait_for(pilot, lambda: palette_offers(app, "Demo preset"))
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen.id == "setup" and app.screen.config is not None and app.screen.config.dataset == "demo")
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"go to runs")
        await wait_for(pilot, lambda: palette_offers(app, "Go to Runs"))
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen.id == "runs")


def test_stopped_evaluations_and_classifications_have_plain_lines() -> None:
    import io
    import json

    from tui.classify_cmd import PlainLines, summary
    from tui.render import JsonRenderer, describe

    assert describe(ev.EvaluationStopped("tiny", 3, 57)) == "stopped evaluating tiny after 3 of 57 batches; no figures"
    stopped = ev.ClassificationStopped("tiny", 32, 1, 0.84)
    assert describe(stopped) == "stopped classifying with tiny after 32 image(s), 1 failed in 0.8s"
    assert summary(stopped) == "stopped: classified 32 images, 1 failed in 0.8s"
    out = io.StringIO()
    PlainLines(out).handle(stopped)
    assert out.getvalue() == "stopped: classified 32 images, 1 failed in 0.8s\n"
    out = io.StringIO()
    JsonRenderer(out).handle(ev.EvaluationStopped("tiny", 3, 57))
    assert json.loads(out.getvalue()) == {"event": "evaluation_stopped", "model": "tiny", "batch": 3, "batches": 57}
