"""The Grad-CAM toggle (``g``) that Classify and Mistakes share: the overlay computed in a thread worker.

``start_overlay`` runs the app's ``overlayer(ref, path)`` (``core.inference.explain`` through
``tui.engines``: the model loads once per ref) in a thread worker of the ``gradcam`` group;
``finished_overlay`` turns that worker's state change into (path, picture) once it
succeeded, reports a failure through the app's one error handler, and ignores every other
worker, so each screen's handler is three lines.
"""

from __future__ import annotations

from typing import Any

from textual.screen import Screen
from textual.worker import Worker, WorkerState

GROUP = "gradcam"


def start_overlay(screen: Screen[Any], ref: str, path: str) -> None:
    """Compute the Grad-CAM overlay of ``path`` for model ``ref`` off the UI thread."""
    app = screen.app

    def work() -> tuple[str, Any]:
        return path, app.overlayer(ref, path)  # type: ignore[attr-defined]

    screen.run_worker(work, name="explain_image", group=GROUP, thread=True, exclusive=True, exit_on_error=False)


def finished_overlay(screen: Screen[Any], event: Worker.StateChanged) -> tuple[str, Any] | None:
    """(path, overlay) when ``event`` is a finished overlay worker; None otherwise (a failure is notified)."""
    if event.worker.group != GROUP:
        return None
    if event.state == WorkerState.ERROR:
        screen.app.worker_failed(event.worker)  # type: ignore[attr-defined]
        return None
    if event.state != WorkerState.SUCCESS or event.worker.result is None:
        return None
    return event.worker.result  # type: ignore[no-any-return]
