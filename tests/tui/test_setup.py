"""The set-up screen: registry menus, inline validation, the live command line, Start."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Input, Select, Static
from tui_fixtures import ScriptedEngine, make_test_app, wait_for

from core import registry
from core.config import RunConfig
from tui.screens.setup import SetupScreen
from tui.widgets.fields import ChoiceField


def command_line(app) -> str:  # type: ignore[no-untyped-def]
    return str(app.screen.query_one("#command-line", Static).render())


async def test_menus_come_from_the_registries_with_descriptions(workspace: Path) -> None:
    app = make_test_app()
    async with app.run_test(size=(110, 34)) as pilot:
        screen = app.screen
        assert isinstance(screen, SetupScreen)
        for ident, choices in (("dataset", registry.DATASETS), ("mode", registry.MODES), ("augment", registry.AUGMENTATIONS),
                               ("scheduler", registry.SCHEDULERS), ("device", registry.DEVICES)):
            field = screen.query_one(f"#{ident}", ChoiceField)
            assert [c.name for c in field.choices] == registry.names(choices)
        # Keyboard only: the dataset menu has focus; open it, type to search, pick.
        await pilot.press("enter", "D", "enter")
        await pilot.pause()
        assert screen.field("dataset").value == "demo"
        description = str(screen.query_one("#dataset .choice-field--description", Static).render())
        assert description == registry.find(registry.DATASETS, "demo").description  # type: ignore[union-attr]
        assert "--dataset demo" in command_line(app)


async def test_demo_preset_and_start_from_the_keyboard(workspace: Path) -> None:
    engine = ScriptedEngine()
    app = make_test_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+t")
        await pilot.pause()
        # README's quick start: a linear probe of the shipped ImageNet EfficientNet-Lite0 at 64 px, lr 1e-2.
        assert command_line(app) == (
            "tlwork run --mode linear-probe --backbone timm:tf_efficientnet_lite0 --dataset demo --epochs 10 --lr 0.01 "
            "--image-size 64 --normalize backbone"
        )
        backbone = app.screen.field("backbone")  # the menu's own entry, not timm:NAME with a name typed in
        assert backbone.select.value == "timm:tf_efficientnet_lite0" and not backbone.has_class("-prefix")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.training.state == "finished")
        assert app.screen.id == "training"
        (config,) = engine.calls
        assert (config.dataset, config.backbone, config.weights, config.normalize, config.image_size, config.epochs) == (
            "demo", "timm:tf_efficientnet_lite0", "imagenet", "backbone", 64, 10)
        assert config.runs_dir == "runs"


async def test_invalid_number_blocks_start_with_a_message(workspace: Path) -> None:
    engine = ScriptedEngine()
    app = make_test_app(engine)
    async with app.run_test(size=(110, 34)) as pilot:
        screen = app.screen
        box = screen.query_one("#batch-size", Input)
        box.focus()
        await pilot.press("ctrl+u", "0")
        await pilot.pause()
        assert box.has_class("-invalid")
        assert "batch size must be a whole number of at least 1" in str(screen.query_one("#setup-error", Static).render())
        assert screen.config is None
        assert screen.check_action("start", ()) is None  # shown greyed in the footer
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert engine.calls == [] and app.screen is screen
        await pilot.press("backspace", "3", "2")
        await pilot.pause()
        assert screen.config is not None and screen.config.batch_size == 32
        assert "--batch-size 32" in command_line(app)


async def test_command_line_follows_every_change(workspace: Path) -> None:
    app = make_test_app()
    async with app.run_test(size=(110, 34)) as pilot:
        screen = app.screen
        screen.query_one("#epochs", Input).focus()
        await pilot.press("ctrl+u", "7", "tab", "3", "e", "-", "4")
        await pilot.pause()
        assert screen.config is not None
        assert (screen.config.epochs, screen.config.lr) == (7, 3e-4)
        assert command_line(app) == screen.config.command_line()
        assert "--epochs 7" in command_line(app) and "--lr 0.0003" in command_line(app)


async def test_probe_then_finetune_asks_for_probe_epochs(workspace: Path) -> None:
    app = make_test_app()
    async with app.run_test(size=(110, 34)) as pilot:
        screen = app.screen
        probe = screen.query_one("#probe-epochs", Input)
        assert not probe.display
        screen.field("mode").set_value("probe-then-finetune")
        await pilot.pause()
        assert probe.display
        assert "for probe-then-finetune: Crop + flip" in str(screen.query_one("#augment .choice-field--description", Static).render())
        probe.value = "2"
        await pilot.pause()
        assert screen.config is not None and screen.config.probe_epochs == 2
        assert screen.config.total_epochs == 7


async def test_prefix_choice_reveals_a_text_box(workspace: Path) -> None:
    app = make_test_app()
    async with app.run_test(size=(110, 34)) as pilot:
        screen = app.screen
        backbone = screen.field("backbone")
        rest = backbone.query_one(Input)
        assert not rest.display
        backbone.query_one(Select).value = "timm:"
        await pilot.pause()
        assert rest.display
        assert screen.config is None and "names no model" in screen.problem
        rest.focus()
        await pilot.press(*"resnet10t")
        await pilot.pause()
        assert screen.config is not None and screen.config.backbone == "timm:resnet10t"
        assert "--backbone timm:resnet10t" in command_line(app)


async def test_load_config_fills_the_form(workspace: Path) -> None:
    config = RunConfig(mode="finetune", backbone="hf:./vit", weights="/tmp/w.safetensors", dataset="imagefolder:./pics",
                       augment="randaugment", scheduler="cosine", epochs=9, lr=0.01, batch_size=8, image_size=64, seed=3)
    app = make_test_app()
    async with app.run_test(size=(110, 34)) as pilot:
        await app.new_run_from(config)
        await pilot.pause()
        loaded = app.screen.config
        assert loaded is not None
        assert loaded.command_line() == config.command_line()


async def test_the_advanced_part_sets_ema_mixing_balance_accumulation_and_clipping(workspace: Path) -> None:
    from textual.widgets import Checkbox, Collapsible
    from textual.widgets._collapsible import CollapsibleTitle

    engine = ScriptedEngine()
    app = make_test_app(engine)
    async with app.run_test(size=(110, 34)) as pilot:
        screen = app.screen
        screen.field("mode").set_value("finetune")  # a linear probe on cached features cannot mix images (its own test)
        advanced = screen.query_one("#advanced", Collapsible)
        assert advanced.collapsed  # out of the way until asked for
        for _ in range(40):  # keyboard only: Tab to the part's title, Enter opens it
            if isinstance(app.focused, CollapsibleTitle):
                break
            await pilot.press("tab")
        await pilot.press("enter")
        await pilot.pause()
        assert not advanced.collapsed
        await pilot.press("tab", "enter", "B", "enter")  # class weights: balanced
        await pilot.press("tab", "tab", "ctrl+u", *"0.999", "tab", "ctrl+u", *"0.2", "tab", "tab", "tab", "ctrl+u", "2",
                          "tab", "ctrl+u", "1", "tab", "space")  # EMA, MixUp, (CutMix, mix share), accumulate, clip, warm-up
        await pilot.pause()
        config = screen.config
        assert config is not None, screen.problem
        assert (config.class_weights, config.ema, config.mixup, config.accumulate, config.clip_grad, config.ema_warmup) == (
            "balanced", 0.999, 0.2, 2, 1.0, True)
        line = command_line(app)
        for flag in ("--ema 0.999", "--ema-warmup", "--mixup 0.2", "--class-weights balanced", "--accumulate 2", "--clip-grad 1"):
            assert flag in line, line
        # A bad value is caught as typed, with the form's one-line message.
        screen.query_one("#ema", Input).value = "1.5"
        await pilot.pause()
        assert screen.config is None and "EMA decay must be in (0, 1)" in screen.problem
        screen.query_one("#ema", Input).value = "0.999"
        await pilot.pause()
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.training.state == "finished")
        (started,) = engine.calls
        assert started.command_line() == config.resolved().command_line()  # the engine gets it with the mode defaults filled
        # A past run's settings come back into the advanced part too.
        await app.new_run_from(RunConfig(mode="finetune", sampler="balanced", cutmix=1.0, mix_prob=0.5))
        await pilot.pause()
        loaded = app.screen.config
        assert loaded is not None and (loaded.sampler, loaded.cutmix, loaded.mix_prob, loaded.ema_warmup) == ("balanced", 1.0, 0.5, False)
        assert not app.screen.query_one("#ema-warmup", Checkbox).value
