"""The mistakes gallery: a model's highest-loss images, one at a time, marked for exclusion.

Pushed by Evaluate (``m``: the whole scored split; Enter on a confusion-matrix cell: that
cell's images). ``core.inference.mistakes.find_mistakes`` runs as this screen's engine job
(``tui.jobs``); the list on the left holds the images, highest loss first, and the pane on
the right shows the highlighted one (textual-image: real pixels where the terminal can,
half-blocks elsewhere), its true and predicted class and its top-5 bars. ``x`` marks or
unmarks an image as "exclude" (mislabelled, broken, in no class): marks are written at once
to ``exclude.txt`` beside the run (one path a line), which ``tlwork run --exclude`` reads;
nothing is moved or deleted. ``g`` lays the Grad-CAM heatmap of the prediction over the
picture (computed in a thread worker). Escape goes back.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from rich.markup import escape
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, Horizontal, Vertical
from textual.widgets import Footer, OptionList, Static
from textual.widgets.option_list import Option
from textual.worker import Worker, WorkerState

from core import events as ev
from core.data.exclude import MARKS_FILE, read_marks, write_marks
from tui.jobs import JobScreen
from tui.screens.classify import ImagePreview
from tui.screens.gradcam import finished_overlay, start_overlay
from tui.widgets.prob_bars import ProbabilityBars

TOP = 50


def marks_path(ref: str) -> Path:
    """``exclude.txt`` beside the run (the run directory, or the folder holding a bundle's model.json)."""
    path = Path(ref).expanduser()
    return (path if path.is_dir() else path.parent) / MARKS_FILE


class MistakesScreen(JobScreen):
    """The highest-loss images of a model's scored split."""

    BINDINGS = [
        Binding("x", "mark", "Exclude"),
        Binding("g", "gradcam", "Grad-CAM"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self, ref: str, dataset: str | None = None, true: str | None = None, pred: str | None = None) -> None:
        super().__init__(id="mistakes")
        self.ref, self.dataset, self.true, self.pred = ref, dataset, true, pred
        self.entries: dict[str, ev.Mistake] = {}
        self.marks_file = marks_path(ref)
        self.marks = read_marks(self.marks_file)
        self.gradcam = False
        self.shown = ""

    def compose(self) -> ComposeResult:
        with Horizontal(id="mistakes-body"):
            yield OptionList(id="mistake-list", classes="panel")
            with Vertical(id="mistake-view", classes="panel"):
                yield Static("scoring ...", id="mistake-name")
                with Container(id="mistake-preview"):
                    yield ImagePreview(id="mistake-image")
                yield ProbabilityBars(id="mistake-bars", placeholder="")
        yield Static("", id="mistake-marks")
        yield Footer()

    def on_mount(self) -> None:
        where = " · ".join(f"{k} {v}" for k, v in (("true", self.true), ("pred", self.pred)) if v)
        self.query_one("#mistake-list").border_title = f"highest loss{' · ' + where if where else ''}"
        self.query_one("#mistake-view").border_title = "image"
        self.show_marks()
        ref, dataset, true, pred, app = self.ref, self.dataset, self.true, self.pred, self.app

        def engine(stop: threading.Event) -> Any:
            return app.mistake_finder(ref, dataset, top=TOP, true=true, pred=pred, runs_dir=app.runs_dir,  # type: ignore[attr-defined]
                                      data_dir=app.data_dir, stop=stop)  # type: ignore[attr-defined]

        self.start_job(engine, name="find_mistakes", group="mistakes")

    def label(self, m: ev.Mistake) -> str:
        mark = "✗" if str(Path(m.path).resolve()) in self.marks else " "
        return f"{mark} {m.loss:5.2f} {m.true[:9]}→{m.pred[:9]}"

    def apply_events(self, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, ev.MistakesFound):
                options = self.query_one("#mistake-list", OptionList)
                options.clear_options()
                self.entries = {m.path: m for m in event.mistakes}
                options.add_options([Option(self.label(m), id=m.path) for m in event.mistakes])
                if not event.mistakes:
                    self.query_one("#mistake-name", Static).update("no images match")
                else:
                    options.highlighted = 0
                    options.focus()
                self.query_one("#mistake-list").border_subtitle = f"{len(event.mistakes)} of {event.images}"

    def show(self, path: str) -> None:
        """The image at ``path`` (or its Grad-CAM overlay), its labels and its bars."""
        self.shown = path
        m = self.entries[path]
        verdict = "right" if m.true == m.pred else "wrong"
        self.query_one("#mistake-name", Static).update(
            f"[b]{escape(Path(path).name)}[/] true [b]{escape(m.true)}[/] · predicted [b]{escape(m.pred)}[/] "
            f"{100 * m.prob:.0f}% ({verdict}) · loss {m.loss:.2f}")
        self.query_one("#mistake-bars", ProbabilityBars).set_predictions(m.top)
        if self.gradcam:
            start_overlay(self, self.ref, path)
        else:
            try:
                with PILImage.open(path) as img:
                    self.query_one("#mistake-image", ImagePreview).image = img.convert("RGB")
            except (OSError, ValueError):
                self.query_one("#mistake-image", ImagePreview).image = None

    @on(Worker.StateChanged)
    def _overlay_done(self, event: Worker.StateChanged) -> None:
        done = finished_overlay(self, event)
        if done is not None and done[0] == self.shown and self.gradcam:
            self.query_one("#mistake-image", ImagePreview).image = done[1]

    @on(OptionList.OptionHighlighted, "#mistake-list")
    def _highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id:
            self.show(event.option.id)

    def show_marks(self) -> None:
        n = len(self.marks)
        self.query_one("#mistake-marks", Static).update(
            f"{n} marked → {self.marks_file} (tlwork run --exclude FILE trains without them)"
            if n else f"x: mark to exclude → {self.marks_file} (nothing is moved or deleted)")

    def action_mark(self) -> None:
        """Mark or unmark the highlighted image; the marks file is rewritten at once."""
        options = self.query_one("#mistake-list", OptionList)
        if options.highlighted is None or not self.entries:
            return
        option = options.get_option_at_index(options.highlighted)
        key = str(Path(option.id or "").resolve())
        self.marks.symmetric_difference_update({key})
        write_marks(self.marks_file, self.marks)
        options.replace_option_prompt_at_index(options.highlighted, self.label(self.entries[option.id or ""]))
        self.show_marks()

    def action_gradcam(self) -> None:
        """Toggle the Grad-CAM overlay on the picture."""
        self.gradcam = not self.gradcam
        if self.shown:
            self.show(self.shown)

    def action_back(self) -> None:
        if self.running:
            self.stop_job()
        self.dismiss()

    def job_finished(self, worker: Worker[None]) -> None:
        if worker.state == WorkerState.ERROR:
            self.app.worker_failed(worker)  # type: ignore[attr-defined]
            self.query_one("#mistake-name", Static).update(f"[b red]failed:[/] {escape(str(worker.error))}")
