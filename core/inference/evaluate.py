"""Evaluation: top-1, top-5, per-class accuracy and the confusion matrix, as events.

``Tally`` accumulates on the device (no host sync per batch) and is shared by the training
loop's validation pass and by ``evaluate``, so a bundle evaluated later reproduces the
accuracy its run reported. ``evaluate(ref, dataset)`` scores a run, bundle or ``last``: with
no dataset it uses the run's own validation split; with one it uses that dataset's test split,
matching class labels by name.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from core.config import RunConfig
from core.data.datasets import Images, load_eval_set, load_splits
from core.data.exclude import read_exclude
from core.data.loaders import eval_batches, to_device
from core.device import autocast, configure, pick_device
from core.errors import ConfigError
from core.events import EvalBatchEnded, EvaluationEnded, EvaluationStarted, EvaluationStopped, Event
from core.inference.classifier import Classifier, load_classifier
from core.runs.store import read_config

EMIT_INTERVAL = 0.1


class Tally:
    """Running loss, top-1/top-5 hits and confusion counts, kept on the device."""

    def __init__(self, num_classes: int, device: torch.device) -> None:
        self.num_classes = num_classes
        self.loss = torch.zeros((), device=device, dtype=torch.float64)
        self.top1 = torch.zeros((), device=device, dtype=torch.long)
        self.top5 = torch.zeros((), device=device, dtype=torch.long)
        self.confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.long)
        self.count = 0

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch of logits (N, C) against integer labels (N,)."""
        logits = logits.float()
        self.loss += nn.functional.cross_entropy(logits, labels, reduction="sum").double()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        pred = top[:, 0]
        self.top1 += (pred == labels).sum()
        self.top5 += (top == labels[:, None]).any(dim=1).sum()
        self.confusion += torch.bincount(labels * self.num_classes + pred, minlength=self.num_classes**2)
        self.count += labels.shape[0]

    def summary(self) -> dict[str, Any]:
        """Plain numbers (one host sync)."""
        n = max(1, self.count)
        conf = self.confusion.view(self.num_classes, self.num_classes).cpu().tolist()
        per_class = [row[i] / max(1, sum(row)) for i, row in enumerate(conf)]
        return {
            "images": self.count,
            "loss": self.loss.item() / n,
            "top1": self.top1.item() / n,
            "top5": self.top5.item() / n,
            "per_class": per_class,
            "confusion": conf,
        }










@dataclass
class Scoring:
    """What scoring a model on a split needs: the model, the images, their batches and the label mapping."""

    clf: Classifier
    data: Images
    split: str
    dataset: str
    names: list[str]  # the dataset's class names, in its label order
    mapping: torch.Tensor  # for each dataset class, the model's output column
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]]
    batches: int
    device: torch.device

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Float logits with columns in the dataset's class order (call under inference mode)."""
        with autocast(self.device, self.clf.amp):
            logits = self.clf.logits(to_device(images, self.device, True))
        return logits.float()[:, self.mapping]


def prepare_scoring(ref: str, dataset: str | None, *, data_dir: str = "data", runs_dir: str = "runs",
                    batch_size: int | None = None, device: str = "auto", workers: int | None = None) -> Scoring:
    """Load the model ``ref`` and the split it is scored on (``scored_set``), batched in dataset order."""
    dev = pick_device(device)
    configure(dev)
    clf = load_classifier(ref, dev, runs_dir=runs_dir)
    run_config = read_config(clf.path)
    data, split, dataset, class_names, native_size = scored_set(ref, dataset, data_dir, run_config)
    label_map = class_mapping(class_names, clf.class_names, dataset)
    bs = batch_size or (run_config.batch_size if run_config and isinstance(run_config.batch_size, int) else 64)
    loader = eval_batches(data, clf.preprocessing, bs, dev, workers, clf.transform, native_size)
    names = [clf.class_names[i] for i in label_map]
    return Scoring(clf, data, split, dataset, names, torch.tensor(label_map, device=dev), loader, -(-len(data) // bs), dev)


def evaluate(
    ref: str,
    dataset: str | None = None,
    *,
    data_dir: str = "data",
    runs_dir: str = "runs",
    batch_size: int | None = None,
    device: str = "auto",
    workers: int | None = None,
    stop: threading.Event | None = None,
) -> Iterator[Event]:
    """Score the model ``ref`` on ``dataset`` (default: its run's validation split).

    On a stop it yields ``EvaluationStopped`` and returns; it never yields inside
    ``torch.inference_mode()`` or ``autocast`` (``core.events`` states the contract).
    """
    sc = prepare_scoring(ref, dataset, data_dir=data_dir, runs_dir=runs_dir, batch_size=batch_size, device=device,
                         workers=workers)
    yield EvaluationStarted(sc.clf.name, sc.dataset, sc.split, len(sc.data), sc.batches)
    tally = Tally(len(sc.names), sc.device)
    start = last = time.perf_counter()
    for i, (images, labels) in enumerate(sc.loader, 1):
        if stop is not None and stop.is_set():
            yield EvaluationStopped(sc.clf.name, i - 1, sc.batches)
            return
        with torch.inference_mode():
            # Columns in the dataset's class order, so the confusion matrix reads by dataset label.
            tally.update(sc.logits(images), labels.to(sc.device, non_blocking=True))
        now = time.perf_counter()
        if now - last >= EMIT_INTERVAL or i == sc.batches:
            last = now
            yield EvalBatchEnded(i, sc.batches, tally.count / max(1e-9, now - start))
    s = tally.summary()
    yield EvaluationEnded(
        sc.clf.name, sc.dataset, sc.split, s["images"], s["loss"], s["top1"], s["top5"], tuple(sc.names),
        tuple(s["per_class"]), tuple(tuple(r) for r in s["confusion"]),
    )


def scored_set(ref: str, dataset: str | None, data_dir: str, run_config: RunConfig | None) -> tuple[Images, str, str, list[str], int | None]:
    """(images, split name, dataset name, class names, native size) that the evaluation scores.

    No dataset: the run's own validation split, exactly as training held it out. A dataset:
    its test split, or every image of a folder without one (``load_eval_set``).
    """
    if dataset is None:
        if run_config is None:
            raise ConfigError(f"{ref}: no run config beside this model; pass --dataset")
        excluded = read_exclude(run_config.exclude) if run_config.exclude else frozenset()  # the run's own split
        splits = load_splits(run_config.dataset, run_config.data_dir, run_config.val_split, run_config.seed, scoring=True,
                             exclude=excluded)
        return splits.val, "validation", run_config.dataset, splits.class_names, splits.native_size
    val_split, seed = (run_config.val_split, run_config.seed) if run_config else (0.1, 0)
    found = load_eval_set(dataset, data_dir, val_split, seed)
    return found.data, found.split, dataset, found.class_names, found.native_size


def class_mapping(dataset_classes: list[str], model_classes: list[str], dataset: str) -> list[int]:
    """For each dataset class, the model's output index with the same name (case-insensitive)."""
    if list(dataset_classes) == list(model_classes):
        return list(range(len(model_classes)))
    index = {_norm(n): i for i, n in enumerate(model_classes)}
    missing = [n for n in dataset_classes if _norm(n) not in index]
    if missing:
        raise ConfigError(
            f"the model does not know {len(missing)} of {dataset}'s classes (e.g. {missing[0]!r}); "
            f"its classes are {', '.join(model_classes[:6])}{'...' if len(model_classes) > 6 else ''}"
        )
    return [index[_norm(n)] for n in dataset_classes]


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", " ").replace("-", " ")
