"""``resume(ref)``: continue a stopped or killed run from its last checkpoint, exactly where it was.

``core.runs.resumption.prepare`` finds the run, refuses one that cannot be resumed and reads
its config and checkpoint; ``train`` then restores the run's state from that checkpoint
(``core.training.restore``) and continues in the run's own directory.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator

from core import events as ev
from core.runs.resumption import prepare
from core.training.train import train


def resume(
    ref: str,
    *,
    runs_dir: str | Path = "runs",
    overrides: dict[str, Any] | None = None,
    stop: threading.Event | None = None,
    stop_after_epoch: threading.Event | None = None,
    **engine: Any,
) -> Iterator[ev.Event]:
    """Continue run ``ref`` from its last checkpoint, yielding the engine's events.

    ``engine`` passes ``train``'s other keyword arguments (``hooks``, ``emit_interval``).
    """
    config, point = prepare(ref, runs_dir, overrides)
    yield from train(config, stop=stop, stop_after_epoch=stop_after_epoch, resume=point, **engine)
