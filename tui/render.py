"""Headless renderers for the engine's event stream: rich on a terminal, plain lines, JSON.

``pick_renderer`` chooses: ``--json`` gives one JSON object per event per line; a terminal
gets a live rich display (batch and run progress bars with ETA, loss, lr, images/s and the
share of time spent waiting for data); anything else (nohup, CI, a pipe) gets plain, stable
lines, at most one batch line every few seconds plus one line per epoch.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Protocol, TextIO

from core import events as ev


class Renderer(Protocol):
    """Consumes events; ``close`` ends any live display."""

    def handle(self, event: ev.Event) -> None: ...

    def close(self) -> None: ...


class JsonRenderer:
    """``{"event": "batch_ended", ...}`` lines on stdout, flushed each."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def handle(self, event: ev.Event) -> None:
        self.out.write(json.dumps(ev.to_record(event)) + "\n")
        self.out.flush()

    def close(self) -> None:
        pass


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def describe(event: ev.Event) -> str | None:
    """The plain line for an event, or None for events that print nothing by themselves."""
    match event:
        case ev.RunStarted():
            return (
                f"run {event.run_dir} on {event.device} ({event.device_name}): {event.train_size} train / "
                f"{event.val_size} val images, {len(event.class_names)} classes, {event.total_epochs} epochs, "
                f"{event.trainable_params:,} of {event.total_params:,} parameters train"
            )
        case ev.StageStarted():
            return stage_line(event)
        case ev.ExtractionProgressed() if event.done >= event.total:
            return f"extracted the frozen backbone's features of {event.total} {event.split} images in {event.seconds:.1f}s"
        case ev.EpochEnded():
            return (
                f"epoch {event.epoch}/{event.total_epochs} [{event.stage}] train_loss {event.train_loss:.4f} "
                f"train_acc {_pct(event.train_accuracy)} val_loss {event.val_loss:.4f} val_acc {_pct(event.val_accuracy)} "
                + (f"ema_val_acc {_pct(event.ema_val_accuracy)} " if event.ema_val_accuracy is not None else "")
                + f"lr {event.lr:.2e} {event.images_per_sec:.0f} img/s {event.seconds:.1f}s"
            )
        case ev.CheckpointSaved() if event.kind != "epoch":
            return f"saved {event.kind} {event.path}"
        case ev.MessageLogged():
            return f"{event.level}: {event.message}"
        case ev.RunStopped() if not event.checkpoint:
            return f"stopped before the first batch ({event.reason}); nothing to resume, start the run again"
        case ev.RunStopped():
            return f"stopped at epoch {event.epoch} step {event.step} ({event.reason}); checkpoint {event.checkpoint}"
        case ev.RunFinished():
            why = f" ({event.reason})" if event.reason else ""
            return (
                f"finished {event.run_dir}{why}: val_acc {_pct(event.val_accuracy)} (the {event.kept} epoch, "
                f"{event.kept_epoch or event.epochs}, of {event.epochs}{', its EMA weights' if event.kept_weights == 'ema' else ''}) "
                f"in {event.seconds:.1f}s; model {event.bundle}"
            )
        case ev.EvaluationStarted():
            return f"evaluating {event.model} on {event.dataset} ({event.split}, {event.images} images)"
        case ev.EvaluationStopped():
            return f"stopped evaluating {event.model} after {event.batch} of {event.batches} batches; no figures"
        case ev.ClassificationStopped():
            failed = f", {event.failed} failed" if event.failed else ""
            return f"stopped classifying with {event.model} after {event.classified} image(s){failed} in {event.seconds:.1f}s"
    return None


def stage_line(event: ev.StageStarted) -> str:
    """``stage finetune: 2 epoch(s) from epoch 4, lr 0.0005, BatchNorm frozen, layer rates head 5e-04 ...``."""
    line = f"stage {event.stage}: {event.epochs} epoch(s) from epoch {event.first_epoch}, lr {event.lr:g}"
    if event.bn:
        line += f", BatchNorm {event.bn}"
    if event.lr_groups:
        line += ", layer rates " + " ".join(f"{name} {lr:.1e}" for name, lr in event.lr_groups)
    return line


