"""Typed events: the only thing the engine hands to a front end.

Training and evaluation are generators of these frozen, slotted dataclasses. They hold plain
Python values (never tensors), are named in the past tense, and each turns into a JSON
object with an ``"event"`` key (``to_record``) for ``--json`` output and metrics.jsonl.

The generators' contract (``core.training.train.train``, ``core.inference.evaluate.evaluate``,
``core.inference.classify.classify``):

- Stopping is cooperative: each checks its ``stop`` event at batch boundaries. On a stop it
  yields exactly one closing event, ``RunStopped``, ``EvaluationStopped`` or
  ``ClassificationStopped``, and returns; it never raises to stop. A run that ends normally
  closes with ``RunFinished``, ``EvaluationEnded`` or ``ClassificationEnded`` instead.
- No generator yields inside ``torch.inference_mode()`` or ``autocast``: the consumer's code
  runs between events, and must not run in those modes.
- Errors a user can act on are ``core.errors.TlworkError`` subclasses, raised from the
  generator with a one-line message.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Union


@dataclass(frozen=True, slots=True)
class RunStarted:
    """A run directory exists and the first batch is about to load."""

    run_dir: str
    config: dict[str, Any]
    command_line: str
    device: str
    device_name: str
    class_names: tuple[str, ...]
    train_size: int
    val_size: int
    total_epochs: int
    total_steps: int
    trainable_params: int
    total_params: int
    start_epoch: int = 0
    start_step: int = 0
    stages: tuple[tuple[str, int], ...] = ()  # (stage name, epochs) in order: the run's plan


@dataclass(frozen=True, slots=True)
class StageStarted:
    """A stage of the run began: ``probe`` or ``finetune`` (probe-then-finetune has both)."""

    stage: str
    first_epoch: int
    epochs: int
    lr: float
    trainable_params: int
    bn: str = ""  # frozen | train: BatchNorm while this stage trains the backbone ("" for a probe)
    lr_groups: tuple[tuple[str, float], ...] = ()  # (group, lr) with --layer-decay: head first, then each stage back


@dataclass(frozen=True, slots=True)
class ExtractionProgressed:
    """A cached-feature probe is running the frozen backbone over a split once, before its first epoch."""

    split: str  # train | val
    done: int  # images of the split extracted so far
    total: int
    seconds: float  # since this split's extraction began
    eta: float  # seconds left for this split


@dataclass(frozen=True, slots=True)
class EpochStarted:
    """An epoch began; ``epoch`` counts from 1 over the whole run."""

    epoch: int
    total_epochs: int
    stage: str
    batches: int


@dataclass(frozen=True, slots=True)
class BatchEnded:
    """One or more batches finished since the last such event.

    The engine syncs with the device only when it emits, so it coalesces batches and
    reports every per-batch loss in ``losses`` (oldest first); ``loss`` is the last one.
    """

    epoch: int
    batch: int
    batches: int
    step: int
    total_steps: int
    losses: tuple[float, ...]
    lr: float
    images_per_sec: float
    data_wait: float
    elapsed: float
    eta: float
    stage: str
    grad_norms: tuple[float, ...] = ()  # --clip-grad: each optimiser update's gradient norm before clipping

    @property
    def loss(self) -> float:
        """The most recent batch loss."""
        return self.losses[-1]


@dataclass(frozen=True, slots=True)
class EpochEnded:
    """An epoch's training and validation figures."""

    epoch: int
    total_epochs: int
    stage: str
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float
    images_per_sec: float
    ema_val_loss: float | None = None  # --ema: the weights' moving average on the same validation images
    ema_val_accuracy: float | None = None


@dataclass(frozen=True, slots=True)
class CheckpointSaved:
    """A resumable checkpoint (or the final bundle) was written."""

    path: str
    epoch: int
    step: int
    kind: str


@dataclass(frozen=True, slots=True)
class MessageLogged:
    """A line for the run log (skipped files, fallbacks, warnings)."""

    level: str
    message: str


@dataclass(frozen=True, slots=True)
class RunStopped:
    """The run stopped early on request; ``checkpoint`` resumes it."""

    run_dir: str
    checkpoint: str
    epoch: int
    step: int
    reason: str


@dataclass(frozen=True, slots=True)
class RunFinished:
    """The run completed; ``bundle`` is the final model."""

    run_dir: str
    bundle: str
    val_accuracy: float
    val_loss: float
    best_val_accuracy: float
    epochs: int
    seconds: float
    kept_epoch: int = 0  # the epoch whose weights the bundle holds
    kept: str = "last"  # best | last: which epoch --keep kept (last when validation is the test split)
    reason: str = ""  # why it ended before its planned epochs (--patience), else ""
    kept_weights: str = "live"  # live | ema: the trained weights, or (--ema) their moving average


@dataclass(frozen=True, slots=True)
class EvaluationStarted:
    """Evaluation of a model on a split began."""

    model: str
    dataset: str
    split: str
    images: int
    batches: int


