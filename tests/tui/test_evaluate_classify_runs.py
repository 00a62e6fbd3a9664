"""The evaluate, classify and runs screens with the scripted evaluator and classifier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.widgets import DataTable, Input, OptionList, Static
from tui_fixtures import (
    CLASSES,
    CONFUSION,
    PTF,
    RUNS,
    Held,
    ScriptedEngine,
    fake_classify,
    fake_evaluate,
    make_test_app,
    recording,
    runs_listed,
    wait_for,
)

from core import events as ev
from tui.screens.classify import ClassifyScreen
from tui.screens.dialogs import ActionsScreen
from tui.screens.evaluate import EvaluateScreen
from tui.screens.runs import RunsScreen
from tui.screens.setup import SetupScreen
from tui.widgets.fields import ModelPicker
from tui.widgets.heatmap import ConfusionHeatmap
from tui.widgets.line_chart import LineChart
from tui.widgets.prob_bars import ProbabilityBars

FINETUNE = "runs/" + RUNS[1][0]
STOPPED = "runs/" + RUNS[2][0]


# -- evaluate ----------------------------------------------------------------------------------------


async def test_finished_run_to_its_evaluation(workspace: Path) -> None:
    calls: list[tuple[Any, ...]] = []
    app = make_test_app(ScriptedEngine(), evaluator=recording(fake_evaluate, calls))
    async with app.run_test(size=(110, 34)) as pilot:
        await app.start_run(PTF)
        await wait_for(pilot, lambda: app.training.state == "finished")
        await pilot.press("v")
        await wait_for(pilot, lambda: isinstance(app.screen, EvaluateScreen) and app.screen.result is not None)
        screen = app.screen
        (args, kwargs), = calls
        assert args == ("runs/scripted-run", None)  # the run just trained, on its validation split
        assert kwargs["runs_dir"] == "runs" and kwargs["stop"] is not None
        assert "top-1 86.42%" in str(screen.query_one("#eval-summary", Static).render())
        table = screen.query_one("#per-class", DataTable)
        assert table.row_count == 10 and table.get_row_at(3)[0] == "cat"
        heatmap = screen.query_one("#confusion", ConfusionHeatmap)
        assert heatmap.confusion == CONFUSION and heatmap.class_names == CLASSES
        assert "automobile → truck (3)" in str(screen.query_one("#most-confused", Static).render())


async def test_model_menu_lists_runs_with_a_model_and_dataset_is_passed(workspace: Path) -> None:
    calls: list[tuple[Any, ...]] = []
    app = make_test_app(evaluator=recording(fake_evaluate, calls))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f3")
        await wait_for(pilot, lambda: isinstance(app.screen, EvaluateScreen) and runs_listed(app.screen))
        screen = app.screen
        picker = screen.query_one("#eval-model", ModelPicker)
        assert sorted(picker.refs) == sorted(f"runs/{name}" for name, _, status, *_ in RUNS if status == "finished")
        screen.query_one("#eval-dataset").set_value("demo")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: screen.result is not None)
        (args, _), = calls
        assert args == (picker.value, "demo")
        assert screen.result.split == "test"


async def test_evaluate_without_a_model_says_what_to_do(workspace: Path) -> None:
    app = make_test_app(runs_dir="no-runs-here")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f3", "ctrl+r")
        await wait_for(pilot, lambda: any("pick a model first" in str(n.message) for n in app._notifications))


# -- classify ----------------------------------------------------------------------------------------


async def test_path_box_completes_and_classifies(workspace: Path) -> None:
    app = make_test_app()
    async with app.run_test(size=(110, 34)) as pilot:
        await app.open_classify(FINETUNE)
        screen = app.screen
        assert isinstance(screen, ClassifyScreen)
        box = screen.query_one("#image-path", Input)
        assert box.has_focus
        await pilot.press(*"pho")
        await wait_for(pilot, lambda: box._suggestion == "photos/")
        await pilot.press("right")  # accept the completion
        await pilot.press("s")
        await wait_for(pilot, lambda: box._suggestion == "photos/ship.png")
        await pilot.press("right", "enter")
        await wait_for(pilot, lambda: "photos/ship.png" in screen.results)
        bars = screen.query_one("#top-k", ProbabilityBars)
        assert bars.predictions[0] == ("ship", 0.71) and len(bars.predictions) == 5
        assert str(screen.query_one("#image-name", Static).render()) == "ship.png"
        assert screen.query_one("#preview-image").image is not None


async def test_folder_classifies_its_images_only(workspace: Path) -> None:
    app = make_test_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await app.open_classify(FINETUNE)
        screen = app.screen
        screen.query_one("#image-path", Input).value = "photos"
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(screen.results) == 3)
        assert sorted(screen.results) == ["photos/cat.png", "photos/frog.png", "photos/ship.png"]  # notes.txt skipped
        results = screen.query_one("#classify-results", OptionList)
        assert results.display and results.option_count == 3
        results.focus()
        await pilot.press("down", "down")
        await pilot.pause()
        assert screen.shown == results.get_option_at_index(results.highlighted).id  # type: ignore[arg-type]
        assert screen.query_one("#top-k", ProbabilityBars).predictions[0][0] in ("cat", "frog", "ship")


async def test_directory_tree_previews_and_classifies(workspace: Path) -> None:
    app = make_test_app()
    async with app.run_test(size=(110, 34)) as pilot:
        await app.open_classify(FINETUNE)
        screen = app.screen
        tree = screen.query_one("#image-tree")
        tree.focus()
        await wait_for(pilot, lambda: tree.root.children != [])
        labels = [str(child.label) for child in tree.root.children]
        assert labels == ["cat.png", "frog.png", "ship.png"]
        await pilot.press("down")  # highlight cat.png: a preview, no classification yet
        await pilot.pause()
        assert screen.shown == "photos/cat.png" and not screen.results
        await pilot.press("enter")
        await wait_for(pilot, lambda: "photos/cat.png" in screen.results)
        assert screen.query_one("#image-path", Input).value == "photos/cat.png"
        assert screen.query_one("#top-k", ProbabilityBars).predictions[0] == ("cat", 0.71)


async def test_a_file_that_is_not_an_image_is_reported(workspace: Path) -> None:
    app = make_test_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await app.open_classify(FINETUNE)
        screen = app.screen
        screen.query_one("#image-path", Input).value = "photos/notes.txt"
        await pilot.press("enter")
        await wait_for(pilot, lambda: "photos/notes.txt" in screen.results)
        assert "could not classify: not an image file" in str(screen.query_one("#top-k", ProbabilityBars).render())


# -- runs --------------------------------------------------------------------------------------------


async def test_runs_list_and_what_a_run_without_a_model_offers(workspace: Path) -> None:
    app = make_test_app()
    async with app.run_test(size=(110, 34)) as pilot:
        await pilot.press("f5")
        await wait_for(pilot, lambda: runs_listed(app.screen))  # read in a thread worker
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        table = screen.query_one("#runs-table", DataTable)
        rows = [table.get_row_at(i) for i in range(table.row_count)]
        assert [(r[1], r[2], r[4]) for r in rows] == [
            (RUNS[2][0], "stopped", "2/4"), (RUNS[1][0], "finished", "5/5"), (RUNS[0][0], "finished", "3/3")
        ]
        assert screen.current is not None and screen.current.status == "stopped"
        assert screen.check_action("evaluate", ()) is False and screen.check_action("new_from", ()) is True
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ActionsScreen)
        assert [a for a, _ in app.screen.actions] == ["new_from", "mark"]
        await pilot.press("escape")


async def test_open_a_run_to_evaluate_it(workspace: Path) -> None:
    calls: list[tuple[Any, ...]] = []
    app = make_test_app(evaluator=recording(fake_evaluate, calls))
    async with app.run_test(size=(110, 34)) as pilot:
        await pilot.press("f5")
        await wait_for(pilot, lambda: runs_listed(app.screen))  # read in a thread worker
        await pilot.press("down", "enter")  # the finished fine-tuning run, then the actions menu
        await pilot.pause()
        assert isinstance(app.screen, ActionsScreen)
        await pilot.press("enter")  # "Evaluate this run's model"
        await wait_for(pilot, lambda: isinstance(app.screen, EvaluateScreen) and app.screen.result is not None)
        assert calls[0][0] == (FINETUNE, None)


async def test_new_run_from_a_runs_settings(workspace: Path) -> None:
    app = make_test_app()
    async with app.run_test(size=(110, 34)) as pilot:
        await pilot.press("f5")
        await wait_for(pilot, lambda: runs_listed(app.screen))  # read in a thread worker
        await pilot.press("down", "n")
        await wait_for(pilot, lambda: isinstance(app.screen, SetupScreen))
        config = app.screen.config
        assert config is not None
        assert (config.mode, config.epochs, config.dataset, config.image_size) == ("finetune", 5, "demo", 32)
        assert config.name is None  # a new run gets a new folder


async def test_classify_with_a_run(workspace: Path) -> None:
    app = make_test_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f5")
        await wait_for(pilot, lambda: runs_listed(app.screen))  # read in a thread worker
        await pilot.press("down", "c")
        await wait_for(pilot, lambda: isinstance(app.screen, ClassifyScreen))
        assert app.screen.query_one("#classify-model", ModelPicker).value == FINETUNE


async def test_compare_two_runs_loss_curves(workspace: Path) -> None:
    app = make_test_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f5")
        await wait_for(pilot, lambda: runs_listed(app.screen))  # read in a thread worker
        screen = app.screen
        assert screen.check_action("compare", ()) is False  # nothing marked yet
        await pilot.press("down", "m", "up")
        await pilot.pause()
        assert screen.marked == FINETUNE and screen.check_action("compare", ()) is True
        await pilot.press("x")
        await pilot.pause()
        assert screen.compared == (FINETUNE, STOPPED)
        train = screen.query_one("#compare-train", LineChart).series
        val = screen.query_one("#compare-val", LineChart).series
        assert [s.values for s in train] == [tuple(RUNS[1][4]), tuple(RUNS[2][4])]
        assert [s.values for s in val] == [tuple(RUNS[1][5]), tuple(RUNS[2][5])]
        assert screen.query_one("#compare-charts").display


async def test_a_run_whose_config_is_gone_says_so(workspace: Path) -> None:
    app = make_test_app()
    async with app.run_test(size=(110, 34)) as pilot:
        await pilot.press("f5")
        await wait_for(pilot, lambda: runs_listed(app.screen))
        (Path(FINETUNE) / "config.json").write_text("{not json")
        await pilot.press("down", "n")
        await wait_for(pilot, lambda: any("config.json is missing or unreadable" in str(n.message) for n in app._notifications))
        assert isinstance(app.screen, RunsScreen)  # no set-up from a damaged config


async def test_marking_a_run_marks_its_row(workspace: Path) -> None:
    app = make_test_app()
    async with app.run_test(size=(110, 34)) as pilot:
        await pilot.press("f5")
        await wait_for(pilot, lambda: runs_listed(app.screen))
        table = app.screen.query_one("#runs-table", DataTable)
        await pilot.press("down", "m")
        await pilot.pause()
        assert [table.get_row_at(i)[0] for i in range(3)] == [" ", "*", " "]
        await pilot.press("m")
        await pilot.pause()
        assert [table.get_row_at(i)[0] for i in range(3)] == [" ", " ", " "]


# -- stopping ----------------------------------------------------------------------------------------


async def test_escape_stops_an_evaluation_and_says_how_far_it_got(workspace: Path) -> None:
    evaluator = Held(fake_evaluate, ev.EvalBatchEnded)
    app = make_test_app(evaluator=evaluator)
    async with app.run_test(size=(110, 34)) as pilot:
        await app.open_evaluate(FINETUNE)
        screen = app.screen
        await wait_for(pilot, lambda: evaluator.held.is_set() and screen.check_action("cancel", ()) is True)
        await pilot.press("escape")
        await wait_for(pilot, lambda: not screen.running)
        events, _ = evaluator.calls[0]
        assert isinstance(events[-1], ev.EvaluationStopped) and (events[-1].batch, events[-1].batches) == (1, 4)
        assert str(screen.query_one("#eval-summary", Static).render()).startswith("stopped after 1 of 4 batches")
        assert screen.result is None and screen.stopped == events[-1]


async def test_escape_stops_a_classification_and_keeps_what_it_classified(workspace: Path) -> None:
    classifier = Held(fake_classify, ev.ImageClassified)
    app = make_test_app(classifier=classifier)
    async with app.run_test(size=(110, 34)) as pilot:
        await app.open_classify(FINETUNE)
        screen = app.screen
        screen.query_one("#image-path", Input).value = "photos"
        await pilot.press("enter")
        await wait_for(pilot, lambda: classifier.held.is_set() and screen.check_action("cancel", ()) is True)
        await pilot.press("escape")
        await wait_for(pilot, lambda: not screen.running)
        events, _ = classifier.calls[0]
        assert isinstance(events[-1], ev.ClassificationStopped) and events[-1].classified == 1
        assert list(screen.results) == ["photos/cat.png"]
        assert screen.query_one("#classify-results", OptionList).border_title == "results (stopped after 1 of 3)"
