"""The mistakes gallery's engine: the highest-loss images of a scored split, with their files.

``find_mistakes(ref, dataset)`` scores the same split ``evaluate`` scores (the run's own
validation split, or a dataset's test split) through the same ``Scoring``, keeps every
image's cross-entropy loss, predicted class and top-5 probabilities, and yields
``MistakesFound``: the ``top`` highest-loss images, highest first, optionally only those of
one true and/or predicted class (a cell of the confusion matrix). Every entry names its
file, so a mislabelled or broken image can be marked and left out of the next run
(``core.data.exclude``). Correctly classified images are not dropped: a low-confidence right
answer can be a high loss too (fastai's ``plot_top_losses`` does the same).
"""

from __future__ import annotations

import threading
import time
from typing import Iterator

import torch

from core.data.datasets import sample_paths
from core.errors import ConfigError
from core.events import EvalBatchEnded, EvaluationStarted, EvaluationStopped, Event, Mistake, MistakesFound
from core.inference.evaluate import EMIT_INTERVAL, Scoring, prepare_scoring

TOP_K = 5


def find_mistakes(
    ref: str,
    dataset: str | None = None,
    *,
    top: int = 20,
    true: str | None = None,
    pred: str | None = None,
    data_dir: str = "data",
    runs_dir: str = "runs",
    batch_size: int | None = None,
    device: str = "auto",
    workers: int | None = None,
    stop: threading.Event | None = None,
) -> Iterator[Event]:
    """Score ``ref`` on ``dataset`` (default: its run's validation split) and yield its ``top`` highest-loss images."""
    if top < 1:
        raise ConfigError(f"--top must be at least 1 (got {top})")
    sc = prepare_scoring(ref, dataset, data_dir=data_dir, runs_dir=runs_dir, batch_size=batch_size, device=device,
                         workers=workers)
    wanted = {name: _class_index(sc.names, value, name) for name, value in (("true", true), ("pred", pred)) if value is not None}
    paths = sample_paths(sc.data)
    if paths is None:
        raise ConfigError(f"{sc.dataset} is not a folder of image files, so its mistakes cannot be listed by file; "
                          "score an imagefolder:PATH or demo dataset (pass --dataset)")
    yield EvaluationStarted(sc.clf.name, sc.dataset, sc.split, len(sc.data), sc.batches)
    scored = yield from _score(sc, stop)
    if scored is None:
        return
    losses, labels, probs = scored
    preds = probs.argmax(1)
    keep = torch.ones_like(labels, dtype=torch.bool)
    if "true" in wanted:
        keep &= labels == wanted["true"]
    if "pred" in wanted:
        keep &= preds == wanted["pred"]
    candidates = keep.nonzero().flatten()
    order = candidates[losses[candidates].argsort(descending=True, stable=True)][:top].tolist()
    k = min(TOP_K, probs.shape[1])
    top_p, top_i = probs.topk(k, dim=1)
    mistakes = tuple(
        Mistake(paths[i], sc.names[int(labels[i])], sc.names[int(preds[i])], float(probs[i, preds[i]]), float(losses[i]), i,
                tuple((sc.names[int(c)], float(p)) for c, p in zip(top_i[i], top_p[i])))
        for i in order
    )
    yield MistakesFound(sc.clf.name, sc.dataset, sc.split, len(labels), int(candidates.numel()), tuple(sc.names), mistakes)


def _score(sc: Scoring, stop: threading.Event | None) -> Iterator[Event]:
    """Every image's loss, label and class probabilities (on the CPU), or None after a stop."""
    losses, labels, probs = [], [], []
    start = last = time.perf_counter()
    for i, (images, y) in enumerate(sc.loader, 1):
        if stop is not None and stop.is_set():
            yield EvaluationStopped(sc.clf.name, i - 1, sc.batches)
            return None
        with torch.inference_mode():
            logits = sc.logits(images)
            y = y.to(sc.device, non_blocking=True)
            losses.append(torch.nn.functional.cross_entropy(logits, y, reduction="none"))
            probs.append(logits.softmax(1))
            labels.append(y)
        now = time.perf_counter()
        if now - last >= EMIT_INTERVAL or i == sc.batches:
            last = now
            yield EvalBatchEnded(i, sc.batches, sum(len(b) for b in labels) / max(1e-9, now - start))
    return torch.cat(losses).cpu(), torch.cat(labels).cpu(), torch.cat(probs).cpu()


def _class_index(names: list[str], value: str, flag: str) -> int:
    """The index of class ``value`` (case-insensitive), or a ``ConfigError`` listing the classes."""
    for i, name in enumerate(names):
        if name.lower() == value.strip().lower():
            return i
    raise ConfigError(f"--{flag} {value!r} is not one of the classes: {', '.join(names)}")