def extraction_line(event: ev.ExtractionProgressed) -> str:
    """``extracting features: train 1024/4500 images, eta 0:10``."""
    return f"extracting features: {event.split} {event.done}/{event.total} images, eta {format_seconds(event.eta)}"


def batch_line(event: ev.BatchEnded) -> str:
    """``epoch 1 batch 13/13 step 13/13 loss 2.4640 lr 5.00e-04 212 img/s wait 3% eta 0:12``."""
    return (
        f"epoch {event.epoch} batch {event.batch}/{event.batches} step {event.step}/{event.total_steps} "
        f"loss {event.loss:.4f} lr {event.lr:.2e} {event.images_per_sec:.0f} img/s "
        f"wait {100 * event.data_wait:.0f}% eta {format_seconds(event.eta)}"
    )


def format_seconds(seconds: float) -> str:
    """``75`` -> ``1:15``; ``3700`` -> ``1:01:40``."""
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class PlainRenderer:
    """Stable lines for logs: events as ``describe`` says, batches every ``interval`` seconds."""

    def __init__(self, out: TextIO | None = None, interval: float = 5.0) -> None:
        self.out = out or sys.stdout
        self.interval = interval
        self._last = 0.0

    def handle(self, event: ev.Event) -> None:
        progress = isinstance(event, ev.BatchEnded) or (isinstance(event, ev.ExtractionProgressed) and event.done < event.total)
        if progress:
            now = time.monotonic()
            if now - self._last < self.interval:
                return
            self._last = now
            line: str | None = batch_line(event) if isinstance(event, ev.BatchEnded) else extraction_line(event)  # type: ignore[arg-type]
        else:
            line = describe(event)
        if line:
            self.out.write(line + "\n")
            self.out.flush()

    def close(self) -> None:
        pass


class RichRenderer:
    """A live display: batch bar, run bar with ETA, and the latest figures."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = Console()
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            transient=False,
        )
        self.run_task: Any = None
        self.batch_task: Any = None
        self.extract_tasks: dict[str, Any] = {}
        self.progress.start()

    def handle(self, event: ev.Event) -> None:
        p = self.progress
        if isinstance(event, ev.RunStarted):
            self.run_task = p.add_task("run", total=event.total_steps, completed=event.start_step, info="")
        elif isinstance(event, ev.EpochStarted):
            if self.batch_task is not None:
                p.remove_task(self.batch_task)
            self.batch_task = p.add_task(f"epoch {event.epoch}/{event.total_epochs}", total=event.batches, info=event.stage)
        elif isinstance(event, ev.BatchEnded):
            info = (
                f"loss {event.loss:.4f}  lr {event.lr:.2e}  {event.images_per_sec:.0f} img/s  "
                f"wait {100 * event.data_wait:.0f}%"
            )
            if self.batch_task is not None:
                p.update(self.batch_task, completed=event.batch, info=info)
            if self.run_task is not None:
                p.update(self.run_task, completed=event.step, info=f"ETA {format_seconds(event.eta)}")
        elif isinstance(event, ev.ExtractionProgressed):
            if event.split not in self.extract_tasks:
                self.extract_tasks[event.split] = p.add_task(f"features {event.split}", total=event.total, info="extracting")
            p.update(self.extract_tasks[event.split], completed=event.done)
        elif isinstance(event, ev.EvaluationStarted):
            self.batch_task = p.add_task("evaluate", total=event.batches, info=event.split)
        elif isinstance(event, ev.EvalBatchEnded):
            p.update(self.batch_task, completed=event.batch, info=f"{event.images_per_sec:.0f} img/s")
        line = describe(event)
        if line and not isinstance(event, ev.EvaluationStarted):
            p.console.print(line, highlight=False, markup=False)

    def close(self) -> None:
        self.progress.stop()


def pick_renderer(as_json: bool) -> Renderer:
    """JSON if asked, rich on a terminal, plain lines otherwise."""
    if as_json:
        return JsonRenderer()
    if sys.stdout.isatty():
        return RichRenderer()
    return PlainRenderer()