@dataclass(frozen=True, slots=True)
class EvalBatchEnded:
    """Evaluation progress."""

    batch: int
    batches: int
    images_per_sec: float


@dataclass(frozen=True, slots=True)
class EvaluationEnded:
    """Evaluation figures: accuracies are fractions in [0, 1]; ``confusion[true][pred]``."""

    model: str
    dataset: str
    split: str
    images: int
    loss: float
    top1: float
    top5: float
    class_names: tuple[str, ...]
    per_class: tuple[float, ...]
    confusion: tuple[tuple[int, ...], ...]

    def most_confused(self, k: int = 5) -> list[tuple[str, str, int]]:
        """The ``k`` largest off-diagonal cells as (true, predicted, count)."""
        cells = [
            (self.class_names[t], self.class_names[p], n)
            for t, row in enumerate(self.confusion)
            for p, n in enumerate(row)
            if t != p and n > 0
        ]
        return sorted(cells, key=lambda c: -c[2])[:k]


@dataclass(frozen=True, slots=True)
class EvaluationStopped:
    """Evaluation stopped on request after ``batch`` of ``batches``; no figures are reported."""

    model: str
    batch: int
    batches: int


@dataclass(frozen=True, slots=True)
class ClassificationStarted:
    """Classifying ``images`` files with ``model`` began."""

    model: str
    images: int
    top_k: int


@dataclass(frozen=True, slots=True)
class ImageClassified:
    """One file's top-k predictions as (label, probability), best first."""

    path: str
    predictions: tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class ImageFailed:
    """A file that could not be classified (missing, not an image, truncated, too large)."""

    path: str
    error: str


@dataclass(frozen=True, slots=True)
class ClassificationEnded:
    """All files were tried."""

    model: str
    classified: int
    failed: int
    seconds: float


@dataclass(frozen=True, slots=True)
class ClassificationStopped:
    """Classification stopped on request; ``classified`` and ``failed`` count the files done before it."""

    model: str
    classified: int
    failed: int
    seconds: float


@dataclass(frozen=True, slots=True)
class Mistake:
    """One scored image, for the mistakes gallery: its file, labels, the predicted probability and its loss."""

    path: str
    true: str
    pred: str
    prob: float  # the predicted class's probability
    loss: float  # cross-entropy against the true label
    index: int  # position in the scored split
    top: tuple[tuple[str, float], ...]  # the five most probable classes, most probable first


@dataclass(frozen=True, slots=True)
class MistakesFound:
    """The highest-loss images of a scored split (filtered by true/predicted class), highest first."""

    model: str
    dataset: str
    split: str
    images: int  # images scored
    matched: int  # images that passed the class filters
    class_names: tuple[str, ...]
    mistakes: tuple[Mistake, ...]


@dataclass(frozen=True, slots=True)
class LrFindProgressed:
    """The learning-rate range test of ``stage`` reached ``step`` of ``steps`` (smoothed loss at rate ``lr``)."""

    stage: str
    step: int
    steps: int
    lr: float
    loss: float


@dataclass(frozen=True, slots=True)
class LrFound:
    """A stage's range test: the curve (rates and smoothed losses) and the rate it suggests, with the rule and why."""

    stage: str  # probe | finetune | partial
    mode: str
    lrs: tuple[float, ...]
    losses: tuple[float, ...]  # smoothed (fastai's and Lightning's debiased moving average)
    suggestion: float
    rule: str  # the rule that chose the suggestion: steepest (descent)
    reason: str
    valley: float
    steepest: float
    diverged: bool  # the test stopped early: the loss passed the divergence threshold


@dataclass(frozen=True, slots=True)
class LrFindStopped:
    """The range test stopped on request; nothing was suggested and the model is as it was."""

    stage: str
    step: int


@dataclass(frozen=True, slots=True)
class ImageExplained:
    """A Grad-CAM overlay of ``path`` for its predicted ``label`` was written to ``png``."""

    path: str
    png: str
    label: str
    prob: float


Event = Union[
    RunStarted,
    StageStarted,
    ExtractionProgressed,
    EpochStarted,
    BatchEnded,
    EpochEnded,
    CheckpointSaved,
    MessageLogged,
    RunStopped,
    RunFinished,
    EvaluationStarted,
    EvalBatchEnded,
    EvaluationEnded,
    EvaluationStopped,
    ClassificationStarted,
    ImageClassified,
    ImageFailed,
    ClassificationEnded,
    ClassificationStopped,
    MistakesFound,
    LrFindProgressed,
    LrFound,
    LrFindStopped,
    ImageExplained,
]


def event_name(event: Event) -> str:
    """``RunFinished`` -> ``run_finished``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(event).__name__).lower()


def to_record(event: Event) -> dict[str, Any]:
    """A JSON-ready dict with the event's snake-case name under ``"event"``."""
    record: dict[str, Any] = {"event": event_name(event)}
    record.update(asdict(event))
    return record
