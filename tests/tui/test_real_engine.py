"""The workbench driving the real engine: the demo preset (ctrl+t, ctrl+r) learning, its
evaluation and a classified image; and runs stopped midway that leave their checkpoint.

The demo run is README's quick start: a linear probe of the ImageNet EfficientNet-Lite0 that
ships with tlwork, on the shipped demo images at 64 px (features are extracted once, so ten
epochs take seconds). The stop tests train a real tiny timm ResNet with random weights at
32x32 instead, and hold the engine (``Held``) at its first batch report until the stop is
asked for, so the key lands mid-run however fast the machine is.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from textual.widgets import Input
from tui_fixtures import Held, runs_listed, wait_for

from core import events as ev
from core.data.datasets import DEMO_DIR
from tui import engines
from tui.app import make_app
from tui.screens.classify import ClassifyScreen
from tui.screens.evaluate import EvaluateScreen
from tui.widgets.prob_bars import ProbabilityBars

TINY = "test_resnet"  # timm:test_resnet, a real ResNet with BatchNorm of about 0.4M parameters
CIFAR = {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"}


async def tiny_demo(pilot) -> None:  # type: ignore[no-untyped-def]
    """The demo preset made tiny: ``timm:NAME`` picked from the keyboard, random weights, 32 px, batch 64."""
    await pilot.press("ctrl+t")
    await pilot.press("tab", "enter", "t", "enter", "tab", *TINY)  # from the dataset menu to the backbone's
    screen = pilot.app.screen
    screen.field("weights").set_value("none")
    for ident, value in (("image-size", "32"), ("batch-size", "64"), ("epochs", "1")):
        screen.query_one(f"#{ident}", Input).value = value
    await pilot.pause()
    config = screen.config
    assert config is not None
    assert (config.backbone, config.weights, config.image_size, config.batch_size, config.epochs) == (f"timm:{TINY}", "none", 32, 64, 1)


async def test_demo_preset_learns_then_evaluates_and_classifies(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    app = make_app(runs_dir="runs", cursor_blink=False)
    async with app.run_test(size=(110, 34)) as pilot:
        await pilot.press("ctrl+t", "ctrl+r")  # the shipped EfficientNet-Lite0, probed on the demo images
        training = app.training
        await wait_for(pilot, lambda: training.state in ("finished", "failed", "stopped"), timeout=300)
        assert training.state == "finished", training.outcome
        run_dir = Path(training.run_dir)
        assert (run_dir / "model.json").is_file() and run_dir.parent == Path("runs")
        assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
        assert len(training.losses) == 30  # 720 demo training images (80 held out) / 256 per batch, 10 epochs, every loss shown
        reported = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        val_accuracy = next(r["val_accuracy"] for r in reported if r["event"] == "run_finished")
        # Real transfer learning: random weights stay near 10% on these ten classes.
        assert val_accuracy >= 0.5, val_accuracy
        logged = [r["message"] for r in reported if r["event"] == "message_logged"]
        assert any(m.startswith("weights: ImageNet-1k EfficientNet-Lite0") and "shipped with tlwork" in m for m in logged), logged

        await pilot.press("v")  # evaluate the run just trained
        await wait_for(pilot, lambda: isinstance(app.screen, EvaluateScreen) and app.screen.result is not None, timeout=120)
        result = app.screen.result
        assert result.split == "validation" and result.images == 80
        assert abs(result.top1 - val_accuracy) < 1e-6  # the bundle reproduces the run's own figure

        await app.open_classify(str(run_dir))
        screen = app.screen
        assert isinstance(screen, ClassifyScreen)
        image = str(DEMO_DIR / "test" / "cat" / "0080.jpg")
        screen.query_one("#image-path", Input).value = image
        await pilot.press("enter")
        await wait_for(pilot, lambda: image in screen.results, timeout=120)
        predictions = screen.query_one("#top-k", ProbabilityBars).predictions
        assert len(predictions) == 5 and {label for label, _ in predictions} <= CIFAR
        # The bars show what the engine says about this model and file, label for label.
        from core.inference.classify import classify

        direct = next(e for e in classify(str(run_dir), [image], top_k=5, device="cpu") if isinstance(e, ev.ImageClassified))
        assert [label for label, _ in predictions] == [label for label, _ in direct.predictions]
        assert [p for _, p in predictions] == pytest.approx([p for _, p in direct.predictions], abs=1e-6)


async def test_a_real_run_stopped_midway_keeps_its_checkpoint(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    engine = Held(engines.train, ev.BatchEnded)
    app = make_app(engine=engine, runs_dir="runs", cursor_blink=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await tiny_demo(pilot)  # one epoch of 13 batches
        await pilot.press("ctrl+r")
        training = app.training
        await wait_for(pilot, lambda: engine.held.is_set() or training.state == "failed", timeout=240)
        await wait_for(pilot, lambda: training.last_batch is not None)
        await pilot.press("s", "y")
        await wait_for(pilot, lambda: not training.running, timeout=120)
        assert training.state == "stopped", training.outcome
        run_dir = Path(training.run_dir)
        stopped = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        event = next(r for r in stopped if r["event"] == "run_stopped")
        assert Path(event["checkpoint"]).is_file()
        assert event["checkpoint"] in training.outcome  # the screen says where it is
        assert json.loads((run_dir / "status.json").read_text())["status"] == "stopped"
        assert event["epoch"] == 1 and event["step"] == training.last_batch.step  # right after the held batch
        assert not (run_dir / "model.json").exists()


async def test_a_run_stopped_after_an_epoch_resumes_from_the_runs_screen(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from tui.screens.runs import RunsScreen

    monkeypatch.chdir(tmp_path)
    engine = Held(engines.train, ev.BatchEnded)
    app = make_app(engine=engine, runs_dir="runs", cursor_blink=False)
    async with app.run_test(size=(110, 34)) as pilot:
        await tiny_demo(pilot)
        app.screen.query_one("#epochs", Input).value = "3"
        await pilot.pause()
        await pilot.press("ctrl+r")
        training = app.training
        await wait_for(pilot, lambda: engine.held.is_set() or training.state == "failed", timeout=240)
        await wait_for(pilot, lambda: training.last_batch is not None)
        await pilot.press("e")  # stop after this epoch, the first
        await wait_for(pilot, lambda: not training.running, timeout=240)
        assert training.state == "stopped", training.outcome
        run_dir = Path(training.run_dir)
        assert not (run_dir / "model.json").exists()

        await pilot.press("f5")
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and runs_listed(app.screen))
        assert app.screen.current is not None and app.screen.current.status == "stopped"
        await pilot.press("u")  # resume it
        await wait_for(pilot, lambda: training.state != "stopped" and not training.running, timeout=240)
        assert training.state == "finished", training.outcome
        assert Path(training.run_dir) == run_dir and (run_dir / "model.json").is_file()
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        starts = [r for r in records if r["event"] == "run_started"]
        epochs = [r["epoch"] for r in records if r["event"] == "epoch_ended"]
        stopped_at = next(r["epoch"] for r in records if r["event"] == "run_stopped")
        assert stopped_at == 1 and epochs == [1, 2, 3]  # each epoch once, none lost or repeated
        assert len(starts) == 2 and starts[1]["start_step"] == 12  # went on where it stopped


async def test_a_run_with_ema_shows_its_accuracy_beside_the_live_one(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from textual.widgets import DataTable

    monkeypatch.chdir(tmp_path)
    app = make_app(runs_dir="runs", cursor_blink=False)
    async with app.run_test(size=(110, 34)) as pilot:
        await tiny_demo(pilot)
        screen = app.screen
        screen.field("mode").set_value("finetune")
        for ident, value in (("epochs", "2"), ("ema", "0.9")):
            screen.query_one(f"#{ident}", Input).value = value
        await pilot.pause()
        assert screen.config is not None and screen.config.ema == 0.9, screen.problem
        await pilot.press("ctrl+r")
        training = app.training
        await wait_for(pilot, lambda: training.state in ("finished", "failed", "stopped"), timeout=300)
        assert training.state == "finished", training.outcome
        table = training.query_one("#epoch-table", DataTable)
        labels = [str(c.label) for c in table.columns.values()]
        assert labels[4:6] == ["val acc", "ema acc"], labels
        reported = [json.loads(line) for line in (Path(training.run_dir) / "metrics.jsonl").read_text().splitlines()]
        emas = [r["ema_val_accuracy"] for r in reported if r["event"] == "epoch_ended"]
        assert [str(table.get_row_at(i)[5]) for i in range(table.row_count)] == [f"{100 * a:.1f}%" for a in emas]
        done = next(r for r in reported if r["event"] == "run_finished")
        assert done["kept_weights"] in ("live", "ema")
        assert ("its EMA weights" in training.outcome) == (done["kept_weights"] == "ema")


async def test_a_finished_run_exports_to_onnx_from_the_runs_screen(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("onnxruntime", reason="the export extra is not installed: pip install -e '.[test]'")
    from tui.screens.runs import RunsScreen

    monkeypatch.chdir(tmp_path)
    app = make_app(runs_dir="runs", cursor_blink=False)
    async with app.run_test(size=(110, 34)) as pilot:
        await tiny_demo(pilot)
        await pilot.press("ctrl+r")
        training = app.training
        await wait_for(pilot, lambda: training.state in ("finished", "failed", "stopped"), timeout=300)
        assert training.state == "finished", training.outcome
        await pilot.press("f5")
        await wait_for(pilot, lambda: runs_listed(app.screen))
        screen = app.screen
        assert isinstance(screen, RunsScreen) and screen.check_action("export", ()) is True
        await pilot.press("o")
        await wait_for(pilot, lambda: screen.exported is not None, timeout=300)
        onnx = Path(training.run_dir) / "model.onnx"
        assert screen.exported.path == str(onnx) and onnx.is_file()  # type: ignore[attr-defined]
        assert screen.exported.top1_agreement == 1.0  # type: ignore[attr-defined]
