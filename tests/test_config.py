"""The run configuration: JSON round trip, mode defaults, validation messages, registries, and
the ``tlwork run ...`` command line that the TUI shows, parsed back through the real CLI.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Callable

import pytest
from tinydata import make_image_folder
from typer.testing import CliRunner

from core import registry
from core.config import Augment, Mode, Normalize, Optimizer, RunConfig, Scheduler, literal_choices
from core.errors import ConfigError


def test_json_round_trip_keeps_every_field() -> None:
    config = RunConfig(
        mode="partial",
        backbone="timm:convnext_tiny",
        weights="/tmp/w.safetensors",
        dataset="imagefolder:/data/photos",
        augment="randaugment",
        scheduler="cosine",
        optimizer="adamw",
        epochs=7,
        lr=3e-4,
        label_smoothing=0.1,
        unfreeze_stages=2,
        amp=False,
        workers=3,
        name="my-run",
    )
    again = RunConfig.from_json(config.to_json())
    assert again == config
    # ``None`` (use the mode's default) survives as null, not as a filled-in value.
    assert RunConfig.from_json(RunConfig().to_json()).lr is None


def test_from_dict_ignores_keys_from_newer_versions() -> None:
    data = RunConfig(epochs=3).to_dict() | {"some_future_option": 1}
    assert RunConfig.from_dict(data) == RunConfig(epochs=3)


@pytest.mark.parametrize(
    ("mode", "lr", "augment", "scheduler"),
    [
        ("linear-probe", 1e-3, "none", "none"),
        ("finetune", 5e-4, "crop-flip", "step"),
        ("partial", 5e-4, "crop-flip", "step"),
        ("probe-then-finetune", 2e-3, "crop-flip", "cosine"),  # measured on ../shared (#9)
    ],
)
def test_resolved_fills_the_mode_defaults(mode: str, lr: float, augment: str, scheduler: str) -> None:
    config = RunConfig(mode=mode).resolved()  # type: ignore[arg-type]
    assert (config.lr, config.augment, config.scheduler) == (lr, augment, scheduler)
    assert (config.optimizer, config.momentum) == ("sgd", 0.9)
    assert (config.step_size, config.step_gamma) == (5, 0.1)


def test_probe_then_finetune_probes_at_the_probe_rate() -> None:
    config = RunConfig(mode="probe-then-finetune").resolved()
    assert config.probe_lr == 1e-2 and config.lr == 2e-3


def test_resolved_keeps_explicit_choices() -> None:
    config = RunConfig(mode="finetune", lr=0.01, augment="none", scheduler="cosine").resolved()
    assert (config.lr, config.augment, config.scheduler) == (0.01, "none", "cosine")


@pytest.mark.parametrize(
    ("overrides", "flag"),
    [
        ({"lr": 0.0}, "--lr"),
        ({"lr": -1e-3}, "--lr"),
        ({"probe_lr": 0.0, "mode": "probe-then-finetune"}, "--probe-lr"),
        ({"epochs": 0}, "--epochs"),
        ({"probe_epochs": 0, "mode": "probe-then-finetune"}, "--probe-epochs"),
        ({"batch_size": 0}, "--batch-size"),
        ({"image_size": 15}, "--image-size"),
        ({"val_split": 1.0}, "--val-split"),
        ({"label_smoothing": 1.0}, "--label-smoothing"),
        ({"weight_decay": -0.1}, "--weight-decay"),
        ({"step_size": 0}, "--step-size"),
        ({"unfreeze_stages": 0}, "--unfreeze-stages"),
        ({"warmup_epochs": -1}, "--warmup-epochs"),
        ({"workers": -1}, "--workers"),
        ({"name": "../escape"}, "--name"),
        ({"name": "a/b"}, "--name"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_option(overrides: dict[str, Any], flag: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig(**overrides).resolved()
    message = str(info.value)
    assert flag in message
    assert "\n" not in message


def test_smallest_allowed_values_pass() -> None:
    RunConfig(lr=1e-9, epochs=1, batch_size=1, image_size=16).resolved()


@pytest.mark.parametrize(
    ("field", "choices"),
    [
        ("mode", registry.MODES),
        ("augment", registry.AUGMENTATIONS),
        ("scheduler", registry.SCHEDULERS),
        ("optimizer", registry.OPTIMIZERS),
        ("normalize", registry.NORMALIZATIONS),
        ("backbone", registry.BACKBONES),
        ("device", registry.DEVICES),
    ],
)
def test_unknown_choice_lists_every_valid_one(field: str, choices: tuple[registry.Choice, ...]) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig(**{field: "bogus"}).resolved()
    message = str(info.value)
    assert "\n" not in message and "'bogus'" in message and f"--{field}" in message
    for name in registry.names(choices):
        assert name in message


def test_unknown_dataset_lists_every_kind() -> None:
    with pytest.raises(ConfigError, match="cifar10, cifar100, demo, imagefolder:PATH"):
        RunConfig(dataset="mnist").resolved()


@pytest.mark.parametrize("value", ["timm:", "hf:"])
def test_prefix_without_a_model_name_is_an_error(value: str) -> None:
    with pytest.raises(ConfigError, match="names no model"):
        RunConfig(backbone=value).resolved()


@pytest.mark.parametrize(
    ("annotation", "choices"),
    [
        (Mode, registry.MODES),
        (Augment, registry.AUGMENTATIONS),
        (Scheduler, registry.SCHEDULERS),
        (Optimizer, registry.OPTIMIZERS),
        (Normalize, registry.NORMALIZATIONS),
    ],
)
def test_registries_match_the_config_literals(annotation: Any, choices: tuple[registry.Choice, ...]) -> None:
    assert list(literal_choices(annotation)) == registry.names(choices)


def test_every_choice_has_a_label_and_a_one_line_description() -> None:
    groups = (registry.BACKBONES, registry.MODES, registry.AUGMENTATIONS, registry.SCHEDULERS, registry.OPTIMIZERS)
    for choices in groups:
        assert len(set(registry.names(choices))) == len(choices)
        for choice in choices:
            assert choice.label and choice.description and "\n" not in choice.description


def test_command_line_lists_only_what_differs_from_the_defaults() -> None:
    assert RunConfig().command_line() == "tlwork run --mode linear-probe"
    line = RunConfig(mode="finetune", epochs=3, amp=False).command_line()
    assert line == "tlwork run --mode finetune --epochs 3 --no-amp"


def test_command_line_parses_back_through_the_cli_into_the_same_config(
    tiny_config: Callable[..., RunConfig], tmp_path: Path
) -> None:
    from tui.cli import app

    # A dataset path with a space: the command line must quote it.
    folder = make_image_folder(tmp_path / "my photos", train=4, test=2)
    config = tiny_config(
        dataset=f"imagefolder:{folder}",
        mode="probe-then-finetune",
        optimizer="adamw",
        lr=0.003,
        probe_lr=0.02,
        scheduler="cosine",
        warmup_epochs=1,
        augment="trivialaugment",
        label_smoothing=0.1,
        weight_decay=0.05,
        normalize="backbone",
        amp=False,
        seed=7,
        name="round-trip",
    )
    argv = shlex.split(config.command_line())
    assert f"imagefolder:{folder}" in argv
    assert argv[:2] == ["tlwork", "run"]
    result = CliRunner().invoke(app, ["run", *argv[2:]])
    assert result.exit_code == 0, result.output
    written = json.loads((Path(config.runs_dir) / "round-trip" / "config.json").read_text())
    assert written == config.resolved().to_dict()
