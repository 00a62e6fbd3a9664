"""Experiment trackers (``--log tensorboard``, ``--log mlflow``), fed by the engine's own events.

``tracked(events, config, run_dir)`` wraps the loop's event stream, the one that feeds
metrics.jsonl: ``RunStarted`` gives the hyper-parameters, each ``BatchEnded`` the per-batch
losses and learning rate, each ``EpochEnded`` the epoch's train and validation loss and
accuracy (tagged with its stage), and ``RunFinished`` the final figures, the bundle and the
finished model's confusion matrix on its validation split (scored as ``tlwork eval RUN``
scores it). Trackers read events rather than being loop hooks: hooks never see the events
the loop yields (``BatchEnded`` comes out of a hook) and have no end-of-run moment.

A tracker never loses the run (``tracking.Tracker.guard``): its first failure is one warning
in the run log and the run goes on without it. ``RunFinished`` and ``RunStopped`` stay the
run's last events; the trackers end their own runs just before them. The classes live in
``tensorboard_tracker`` and ``mlflow_tracker``; their libraries are imported only when a run
asks for them.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Iterator

from core import events as ev
from core.config import RunConfig
from core.training.mlflow_tracker import MLflow
from core.training.tensorboard_tracker import TensorBoard
from core.training.tracking import Tracker, confusion_image

TRACKERS: dict[str, Callable[[RunConfig, Path], Tracker]] = {"tensorboard": TensorBoard, "mlflow": MLflow}
"""``core.registry.TRACKERS``' names to their classes."""

CONFUSION_PNG = "confusion-matrix.png"
"""The finished model's confusion matrix, in the run directory (the trackers log this picture)."""

AFTER_ERROR_PATIENCE_S = 10.0
"""When a run fails, how long a tracker may still take to record that (MLflow: status FAILED)."""


def tracked(events: Iterator[ev.Event], config: RunConfig, run_dir: Path,
            stop: threading.Event | None = None) -> Iterator[ev.Event]:
    """``events``, with every tracker of ``config.log`` fed from them and its warnings in the run log."""
    trackers = [TRACKERS[name](config, run_dir) for name in config.log]
    status = "FAILED"
    try:
        for event in events:
            closing = isinstance(event, (ev.RunFinished, ev.RunStopped))
            if not closing:
                yield event
            for tracker in trackers:
                tracker.guard("logging", tracker.feed, event)
            if closing:
                status = "FINISHED" if isinstance(event, ev.RunFinished) else "KILLED"
                yield from _close(trackers, event, run_dir, config, stop)
            yield from _warnings(trackers)
            if closing:
                yield event
    except (GeneratorExit, KeyboardInterrupt):
        status = "KILLED"
        raise
    finally:
        for tracker in trackers:  # those a closing event did not close already: a fault, an interrupt
            for _ in tracker.close(status, stop, AFTER_ERROR_PATIENCE_S):
                pass


def _close(trackers: list[Tracker], event: ev.Event, run_dir: Path, config: RunConfig,
           stop: threading.Event | None) -> Iterator[ev.Event]:
    """Each tracker's last words on the run, waited for (a stop request ends the wait)."""
    if isinstance(event, ev.RunFinished):
        picture, problem = confusion_picture(run_dir, config, stop)
        if problem:
            yield ev.MessageLogged("warning", problem)
        for tracker in trackers:
            tracker.guard("logging the final model", tracker.finished, event, picture)
    status = "FINISHED" if isinstance(event, ev.RunFinished) else "KILLED"
    for tracker in trackers:
        for line in tracker.close(status, stop, None):
            yield ev.MessageLogged("info", line)


def _warnings(trackers: list[Tracker]) -> Iterator[ev.MessageLogged]:
    for tracker in trackers:
        while not tracker.warnings.empty():
            yield ev.MessageLogged("warning", tracker.warnings.get())


def confusion_picture(run_dir: Path, config: RunConfig, stop: threading.Event | None) -> tuple[Path | None, str]:
    """The finished model's confusion matrix on its validation split, as a PNG in the run directory.

    Returns (the picture, or None when it could not be made or a stop came first; a warning or '').
    """
    from core.inference.evaluate import evaluate

    try:
        last = None
        for last in evaluate(str(run_dir), runs_dir=config.runs_dir, device=config.device, workers=config.workers, stop=stop):
            pass
        if not isinstance(last, ev.EvaluationEnded):
            return None, ""
        path = run_dir / CONFUSION_PNG
        confusion_image(last.confusion, last.class_names).save(path)
        return path, ""
    except Exception as exc:  # noqa: BLE001 - the run has finished; a missing picture must not undo that
        return None, f"trackers: no confusion matrix ({type(exc).__name__}: {exc}); `tlwork eval {run_dir}` shows it"
