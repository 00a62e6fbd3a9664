"""The run configuration: one frozen dataclass that says exactly how a run was made.

``RunConfig`` holds plain values only, round-trips through JSON (``to_json``/``from_json``),
validates itself with one-line messages (``ConfigError``), fills the notebook's per-mode
defaults (``resolved``) and renders the equivalent ``tlwork run ...`` command line, which the
TUI shows as the user changes settings. No torch here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shlex
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

from core import registry
from core.errors import ConfigError

Mode = Literal["linear-probe", "finetune", "partial", "probe-then-finetune"]
Augment = Literal["none", "crop-flip", "randaugment", "trivialaugment"]
Scheduler = Literal["none", "step", "cosine", "onecycle"]
Optimizer = Literal["sgd", "adamw"]
Normalize = Literal["dataset", "backbone"]
DataPath = Literal["auto", "device", "stream"]
BatchNormPolicy = Literal["auto", "frozen", "train"]
Keep = Literal["best", "last"]
ClassWeights = Literal["none", "balanced"]
SamplerKind = Literal["shuffle", "balanced"]

MIN_IMAGE_SIZE = 16




# The notebook's recipe for each mode: probing at SGD 1e-3 with no augmentation, fine-tuning
# at 5e-4 with crop-flip and StepLR(5, 0.1).
MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "linear-probe": {"lr": 1e-3, "augment": "none", "scheduler": "none"},
    "finetune": {"lr": 5e-4, "augment": "crop-flip", "scheduler": "step"},
    "partial": {"lr": 5e-4, "augment": "crop-flip", "scheduler": "step"},
    # Measured on ../shared (bench/RESULTS.md, "Recipes on real data"): the notebook's 1e-3 probe and
    # 5e-4 StepLR fine-tune end at 62%; a faster probe and a cosine fine-tune at 2e-3 end near 68%.
    "probe-then-finetune": {"lr": 2e-3, "augment": "crop-flip", "scheduler": "cosine"},
}
PROBE_LR = 1e-2  # probe-then-finetune's probe stage (linear-probe mode keeps the notebook's 1e-3)

# What a run logs when it validates on the test split and so keeps its last epoch, not its best.
KEEPS_LAST_ON_TEST = (
    "keeping the last epoch: validation is the test split (--val-split 0), and choosing the best epoch on it "
    "would tune to the test set; give --val-split 0.1 to keep the best epoch on held-out images"
)


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything a training run needs. ``None`` means "the mode's default" until ``resolved``."""

    mode: Mode = "linear-probe"
    backbone: str = "resnet18"
    weights: str = "imagenet"
    dataset: str = "cifar10"
    data_dir: str = "data"
    val_split: float = 0.1
    exclude: str | None = None  # a text file of image paths left out of training and validation (issue 14)
    augment: Augment | None = None
    scheduler: Scheduler | None = None
    optimizer: Optimizer = "sgd"
    epochs: int = 5
    probe_epochs: int = 1
    lr: float | None = None
    probe_lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    batch_size: int | Literal["auto"] = 256
    image_size: int = 224
    normalize: Normalize = "dataset"
    step_size: int = 5
    step_gamma: float = 0.1
    warmup_epochs: int = 0
    unfreeze_stages: int = 1
    seed: int = 0
    device: str = "auto"
    workers: int | None = None
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    # Fast paths (issue 5): where batches come from, and whether a probe caches features.
    data: DataPath = "auto"
    cache_features: bool = True
    cudnn_benchmark: bool = False
    # Data-parallel training (issue 7): BatchNorm statistics over the global batch (CUDA workers only).
    sync_bn: bool = False
    runs_dir: str = "runs"
    name: str | None = None
    # Fault handling (issue 6): none of these changes the result of a healthy run.
    checkpoint_every: int = 0  # also checkpoint every N batches; 0: at epoch ends only
    skip_nonfinite: bool = False  # skip batches whose loss is NaN/inf instead of stopping
    max_nonfinite: int = 10  # with skip_nonfinite: how many such batches before giving up
    strict: bool = False  # fail on an unreadable image instead of skipping it
    # The recipe (issue 12): what fine-tuning keeps of the pretrained model, and which model the run keeps.
    bn: BatchNormPolicy = "auto"  # BatchNorm while the backbone trains; auto: frozen for pretrained weights
    keep: Keep = "best"  # the bundle: the best validation epoch (on held-out images) or the last
    patience: int = 0  # end a stage after N epochs without validation improvement; 0: never
    layer_decay: float = 1.0  # each earlier backbone stage trains at this times the next one's lr; 1: off
    # What timm and fastai users expect (issue 13): each is off by default and none changes a run that leaves it off.
    ema: float = 0.0  # decay of an exponential moving average of the weights (timm's ModelEmaV3); 0: off
    ema_warmup: bool = False  # the EMA's decay ramps up over the first steps (timm's use_warmup)
    mixup: float = 0.0  # MixUp's Beta(alpha, alpha); 0: off
    cutmix: float = 0.0  # CutMix's Beta(alpha, alpha); 0: off
    mix_prob: float = 1.0  # the share of batches mixed (with both, each mixed batch picks one at random)
    class_weights: ClassWeights = "none"  # balanced: the loss weighs each class by its inverse frequency
    sampler: SamplerKind = "shuffle"  # balanced: each epoch draws the classes evenly (with replacement)
    accumulate: int = 1  # batches per optimiser update (gradient accumulation)
    clip_grad: float = 0.0  # clip the gradients' global norm to this before each update; 0: off

    # Experiment trackers (issue 15): fed by the events that feed metrics.jsonl; none changes the result.
    log: tuple[str, ...] = ()  # --log tensorboard / --log mlflow (repeatable): registry.TRACKERS
    mlflow_uri: str | None = None  # None: MLflow's own default (MLFLOW_TRACKING_URI, else its local store)
    mlflow_experiment: str | None = None  # None: MLflow's default (MLFLOW_EXPERIMENT_NAME, else "Default")

    def __post_init__(self) -> None:
        # JSON hands back a list: keep a tuple (the config stays hashable), each tracker once, in order.
        log = (self.log,) if isinstance(self.log, str) else self.log
        object.__setattr__(self, "log", tuple(dict.fromkeys(log)))

    def resolved(self) -> RunConfig:
        """A copy with every mode default filled in, validated."""
        defaults = MODE_DEFAULTS[self.mode] if self.mode in MODE_DEFAULTS else {}
        filled = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        if self.mode == "probe-then-finetune" and self.probe_lr is None:
            filled["probe_lr"] = PROBE_LR
        if self.bn == "auto":
            filled["bn"] = bn_policy(self.weights)
        out = dataclasses.replace(self, **filled)
        out.validate()
        return out

    def validate(self) -> None:
        """Raise ``ConfigError`` with a one-line message for the first problem found."""
        _check_choice("mode", self.mode, registry.MODES)
        if self.augment is not None:
            _check_choice("augment", self.augment, registry.AUGMENTATIONS)
        if self.scheduler is not None:
            _check_choice("scheduler", self.scheduler, registry.SCHEDULERS)
        _check_choice("optimizer", self.optimizer, registry.OPTIMIZERS)
        _check_choice("normalize", self.normalize, registry.NORMALIZATIONS)
        _check_choice("data", self.data, registry.DATA_PATHS)
        check_backbone(self.backbone)
        check_dataset(self.dataset)
        check_device(self.device)
        for name in ("lr", "probe_lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"--{_flag(name)} must be greater than 0 (got {value}); try 1e-3")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1 (got {self.epochs})")
        if self.mode == "probe-then-finetune" and self.probe_epochs < 1:
            raise ConfigError(f"--probe-epochs must be at least 1 (got {self.probe_epochs})")
        if self.batch_size != "auto" and (
            isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1
        ):
            raise ConfigError(f"--batch-size must be at least 1, or auto (got {self.batch_size!r})")
        if self.image_size < MIN_IMAGE_SIZE:
            raise ConfigError(f"--image-size must be at least {MIN_IMAGE_SIZE} (got {self.image_size})")
        if self.exclude is not None and not Path(self.exclude).expanduser().is_file():
            raise ConfigError(f"--exclude {self.exclude}: no such file; give a text file of image paths, one per line")
        if not 0.0 <= self.val_split < 1.0:
            raise ConfigError(f"--val-split must be in [0, 1) (got {self.val_split}); try 0.1")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"--label-smoothing must be in [0, 1) (got {self.label_smoothing})")
        if self.weight_decay < 0 or self.momentum < 0:
            raise ConfigError("--weight-decay and --momentum must not be negative")
        if self.step_size < 1:
            raise ConfigError(f"--step-size must be at least 1 (got {self.step_size})")
        if self.unfreeze_stages < 1:
            raise ConfigError(f"--unfreeze-stages must be at least 1 (got {self.unfreeze_stages})")
        if self.warmup_epochs < 0:
            raise ConfigError(f"--warmup-epochs must not be negative (got {self.warmup_epochs})")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"--workers must not be negative (got {self.workers})")
        if self.name is not None:
            check_run_name(self.name)
        if self.checkpoint_every < 0:
            raise ConfigError(f"--checkpoint-every must not be negative (got {self.checkpoint_every}); 0 saves at epoch ends only")
        _check_choice("bn", self.bn, registry.BN_POLICIES)
        _check_choice("keep", self.keep, registry.KEEP)
        if self.patience < 0:
            raise ConfigError(f"--patience must not be negative (got {self.patience}); 0 never stops early")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"--layer-decay must be in (0, 1] (got {self.layer_decay:g}); try 0.7, or 1 for one rate")
        self._validate_regularisers()
        if self.max_nonfinite < 0:
            raise ConfigError(f"--max-nonfinite must not be negative (got {self.max_nonfinite})")
        check_trackers(self.log, self.mlflow_uri, self.mlflow_experiment)

    def _validate_regularisers(self) -> None:
        """The options of issue 13: EMA, MixUp/CutMix, class balance, accumulation, clipping."""
        if self.ema and not 0.0 < self.ema < 1.0:
            raise ConfigError(f"--ema must be a decay in (0, 1) (got {self.ema:g}); try 0.999, or 0 for no EMA")
        if self.ema_warmup and not self.ema:
            raise ConfigError("--ema-warmup warms up the weights' EMA; add --ema 0.999 or drop --ema-warmup")
        for name in ("mixup", "cutmix"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} is a Beta(alpha, alpha) parameter and must not be negative "
                                  f"(got {getattr(self, name):g}); try 0.2, or 0 for none")
        if not 0.0 < self.mix_prob <= 1.0:
            raise ConfigError(f"--mix-prob must be in (0, 1] (got {self.mix_prob:g}); 1 mixes every batch")
        if self.mode == "linear-probe" and self.mixes and self.cache_features:
            raise ConfigError(
                "--mixup/--cutmix mix images, and a linear probe trains on cached features; add --no-cache-features "
                "to mix the probe's images, or use --mode probe-then-finetune (its fine-tune stage mixes)"
            )
        _check_choice("class-weights", self.class_weights, registry.CLASS_WEIGHTS)
        _check_choice("sampler", self.sampler, registry.SAMPLERS)
        if self.accumulate < 1:
            raise ConfigError(f"--accumulate must be at least 1 (got {self.accumulate}); 1 updates after every batch")
        if self.clip_grad < 0:
            raise ConfigError(f"--clip-grad must not be negative (got {self.clip_grad:g}); try 1.0, or 0 for no clipping")

    @property
    def mixes(self) -> bool:
        """True when MixUp or CutMix is on."""
        return self.mixup > 0 or self.cutmix > 0

    @property
    def total_epochs(self) -> int:
        """Epochs over the whole run, probe stage included."""
        return self.epochs + (self.probe_epochs if self.mode == "probe-then-finetune" else 0)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    def to_json(self) -> str:
        """Indented JSON, as written to ``runs/<name>/config.json``."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build from a dict, ignoring unknown keys written by newer versions."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        """Inverse of ``to_json``."""
        return cls.from_dict(json.loads(text))

    def command_line(self) -> str:
        """The ``tlwork run ...`` command that makes this run, listing non-default settings."""
        default = RunConfig()
        parts = ["tlwork", "run"]
        for f in fields(self):
            value = getattr(self, f.name)
            if value == getattr(default, f.name) and f.name != "mode":
                continue
            flag = "--" + _flag(f.name)
            if isinstance(value, bool):
                parts.append(flag if value else "--no-" + _flag(f.name))
            elif isinstance(value, tuple):  # a repeatable option: --log tensorboard --log mlflow
                parts += [p for item in value for p in (flag, _format(item))]
            elif value is not None:
                parts += [flag, _format(value)]
        return " ".join(shlex.quote(p) if p[:1] != "-" else p for p in parts)


def bn_policy(weights: str) -> str:
    """What ``--bn auto`` means: pretrained BatchNorm statistics stay fixed; random ones must be learnt.

    Measured on ../shared (bench/RESULTS.md): with train-mode BatchNorm, probe-then-finetune
    falls from the probe's 59% to 30% at the switch; frozen, it goes on from there.
    """
    return "train" if weights == "none" else "frozen"


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _check_choice(what: str, value: str, choices: tuple[registry.Choice, ...]) -> None:
    if registry.find(choices, value) is None:
        valid = ", ".join(registry.names(choices))
        raise ConfigError(f"unknown --{what} {value!r}; choose one of: {valid}")


def check_backbone(backbone: str) -> None:
    """Accept a registered backbone, ``timm:NAME`` or ``hf:ID_OR_PATH``."""
    for prefix in ("timm:", "hf:"):
        if backbone.startswith(prefix):
            if not backbone[len(prefix):]:
                raise ConfigError(f"--backbone {backbone!r} names no model; e.g. {prefix}resnet50")
            return
    if registry.find(registry.BACKBONES, backbone) is None:
        valid = ", ".join(registry.names(registry.BACKBONES))
        raise ConfigError(f"unknown --backbone {backbone!r}; choose one of: {valid}, timm:NAME, hf:ID_OR_PATH")


def check_dataset(dataset: str) -> None:
    """Accept cifar10, cifar100, demo or ``imagefolder:PATH``."""
    if dataset.startswith("imagefolder:"):
        if not dataset[len("imagefolder:"):]:
            raise ConfigError("--dataset imagefolder: needs a path, e.g. imagefolder:./photos")
        return
    if registry.find(registry.DATASETS, dataset) is None:
        raise ConfigError(f"unknown --dataset {dataset!r}; choose one of: cifar10, cifar100, demo, imagefolder:PATH")


def check_device(device: str) -> None:
    """Accept auto, cpu, mps, cuda or cuda:N."""
    if device in registry.names(registry.DEVICES) or re.fullmatch(r"cuda:\d+", device):
        return
    raise ConfigError(f"unknown --device {device!r}; choose one of: auto, cuda, cuda:N, mps, cpu")


TRACKER_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
"""The module each ``--log`` tracker imports; its extra is ``tlwork[<tracker>]``."""


def check_trackers(log: tuple[str, ...], mlflow_uri: str | None, mlflow_experiment: str | None) -> None:
    """Known trackers whose library is installed; the MLflow options only with ``--log mlflow``."""
    for tracker in log:
        _check_choice("log", tracker, registry.TRACKERS)
        if importlib.util.find_spec(TRACKER_PACKAGES[tracker]) is None:
            raise ConfigError(f"--log {tracker} needs the {TRACKER_PACKAGES[tracker]} package; "
                              f"install it with: pip install 'tlwork[{tracker}]'")
    for name, value in (("mlflow-uri", mlflow_uri), ("mlflow-experiment", mlflow_experiment)):
        if value is not None and "mlflow" not in log:
            raise ConfigError(f"--{name} is only used with --log mlflow; add --log mlflow or drop --{name}")
        if value is not None and not value.strip():
            raise ConfigError(f"--{name} must not be empty; leave it out for MLflow's default")


_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_run_name(name: str) -> None:
    """A run name is one path component: letters, digits, '.', '_' and '-' (no '..', no '/')."""
    if not _RUN_NAME.fullmatch(name) or ".." in name:
        raise ConfigError(
            f"--name {name!r} is not a valid run name; use letters, digits, '.', '_' and '-' only"
        )


def literal_choices(annotation: Any) -> tuple[str, ...]:
    """The strings a ``Literal`` alias admits (used by tests to check registries match)."""
    return tuple(get_args(annotation))
