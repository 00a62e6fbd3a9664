"""The classify screen: pick image files, see each one and the model's top-k guesses.

A path box (with shell-like completion: the right arrow accepts) and a directory tree of
folders and images choose what to classify; a folder means every image in it. The picked
model is a finished run's bundle, any bundle path, or ``hf:ID`` (issue #4). The engine's
``classify`` generator runs in a thread worker; each image's preview uses textual-image,
which draws real pixels on terminals that can (Sixel, Kitty) and half-blocks elsewhere.
The classifier runs as this screen's engine job (``tui.jobs``). Escape stops a running
classification as it does an evaluation: the engine's ``stop`` is set, it ends at its next
batch with ``ClassificationStopped``, and the images classified so far stay listed. ``g``
(with the file tree or the results focused) lays the Grad-CAM heatmap of the model's
prediction over the picture (``tui.screens.gradcam``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

# textual-image asks the terminal what it can draw when imported; that must happen before
# the app takes over the terminal, so it is imported with this module, not lazily. Without a
# terminal (tests, screenshots) it would pick plain characters; half-blocks are what a plain
# terminal shows, so those are pictured instead.
from textual_image.renderable import is_tty
from textual_image.widget import HalfcellImage, Image

ImagePreview = Image if is_tty else HalfcellImage

from PIL import Image as PILImage
from rich.markup import escape
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, Horizontal, Vertical
from textual.widgets import DirectoryTree, Footer, Input, Label, OptionList, Static
from textual.widgets.option_list import Option
from textual.worker import Worker, WorkerState

from core import events as ev
from tui.jobs import JobScreen
from tui.screens.gradcam import finished_overlay, start_overlay
from tui.widgets.fields import ModelPicker
from tui.widgets.nav import NavBar
from tui.widgets.paths import ImageTree, PathSuggester, expand_images, is_image
from tui.widgets.prob_bars import ProbabilityBars

TOP_K = 5


def shown_path(path: Path) -> str:
    """``path`` relative to the working folder when inside it (short, and what a user types)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class ClassifyScreen(JobScreen):
    """Classify image files with a trained model."""

    AUTO_FOCUS = "#image-path"
    BINDINGS = [
        Binding("ctrl+r", "classify", "Classify"),
        Binding("ctrl+l", "focus_path", "Path box"),
        # Escape, not a letter: the path box takes typed text.
        Binding("escape", "cancel", "Cancel"),
        Binding("g", "gradcam", "Grad-CAM"),
    ]

    def __init__(self) -> None:
        super().__init__(id="classify")
        self.results: dict[str, tuple[tuple[str, float], ...] | str] = {}
        self.requested = 0  # images in the running (or last) request
        self.stopped = False  # the last request stopped before its end
        self.shown = ""
        self.gradcam = False  # g: the Grad-CAM overlay instead of the plain picture

    def compose(self) -> ComposeResult:
        yield NavBar("classify")
        yield ModelPicker(id="classify-model")
        with Horizontal(id="image-path-row"):
            yield Label("image", classes="field-label")
            yield Input(placeholder="image file or folder (→ completes, Enter classifies)", suggester=PathSuggester(),
                        compact=True, id="image-path")
        with Horizontal(id="classify-body"):
            with Vertical(id="classify-browse"):
                yield ImageTree(self.app.browse_dir, id="image-tree", classes="panel")
                yield OptionList(id="classify-results", classes="panel")
            with Vertical(id="classify-view", classes="panel"):
                yield Static("", id="image-name")
                with Container(id="preview"):
                    yield ImagePreview(id="preview-image")
                yield ProbabilityBars(id="top-k", placeholder="pick an image and press Enter")
        yield Footer()

    def on_mount(self) -> None:
        tree = self.query_one("#image-tree", ImageTree)
        tree.root.set_label(Path(self.app.browse_dir).resolve().name or "/")  # "." would show no name
        tree.border_title = "files"
        self.query_one("#classify-results").border_title = "results"
        self.query_one("#classify-view").border_title = "prediction"
        self.reload_runs()

    def on_screen_resume(self) -> None:
        self.reload_runs()

    def reload_runs(self) -> None:
        """Refresh the model menu from the runs folder (in a thread worker: it reads every run)."""
        self.query_one("#classify-model", ModelPicker).reload(self.app.runs_dir)

    def choose_model(self, ref: str) -> None:
        """Pick ``ref`` and put the cursor in the path box."""
        self.query_one("#classify-model", ModelPicker).choose(ref)
        self.query_one("#image-path", Input).focus()

    # -- picking files --------------------------------------------------------------------------

    @on(DirectoryTree.FileSelected)
    def _file_selected(self, event: DirectoryTree.FileSelected) -> None:
        path = shown_path(event.path)
        self.query_one("#image-path", Input).value = path
        self.classify([path])

    @on(DirectoryTree.NodeHighlighted)
    def _node_highlighted(self, event: DirectoryTree.NodeHighlighted) -> None:
        entry = event.node.data
        if entry is not None and entry.path.is_file() and is_image(entry.path):
            self.show(shown_path(entry.path))

    @on(Input.Submitted, "#image-path")
    def _path_submitted(self, event: Input.Submitted) -> None:
        self.action_classify()

    def action_focus_path(self) -> None:
        self.query_one("#image-path", Input).focus()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel":
            return self.running and not self.stop_requested
        return True

    def action_cancel(self) -> None:
        """Stop the running classification at its next batch; what it classified stays."""
        if self.stop_job():
            self.query_one("#classify-results", OptionList).border_title = "results (stopping ...)"
            self.refresh_bindings()

    def action_classify(self) -> None:
        text = self.query_one("#image-path", Input).value.strip()
        if not text:
            self.notify("type an image path or pick one in the tree", severity="warning")
            return
        paths = expand_images(text)
        if not paths:
            self.notify(f"{text}: no images in this folder", severity="warning")
            return
        self.classify(paths)

    # -- classifying ---------------------------------------------------------------------------

    def classify(self, paths: list[str]) -> None:
        """Run the classifier over ``paths`` with the picked model."""
        model = self.query_one("#classify-model", ModelPicker).value
        if not model:
            self.notify("pick a model first: finish a run (F1) or type a bundle path / hf:ID", severity="warning")
            return
        self.results = {}
        self.requested = len(paths)
        self.stopped = False
        options = self.query_one("#classify-results", OptionList)
        options.clear_options()
        options.border_title = "results"
        self.set_class(len(paths) > 1, "-many")
        self.show(paths[0])
        self.query_one("#top-k", ProbabilityBars).set_message("classifying ...")
        app = self.app

        def engine(stop: threading.Event) -> Any:
            return app.classifier(model, paths, top_k=TOP_K, device="auto", runs_dir=app.runs_dir, stop=stop)

        self.start_job(engine, name="classify_images", group="classify")
        self.refresh_bindings()

    def apply_events(self, events: list[Any]) -> None:
        """Record results; show the first (or the highlighted) one."""
        options = self.query_one("#classify-results", OptionList)
        for event in events:
            match event:
                case ev.ClassificationStarted():
                    self.requested = event.images
                case ev.ImageClassified():
                    self.results[event.path] = event.predictions
                    top = event.predictions[0] if event.predictions else ("?", 0.0)
                    options.add_option(Option(f"{Path(event.path).name}  {top[0]} {100 * top[1]:.0f}%", id=event.path))
                case ev.ImageFailed():
                    self.results[event.path] = event.error
                    options.add_option(Option(f"{Path(event.path).name}  failed", id=event.path))
                case ev.ClassificationStopped():
                    self.show_stopped(event.classified + event.failed)
                case ev.ClassificationEnded() if self.stop_requested and event.classified + event.failed < self.requested:
                    self.show_stopped(event.classified + event.failed)  # an engine that closes a stop as an end
                case ev.ClassificationEnded() if event.failed:
                    self.notify(f"{event.failed} of {event.classified + event.failed} files could not be classified", severity="warning")
        if self.shown in self.results:
            self.show(self.shown)

    def show_stopped(self, done: int) -> None:
        """Say how far the stopped classification got; its results stay listed."""
        self.stopped = True
        text = f"stopped after {done} of {self.requested}"
        self.query_one("#classify-results", OptionList).border_title = f"results ({text})"
        if self.shown not in self.results:
            self.query_one("#top-k", ProbabilityBars).set_message(f"{text} images: press Enter to classify again")

    def show(self, path: str) -> None:
        """Preview ``path`` and its predictions, if any yet."""
        self.shown = path
        self.query_one("#image-name", Static).update(escape(Path(path).name))
        preview = self.query_one("#preview-image", ImagePreview)
        try:
            with PILImage.open(path) as img:
                preview.image = img.convert("RGB")
        except (OSError, ValueError):
            preview.image = None
        model = self.query_one("#classify-model", ModelPicker).value
        if self.gradcam and model and preview.image is not None:
            start_overlay(self, model, path)
        bars = self.query_one("#top-k", ProbabilityBars)
        result = self.results.get(path)
        if isinstance(result, str):
            bars.set_message(f"could not classify: {result}")
        elif result is not None:
            bars.set_predictions(result)
        elif not self.running:
            bars.set_message("press Enter to classify")

    @on(OptionList.OptionHighlighted, "#classify-results")
    def _result_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id:
            self.show(event.option.id)

    def action_gradcam(self) -> None:
        """Toggle the Grad-CAM overlay of the model's prediction on the picture."""
        self.gradcam = not self.gradcam
        if self.shown:
            self.show(self.shown)

    @on(Worker.StateChanged)
    def _overlay_done(self, event: Worker.StateChanged) -> None:
        done = finished_overlay(self, event)
        if done is not None and done[0] == self.shown and self.gradcam:
            self.query_one("#preview-image", ImagePreview).image = done[1]

    def job_finished(self, worker: Worker[None]) -> None:
        self.refresh_bindings()
        if worker.state == WorkerState.ERROR:
            self.app.worker_failed(worker)
            self.query_one("#top-k", ProbabilityBars).set_message(f"failed: {worker.error}")
        elif self.stop_requested and not self.stopped and len(self.results) < self.requested:
            self.show_stopped(len(self.results))  # an engine that returned on its stop without saying so
