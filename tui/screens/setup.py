"""The set-up screen: every run setting as a menu or a validated box, and the equivalent command.

Menus read ``core.registry``, the same tuples behind ``tlwork run --help``, each with its
one-line description. Number boxes are checked as you type (a red tint and a one-line
message); the whole configuration is then checked by ``RunConfig.validate``, and the
``tlwork run ...`` line below the form is rebuilt on every change, ready to copy for a
headless run. Start (Ctrl+R or the button) hands the config to the training screen.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, VerticalScroll
from textual.screen import Screen
from textual.validation import Function, Integer, ValidationResult
from textual.widgets import Button, Checkbox, Collapsible, Footer, Input, Label, Static

from core import registry
from core.config import MODE_DEFAULTS, PROBE_LR, RunConfig
from core.errors import ConfigError
from core.registry import Choice
from tui.widgets.fields import ChoiceField
from tui.widgets.nav import NavBar

# ``--weights`` also takes a file; the menu offers it as a prefix choice with a path box.
WEIGHT_FILE = Choice("file:", "File", "a .safetensors file or a state dict at PATH")
# The offline demo, as README's quick start: a linear probe of the ImageNet EfficientNet-Lite0
# that ships with tlwork on the shipped demo images (over 50% validation accuracy after 10
# epochs, well under a minute on 2 CPU cores).
DEMO = {"dataset": "demo", "backbone": "timm:tf_efficientnet_lite0", "weights": "imagenet", "mode": "linear-probe",
        "normalize": "backbone", "image_size": 64, "batch_size": 256, "epochs": 10, "lr": 0.01}


def _number(accept: Callable[[float], bool]) -> Callable[[str], bool]:
    """A box validator: the text is a number that ``accept`` takes."""

    def check(value: str) -> bool:
        try:
            return accept(float(value))
        except ValueError:
            return False

    return check


_positive = _number(lambda x: x > 0)
_fraction = _number(lambda x: 0 < x <= 1)
_decay = _number(lambda x: x == 0 or 0 < x < 1)
_not_negative = _number(lambda x: x >= 0)


# Menus named after their RunConfig field (weights has its own path box, read apart).
CHOICES = ("dataset", "backbone", "normalize", "mode", "augment", "scheduler", "optimizer", "bn", "keep", "device",
           "class_weights", "sampler")
FLOATS = ("lr", "layer_decay", "ema", "mixup", "cutmix", "mix_prob", "clip_grad")  # float boxes; the others hold whole numbers


# (id, label, RunConfig field, validators, placeholder)
NUMBERS: tuple[tuple[str, str, str, list[Any], str], ...] = (
    ("epochs", "epochs", "epochs", [Integer(minimum=1, failure_description="epochs must be a whole number of at least 1")], ""),
    ("lr", "learning rate", "lr", [Function(_positive, "learning rate must be a number greater than 0, e.g. 1e-3")], "default"),
    ("batch-size", "batch size", "batch_size", [Integer(minimum=1, failure_description="batch size must be a whole number of at least 1")], ""),
    ("image-size", "image size", "image_size", [Integer(minimum=16, failure_description="image size must be a whole number of at least 16")], ""),
    ("seed", "seed", "seed", [Integer(failure_description="seed must be a whole number")], ""),
    ("probe-epochs", "probe epochs", "probe_epochs", [Integer(minimum=1, failure_description="probe epochs must be a whole number of at least 1")], ""),
    ("patience", "patience", "patience", [Integer(minimum=0, failure_description="patience must be a whole number of epochs, 0 for never")], ""),
    ("layer-decay", "layer decay", "layer_decay", [Function(_fraction, "layer decay must be a number in (0, 1], e.g. 0.7; 1 is off")], ""),
)

# The advanced part (issue 13): what timm and fastai users look for; each is off at its default.
ADVANCED: tuple[tuple[str, str, str, list[Any], str], ...] = (
    ("ema", "EMA decay", "ema", [Function(_decay, "EMA decay must be in (0, 1), e.g. 0.999; 0 is off")], ""),
    ("mixup", "MixUp alpha", "mixup", [Function(_not_negative, "MixUp alpha must not be negative, e.g. 0.2; 0 is off")], ""),
    ("cutmix", "CutMix alpha", "cutmix", [Function(_not_negative, "CutMix alpha must not be negative, e.g. 1.0; 0 is off")], ""),
    ("mix-prob", "mix share", "mix_prob", [Function(_fraction, "mix share must be in (0, 1]; 1 mixes every batch")], ""),
    ("accumulate", "accumulate", "accumulate", [Integer(minimum=1, failure_description="accumulate must be a whole number of batches, at least 1")], ""),
    ("clip-grad", "clip grad norm", "clip_grad", [Function(_not_negative, "clip grad norm must not be negative, e.g. 1.0; 0 is off")], ""),
)
BOXES = NUMBERS + ADVANCED


class SetupScreen(Screen[None]):
    """Choose a run's settings, see its command line, start it."""

    BINDINGS = [
        Binding("ctrl+r", "start", "Start run"),
        Binding("ctrl+t", "demo", "Demo preset"),
        Binding("ctrl+f", "lr_find", "LR finder"),
    ]

    def __init__(self) -> None:
        super().__init__(id="setup")
        self.config: RunConfig | None = None
        self.problem = ""
        self._refresh_pending = False

    def compose(self) -> ComposeResult:
        base = RunConfig()
        yield NavBar("setup")
        with VerticalScroll(id="setup-form"):
            yield ChoiceField("dataset", registry.DATASETS, value=base.dataset, id="dataset",
                              placeholders={"imagefolder:": "PATH with train/ (and test/ or val/) or class folders"})
            yield ChoiceField("backbone", registry.BACKBONES + registry.BACKBONE_PREFIXES, value=base.backbone, id="backbone",
                              placeholders={"timm:": "timm model name, e.g. resnet10t", "hf:": "hub id or local folder"})
            yield ChoiceField("weights", registry.WEIGHTS + (WEIGHT_FILE,), value=base.weights, id="weights",
                              placeholders={"file:": "PATH to .safetensors or a state dict"})
            yield ChoiceField("normalize", registry.NORMALIZATIONS, value=base.normalize, id="normalize")
            yield ChoiceField("mode", registry.MODES, value=base.mode, id="mode")
            yield ChoiceField("augmentation", registry.AUGMENTATIONS, value=None, blank="mode default", id="augment")
            yield ChoiceField("scheduler", registry.SCHEDULERS, value=None, blank="mode default", id="scheduler")
            yield ChoiceField("optimizer", registry.OPTIMIZERS, value=base.optimizer, id="optimizer")
            yield ChoiceField("batchnorm", registry.BN_POLICIES, value=base.bn, id="bn")
            yield ChoiceField("keep", registry.KEEP, value=base.keep, id="keep")
            yield ChoiceField("device", registry.DEVICES, value=base.device, id="device")
            with Grid(id="setup-numbers"):
                yield from self._boxes(NUMBERS, base)
            with Horizontal(id="name-row"):
                yield Label("run name", classes="field-label")
                yield Input(placeholder="automatic: time-backbone-mode", compact=True, id="run-name")
            with Collapsible(title="advanced: EMA, MixUp/CutMix, class balance, accumulation, clipping", id="advanced"):
                yield ChoiceField("class weights", registry.CLASS_WEIGHTS, value=base.class_weights, id="class_weights")
                yield ChoiceField("sampler", registry.SAMPLERS, value=base.sampler, id="sampler")
                with Grid(id="advanced-numbers"):
                    yield from self._boxes(ADVANCED, base)
                yield Checkbox("EMA warm-up (the decay ramps up, as timm's use_warmup)",
                               value=base.ema_warmup, compact=True, id="ema-warmup")
        yield Static("", id="command-line", classes="panel")
        with Horizontal(id="setup-actions"):
            yield Static("", id="setup-error")
            yield Button("Start ^r", variant="success", compact=True, id="start")
        yield Footer()

    @staticmethod
    def _boxes(boxes: tuple[tuple[str, str, str, list[Any], str], ...], base: RunConfig) -> ComposeResult:
        for ident, label, field, validators, placeholder in boxes:
            value = getattr(base, field)
            yield Label(label, classes="field-label", id=f"{ident}-label")
            yield Input("" if value is None else f"{value:g}" if isinstance(value, float) else str(value),
                        placeholder=placeholder, validators=validators, valid_empty=ident == "lr", compact=True, id=ident)

    def on_mount(self) -> None:
        self.border_title = "set-up"
        self.query_one("#command-line").border_title = "equivalent command"
        self.refresh_config()
        self.query_one("#dataset Select").focus()

    # -- reading and showing the configuration ----------------------------------------------

    def field(self, ident: str) -> ChoiceField:
        return self.query_one(f"#{ident}", ChoiceField)

    def read_config(self) -> tuple[RunConfig | None, str]:
        """The configuration the form describes, or None and the first problem found."""
        for ident, *_ in BOXES:
            box = self.query_one(f"#{ident}", Input)
            if ident == "probe-epochs" and self.field("mode").value != "probe-then-finetune":
                continue
            result: ValidationResult | None = box.validate(box.value)
            if result is not None and not result.is_valid:
                return None, result.failure_descriptions[0]
        values: dict[str, Any] = {}
        for ident in CHOICES:
            value = self.field(ident).value
            if value is None and ident not in ("augment", "scheduler"):
                return None, f"choose a {ident}"
            values[ident] = value
        weights = self.field("weights").value or "imagenet"
        values["weights"] = weights[len("file:"):] if weights.startswith("file:") else weights
        if values["weights"] == "":
            return None, "weights: type the path of a .safetensors file or a state dict"
        values["ema_warmup"] = self.query_one("#ema-warmup", Checkbox).value
        for ident, _, field, _, _ in BOXES:
            text = self.query_one(f"#{ident}", Input).value.strip()
            if field in FLOATS:
                if text:
                    values[field] = float(text)
                elif field == "lr":
                    values[field] = None
            elif text:
                values[field] = int(text)
        name = self.query_one("#run-name", Input).value.strip()
        values["name"] = name or None
        values["runs_dir"] = self.app.runs_dir
        values["data_dir"] = self.app.data_dir
        try:
            config = RunConfig(**values)
            config.validate()
        except ConfigError as exc:
            return None, str(exc)
        return config, ""

    def refresh_config(self) -> None:
        """Re-read the form: hints, the command line, the error line and Start."""
        mode = self.field("mode").value or "linear-probe"
        defaults = MODE_DEFAULTS.get(mode, {})
        for ident, key in (("augment", "augment"), ("scheduler", "scheduler")):
            choices = registry.AUGMENTATIONS if key == "augment" else registry.SCHEDULERS
            choice = registry.find(choices, defaults.get(key, ""))
            self.field(ident).set_blank_hint(f"for {mode}: {choice.label if choice else '?'}")
        lr = self.query_one("#lr", Input)
        lr.placeholder = f"default {defaults.get('lr', PROBE_LR):g}"
        self.set_class(mode == "probe-then-finetune", "-probe-then-finetune")
        self.config, self.problem = self.read_config()
        line = self.query_one("#command-line", Static)
        line.update(self.config.command_line() if self.config else "(fix the settings above)")
        error = self.query_one("#setup-error", Static)
        error.update(self.problem)
        error.set_class(bool(self.problem), "-error")
        self.query_one("#start", Button).disabled = self.config is None
        self.refresh_bindings()

    @on(ChoiceField.Changed)
    @on(Input.Changed)
    @on(Checkbox.Changed)
    def _changed(self) -> None:
        # Loading a config changes a dozen fields at once: re-read the form once after them.
        if not self._refresh_pending:
            self._refresh_pending = True
            self.call_next(self._refresh_once)

    def _refresh_once(self) -> None:
        self._refresh_pending = False
        self.refresh_config()

    # -- loading settings ---------------------------------------------------------------

    def load_config(self, config: RunConfig) -> None:
        """Fill the form from ``config`` (a past run's settings)."""
        for ident in CHOICES:
            self.field(ident).set_value(getattr(config, ident))
        weights = config.weights
        self.field("weights").set_value(weights if registry.find(registry.WEIGHTS, weights) else "file:" + weights)
        self.query_one("#ema-warmup", Checkbox).value = config.ema_warmup
        for ident, _, field, _, _ in BOXES:
            value = getattr(config, field)
            self.query_one(f"#{ident}", Input).value = "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
        self.query_one("#run-name", Input).value = ""
        self.refresh_config()

    # -- actions --------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "start":
            return True if self.config is not None else None
        return True

    async def action_start(self) -> None:
        if self.config is None:
            self.notify(self.problem or "the settings are incomplete", severity="error")
            return
        await self.app.start_run(self.config)

    def action_demo(self) -> None:
        """The offline demo: a linear probe of the shipped ImageNet EfficientNet-Lite0 on the shipped images."""
        current = self.config or RunConfig()
        self.load_config(replace(current, **DEMO))

    def action_lr_find(self) -> None:
        """Run the LR range test for these settings (a dialog); ``u`` there fills the learning-rate box."""
        from tui.screens.lrfind import LrFindScreen

        if self.config is None:
            self.notify(self.problem or "the settings are incomplete", severity="error")
            return

        def use(rates: dict[str, float] | None) -> None:
            if rates:
                self.query_one("#lr", Input).value = f"{rates['lr']:.2g}"
                probe = f"; for the probe stage use --probe-lr {rates['probe_lr']:.2g}" if "probe_lr" in rates else ""
                self.notify(f"learning rate set to {rates['lr']:.2g} (the LR finder's suggestion){probe}")

        self.app.push_screen(LrFindScreen(self.config), use)

    @on(Button.Pressed, "#start")
    async def _start_pressed(self) -> None:
        await self.action_start()
