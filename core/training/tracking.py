"""What every experiment tracker shares: the ``Tracker`` base, the figures' names, the picture.

A ``Tracker`` takes every engine event (``feed``), the finished run (``finished``) and the
run's end (``close``). ``guard`` runs each of its calls: the first one that fails turns the
tracker off with one warning, so a tracker never loses the run. ``Worker`` runs a tracker's
calls in order on a daemon thread (a slow server never holds up a batch, and a server that
never answers never holds up the process's exit). The figures' names are the same in
TensorBoard and MLflow: ``batch/loss`` and ``batch/lr`` per step, ``<stage>/val_accuracy``
and the like per epoch, ``val_accuracy``, ``val_loss`` and ``best_val_accuracy`` at the end.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from core import events as ev


class Tracker:
    """One tracker: ``feed`` takes every event; the first error turns it off with one warning."""

    name = ""

    def __init__(self) -> None:
        self.broken = False
        self.warnings: queue.SimpleQueue[str] = queue.SimpleQueue()

    def guard(self, what: str, call: Callable[..., Any], *args: Any) -> None:
        """``call(*args)``, unless an earlier call failed; a failure is a warning, never an error."""
        if self.broken:
            return
        try:
            call(*args)
        except Exception as exc:  # noqa: BLE001 - any tracker fault must leave the run alone
            self.broken = True
            detail = " ".join(str(exc).split())
            if len(detail) > 240:  # an HTTP client's message names the cause at its end ("Connection refused")
                detail = f"{detail[:120]} ... {detail[-110:]}"
            self.warnings.put(f"{self.name}: {what} failed ({type(exc).__name__}: {detail}); the run goes on "
                              f"without {self.name} (metrics.jsonl has every figure)")

    def feed(self, event: ev.Event) -> None:
        """Log what ``event`` says (called through ``guard``)."""

    def finished(self, event: ev.RunFinished, picture: Path | None) -> None:
        """Log the final figures, the bundle and the confusion-matrix picture (called through ``guard``)."""

    def close(self, status: str, stop: threading.Event | None, patience: float | None) -> Iterator[str]:
        """End the tracker's run as ``status`` (FINISHED, KILLED, FAILED), waiting at most ``patience``
        seconds (None: until done or ``stop``); yields lines for the run log while it waits."""
        return iter(())


class Worker:
    """Runs calls in order on one daemon thread."""

    def __init__(self, name: str) -> None:
        self.calls: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = queue.SimpleQueue()
        self.done = threading.Event()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def submit(self, call: Callable[..., Any], *args: Any) -> None:
        """Queue ``call(*args)`` after every call queued before it."""
        self.calls.put((call, args))

    def _run(self) -> None:
        while (item := self.calls.get()) is not None:
            item[0](*item[1])
        self.done.set()

    def finish(self, stop: threading.Event | None, patience: float | None, slow: float = 1.0) -> Iterator[bool]:
        """Let the queued calls finish; yields True once if it is still waiting after ``slow``
        seconds, and False at the end if it gave up (``patience`` ran out or ``stop`` was set)."""
        self.calls.put(None)
        start = time.monotonic()
        said = False
        while not self.done.wait(0.1):
            waited = time.monotonic() - start
            if (patience is not None and waited > patience) or (stop is not None and stop.is_set()):
                yield False
                return
            if waited > slow and not said:
                said = True
                yield True


def epoch_figures(event: ev.EpochEnded) -> dict[str, float]:
    """An epoch's figures under stage-tagged names (``finetune/val_accuracy``); logged at step = epoch."""
    figures = {"train_loss": event.train_loss, "train_accuracy": event.train_accuracy, "val_loss": event.val_loss,
               "val_accuracy": event.val_accuracy, "lr": event.lr, "images_per_sec": event.images_per_sec}
    return {f"{event.stage}/{name}": value for name, value in figures.items()}


def final_figures(event: ev.RunFinished) -> dict[str, float]:
    """The run's headline figures, under the same names in every run (what runs are compared by)."""
    return {"val_accuracy": event.val_accuracy, "val_loss": event.val_loss, "best_val_accuracy": event.best_val_accuracy}


def batch_steps(event: ev.BatchEnded) -> list[tuple[int, float]]:
    """(global step, loss) for each batch a ``BatchEnded`` coalesces (the last one is ``event.step``)."""
    first = event.step - len(event.losses) + 1
    return [(first + i, loss) for i, loss in enumerate(event.losses)]


def hyper_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """config.json's values as trackers take them: strings, numbers and booleans (others as JSON)."""
    return {k: v if isinstance(v, (str, int, float, bool)) else json.dumps(v) for k, v in config.items()}


def confusion_image(matrix: tuple[tuple[int, ...], ...] | list[list[int]], names: tuple[str, ...] | list[str]) -> Any:
    """A confusion-matrix heatmap as a PIL image: rows the true class, columns the predicted one,
    the shade each cell's share of its row, the count written in cells big enough to hold it.

    Drawn with Pillow, already a dependency, so a tracker needs no plotting library for one picture.
    """
    from PIL import Image, ImageDraw

    n = len(names)
    cell = max(6, min(36, 540 // max(1, n)))
    labels = [str(name)[:14] for name in names]
    margin = 8 + 7 * max((len(label) for label in labels), default=1) if cell >= 12 else 4
    top = 18
    image = Image.new("RGB", (margin + n * cell + 4, top + n * cell + 4), "white")
    draw = ImageDraw.Draw(image)
    draw.text((4, 3), "true \\ predicted", fill="black")
    for i, row in enumerate(matrix):
        total = max(1, sum(row))
        if cell >= 12:
            draw.text((4, top + i * cell + (cell - 11) // 2), labels[i], fill="black")
        for j, count in enumerate(row):
            share = count / total
            box = (margin + j * cell, top + i * cell, margin + (j + 1) * cell - 1, top + (i + 1) * cell - 1)
            draw.rectangle(box, fill=(int(255 - 225 * share), int(255 - 170 * share), 255), outline=(210, 210, 220))
            if cell >= 24 and count:
                draw.text((box[0] + 3, box[1] + (cell - 11) // 2), str(count), fill="white" if share > 0.55 else "black")
    return image
