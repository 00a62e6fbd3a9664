"""The issue-14 views: the LR finder dialog of Set-up, the mistakes gallery of Evaluate, Grad-CAM (``g``).

Scripted engines (``tui_fixtures``) keep these deterministic; the last test drives the real
mistakes engine and the real Grad-CAM overlay on the tiny trained run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.widgets import Input, OptionList
from tui_fixtures import PTF, RUNS, fake_lr_find, fake_mistakes, fake_overlay, make_test_app, recording, wait_for

from core import events as ev
from core.data.exclude import read_marks
from tui.screens.classify import ImagePreview
from tui.widgets.heatmap import ConfusionHeatmap
from tui.widgets.prob_bars import ProbabilityBars

FINETUNE = "runs/" + RUNS[1][0]


async def test_lr_finder_runs_the_forms_config_and_u_fills_the_learning_rate(workspace: Path) -> None:
    calls: list[tuple[Any, ...]] = []
    app = make_test_app(lr_finder=recording(fake_lr_find, calls))
    async with app.run_test(size=(110, 34)) as pilot:
        setup = app.screen
        setup.load_config(PTF)
        await pilot.pause()
        await pilot.press("ctrl+f")
        await wait_for(pilot, lambda: app.screen.id == "lr-find" and len(app.screen.found) == 2 and not app.screen.running)
        assert calls[0][0][0] == setup.config  # the form's settings, probe-then-finetune
        await pilot.press("u")
        await wait_for(pilot, lambda: app.screen is setup)
        assert setup.query_one("#lr", Input).value == "0.00034"  # the fine-tuning stage's suggestion
        assert setup.config is not None and setup.config.lr == 0.00034


async def test_escape_stops_a_running_lr_finder_and_closes_it(workspace: Path) -> None:
    app = make_test_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+f")
        await wait_for(pilot, lambda: app.screen.id == "lr-find" and not app.screen.running)
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen.id == "setup")
        assert app.screen.query_one("#lr", Input).value == ""  # nothing used


async def _evaluated(pilot: Any) -> Any:
    app = pilot.app
    await app.open_evaluate(FINETUNE)
    await wait_for(pilot, lambda: app.screen.result is not None)
    return app.screen


async def test_m_lists_the_highest_loss_images_and_x_marks_them_in_a_file_beside_the_run(workspace: Path) -> None:
    app = make_test_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await _evaluated(pilot)
        await pilot.press("m")
        await wait_for(pilot, lambda: app.screen.id == "mistakes" and bool(app.screen.entries))
        screen = app.screen
        options = screen.query_one("#mistake-list", OptionList)
        assert options.option_count == 3 and options.highlighted == 0
        assert screen.query_one("#mistake-bars", ProbabilityBars).predictions[0] == ("dog", 0.81)
        await pilot.press("x", "down", "x", "down", "x", "up", "x")
        marks = workspace / FINETUNE / "exclude.txt"
        assert read_marks(marks) == {str((workspace / "photos/cat.png").resolve()), str((workspace / "photos/frog.png").resolve())}
        assert str(options.get_option_at_index(0).prompt).startswith("✗")
        assert str(options.get_option_at_index(1).prompt).startswith(" ")
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen.id == "evaluate")


async def test_enter_on_a_confusion_cell_lists_that_cells_images(workspace: Path) -> None:
    calls: list[tuple[Any, ...]] = []
    app = make_test_app(mistake_finder=recording(fake_mistakes, calls))
    async with app.run_test(size=(110, 34)) as pilot:
        screen = await _evaluated(pilot)
        heatmap = screen.query_one("#confusion", ConfusionHeatmap)
        assert heatmap.has_focus
        await pilot.press(*["down"] * 3, *["right"] * 5, "enter")  # true cat, predicted dog
        await wait_for(pilot, lambda: app.screen.id == "mistakes" and not app.screen.running)
        assert calls[-1][1]["true"] == "cat" and calls[-1][1]["pred"] == "dog"
        assert list(app.screen.entries) == ["photos/cat.png"]


async def test_g_toggles_the_grad_cam_overlay_in_classify(workspace: Path) -> None:
    calls: list[tuple[Any, ...]] = []
    app = make_test_app(overlayer=recording(fake_overlay, calls))
    async with app.run_test(size=(110, 34)) as pilot:
        await app.open_classify(FINETUNE)
        screen = app.screen
        screen.query_one("#image-path", Input).value = "photos/cat.png"
        screen.action_classify()
        await wait_for(pilot, lambda: "photos/cat.png" in screen.results)
        plain = screen.query_one("#preview-image", ImagePreview).image
        screen.query_one("#image-tree").focus()
        await pilot.press("g")
        await wait_for(pilot, lambda: screen.query_one("#preview-image", ImagePreview).image is not plain
                       and calls and screen.query_one("#preview-image", ImagePreview).image.getpixel((0, 0)) != plain.getpixel((0, 0)))
        assert calls[-1][0] == (FINETUNE, "photos/cat.png")
        await pilot.press("g")
        await pilot.pause()
        assert screen.query_one("#preview-image", ImagePreview).image.getpixel((0, 0)) == plain.getpixel((0, 0))


async def test_the_real_engines_list_a_runs_mistakes_and_explain_one(finished_run: Any, workspace: Path) -> None:
    from tui import engines

    app = make_test_app(evaluator=engines.evaluate, mistake_finder=engines.mistakes, overlayer=engines.overlay)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.open_evaluate(str(finished_run.run_dir))
        await wait_for(pilot, lambda: app.screen.result is not None, timeout=60)
        await pilot.press("m")
        await wait_for(pilot, lambda: app.screen.id == "mistakes" and bool(app.screen.entries), timeout=60)
        entries = list(app.screen.entries.values())
        assert all(isinstance(m, ev.Mistake) and Path(m.path).parent.name == m.true for m in entries)
        assert [m.loss for m in entries] == sorted((m.loss for m in entries), reverse=True)
        before = app.screen.query_one("#mistake-image", ImagePreview).image
        await pilot.press("g")
        await wait_for(pilot, lambda: app.screen.query_one("#mistake-image", ImagePreview).image is not before, timeout=60)
        assert min(app.screen.query_one("#mistake-image", ImagePreview).image.size) >= 64
