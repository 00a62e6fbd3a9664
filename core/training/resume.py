"""resume(ref): continue a stopped or killed run from its last checkpoint."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator

from core import events as ev
from core.runs.resumption import prepare


def resume(
    ref: str,
    *,
    runs_dir: str | Path = "runs",
    overrides: dict[str, Any] | None = None,
    stop: threading.Event | None = None,
    stop_after_epoch: threading.Event | None = None,
) -> Iterator[ev.Event]:
    """Continue run ``ref`` from its last checkpoint, yielding the engine's events."""
    from core.training.train import train

    config, point = prepare(ref, runs_dir, overrides)
    yield from train(config, stop=stop, stop_after_epoch=stop_after_epoch, resume=point)


