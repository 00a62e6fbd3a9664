"""The evaluate screen: score a run or bundle on a dataset; top-1/top-5, per class, confusion.

The model menu lists runs that have a final model (or take any bundle path or ``hf:ID``);
the dataset menu defaults to the run's own validation split. ``core.inference.evaluate.evaluate``
runs as this screen's engine job (``tui.jobs``); the result fills a per-class table, a
confusion-matrix heatmap and the most-confused class pairs. ``m`` opens the mistakes gallery
(``tui.screens.mistakes``); Enter on a heatmap cell opens it for that cell's images. Escape stops a running
evaluation: the engine's ``stop`` is set, it ends at its next batch with
``EvaluationStopped``, and the screen says how far it got.
"""

from __future__ import annotations

import threading
from typing import Any

from rich.markup import escape
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, ScrollableContainer, Vertical, VerticalGroup
from textual.widgets import Button, DataTable, Footer, ProgressBar, Static
from textual.worker import Worker, WorkerState

from core import events as ev
from core import registry
from tui.jobs import JobScreen
from tui.widgets.fields import ChoiceField, ModelPicker
from tui.widgets.heatmap import ConfusionHeatmap
from tui.widgets.nav import NavBar


class EvaluateScreen(JobScreen):
    """Pick a model and a dataset, then read its scores."""

    BINDINGS = [
        Binding("ctrl+r", "evaluate", "Evaluate"),
        # Escape, not a letter: the model and dataset boxes take typed text.
        Binding("escape", "cancel", "Cancel"),
        Binding("m", "mistakes", "Mistakes"),
    ]

    def __init__(self) -> None:
        super().__init__(id="evaluate")
        self.result: ev.EvaluationEnded | None = None
        self.stopped: ev.EvaluationStopped | None = None
        self.batches = 0  # of the running evaluation, once the engine has said

    def compose(self) -> ComposeResult:
        yield NavBar("evaluate")
        with VerticalGroup(id="eval-form"):
            yield ModelPicker(id="eval-model")
            yield ChoiceField("dataset", registry.DATASETS, value=None, blank="run's validation split", id="eval-dataset",
                              placeholders={"imagefolder:": "PATH with test/ (or val/) or class folders"})
            with Horizontal(id="eval-run-row"):
                yield ProgressBar(total=100, show_eta=False, id="eval-progress")
                yield Button("Evaluate ^r", variant="primary", compact=True, id="eval-start")
        yield Static("Pick a model and press Ctrl+R.", id="eval-summary")
        with Horizontal(id="eval-results"):
            yield DataTable(id="per-class", classes="panel", cursor_type="row", zebra_stripes=True)
            with Vertical(id="confusion-box", classes="panel"):
                with ScrollableContainer(id="confusion-scroll"):
                    yield ConfusionHeatmap(id="confusion")
                yield Static("", id="most-confused")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#eval-dataset", ChoiceField).set_blank_hint("the run's own validation split (or pick a test set)")
        self.query_one("#per-class", DataTable).add_columns("class", "accuracy", "images")
        self.query_one("#per-class").border_title = "per class"
        self.query_one("#confusion-box").border_title = "confusion (rows: true class)"
        self.reload_runs()

    def on_screen_resume(self) -> None:
        self.reload_runs()

    def reload_runs(self) -> None:
        """Refresh the model menu from the runs folder (in a thread worker: it reads every run)."""
        self.query_one("#eval-model", ModelPicker).reload(self.app.runs_dir)

    # -- running ------------------------------------------------------------------------------

    def evaluate(self, ref: str | None = None) -> None:
        """Score ``ref`` (default: the picked model) on the picked dataset."""
        picker = self.query_one("#eval-model", ModelPicker)
        if ref is not None:
            picker.choose(ref)
        model = picker.value
        if not model:
            self.notify("pick a model first: finish a run (F1) or type a bundle path / hf:ID", severity="warning")
            return
        dataset = self.query_one("#eval-dataset", ChoiceField).value
        if dataset is not None and dataset.endswith(":"):
            self.notify("type the image folder's path beside the dataset menu", severity="warning")
            return
        self.result = self.stopped = None
        self.batches = 0
        self.clear_result()
        self.query_one("#eval-summary", Static).update(f"evaluating {escape(model)} ...")
        self.query_one("#eval-progress", ProgressBar).update(total=100, progress=0)
        self.set_class(True, "-running")
        app = self.app

        def engine(stop: threading.Event) -> Any:
            return app.evaluator(model, dataset, data_dir=app.data_dir, runs_dir=app.runs_dir, batch_size=None,
                                 device="auto", stop=stop)

        self.start_job(engine, name="run_evaluation", group="evaluate")
        self.refresh_bindings()

    def apply_events(self, events: list[Any]) -> None:
        """Show evaluation progress and results."""
        bar = self.query_one("#eval-progress", ProgressBar)
        for event in events:
            match event:
                case ev.EvaluationStarted():
                    self.batches = event.batches
                    bar.update(total=event.batches, progress=0)
                    self.query_one("#eval-summary", Static).update(
                        f"evaluating {escape(event.model)} on {event.dataset} ({event.split}, {event.images} images) ..."
                    )
                case ev.EvalBatchEnded():
                    bar.update(total=event.batches, progress=event.batch)
                case ev.EvaluationEnded():
                    self.show_result(event)
                case ev.EvaluationStopped():
                    self.stopped = event
                    self.show_stopped(event.batch, event.batches)

    def show_stopped(self, batch: int, batches: int) -> None:
        """Say how far the stopped evaluation got; it has no figures."""
        done = f" after {batch} of {batches} batches" if batches else ""
        self.query_one("#eval-summary", Static).update(f"[b]stopped[/]{done}: no result. Ctrl+R evaluates again.")
        self.query_one("#eval-progress", ProgressBar).update(total=100, progress=0)

    def clear_result(self) -> None:
        """Empty the per-class table, the heatmap and the confused pairs (they belong to the last result)."""
        self.query_one("#per-class", DataTable).clear()
        self.query_one("#confusion", ConfusionHeatmap).set_matrix([], [])
        self.query_one("#most-confused", Static).update("")

    def show_result(self, result: ev.EvaluationEnded) -> None:
        """Fill the summary, the per-class table, the heatmap and the confused pairs."""
        self.result = result
        with self.app.batch_update():
            self.query_one("#eval-summary", Static).update(
                f"[b]top-1 {100 * result.top1:.2f}%[/]   top-5 {100 * result.top5:.2f}%   loss {result.loss:.4f}   "
                f"{result.images} images, {result.dataset} {result.split}"
            )
            table = self.query_one("#per-class", DataTable)
            table.clear()
            for name, acc, row in zip(result.class_names, result.per_class, result.confusion):
                table.add_row(name, f"{100 * acc:.1f}%", str(sum(row)))
            self.query_one("#confusion", ConfusionHeatmap).set_matrix(result.class_names, result.confusion)
            pairs = result.most_confused(5)
            text = "most confused: " + ("; ".join(f"{t} → {p} ({n})" for t, p, n in pairs) if pairs else "none")
            self.query_one("#most-confused", Static).update(text)
        self.query_one("#confusion", ConfusionHeatmap).focus()  # arrows pick a cell, Enter lists it, m lists all

    def job_finished(self, worker: Worker[None]) -> None:
        self.set_class(False, "-running")
        if worker.state == WorkerState.ERROR:
            self.app.worker_failed(worker)
            self.query_one("#eval-summary", Static).update(f"[b red]failed:[/] {escape(str(worker.error))}")
        elif self.stop_requested and self.result is None and self.stopped is None:
            # An engine that returned on its stop without saying so: as far as the bar got.
            bar = self.query_one("#eval-progress", ProgressBar)
            self.show_stopped(int(bar.progress), self.batches)
        self.refresh_bindings()

    # -- actions ------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel":
            return self.running and not self.stop_requested
        if action == "mistakes":
            return self.result is not None
        return True

    def open_mistakes(self, true: str | None = None, pred: str | None = None) -> None:
        """The mistakes gallery of the evaluated model on the evaluated dataset (one cell's images with ``true``/``pred``)."""
        from tui.screens.mistakes import MistakesScreen

        model = self.query_one("#eval-model", ModelPicker).value
        if self.result is None or not model:
            return
        self.app.push_screen(MistakesScreen(model, self.query_one("#eval-dataset", ChoiceField).value, true, pred))

    def action_mistakes(self) -> None:
        self.open_mistakes()

    @on(ConfusionHeatmap.CellSelected)
    def _cell_selected(self, event: ConfusionHeatmap.CellSelected) -> None:
        self.open_mistakes(event.true, event.pred)

    def action_evaluate(self) -> None:
        self.evaluate()

    def action_cancel(self) -> None:
        """Stop the running evaluation at its next batch."""
        if self.stop_job():
            self.query_one("#eval-summary", Static).update("stopping after this batch ...")
            self.refresh_bindings()

    @on(Button.Pressed, "#eval-start")
    def _start_pressed(self) -> None:
        self.evaluate()
