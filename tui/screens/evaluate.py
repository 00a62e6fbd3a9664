"""The evaluate screen: score a run or bundle on a dataset; top-1/top-5, per class, confusion.

The model menu lists runs that have a final model (or take any bundle path or ``hf:ID``);
the dataset menu defaults to the run's own validation split. ``core.inference.evaluate.evaluate``
runs in a thread worker feeding an ``EventPump``; the result fills a per-class table, a
confusion-matrix heatmap and the most-confused class pairs. Escape cancels a running
evaluation: the worker is cancelled, which sets the engine's ``stop``, and the worker closes
the engine's generator at its next event; whatever the engine yields after that is dropped.
"""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, ScrollableContainer, Vertical, VerticalGroup
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Button, DataTable, Footer, ProgressBar, Static
from textual.worker import Worker, WorkerState, get_current_worker

from core import events as ev
from core import registry
from core.runs.store import list_runs
from tui.screens.pump import EventPump, EventsReady
from tui.widgets.fields import ChoiceField, ModelPicker
from tui.widgets.heatmap import ConfusionHeatmap
from tui.widgets.nav import NavBar

POLL = 0.25  # seconds: how soon a progress tick left in the pump by a quiet engine shows


def finished_runs(runs_dir: str) -> list[tuple[str, str]]:
    """(label, run directory) for runs with a model, newest first."""
    out = []
    for r in list_runs(runs_dir):
        if r.has_bundle:
            acc = f"  {100 * r.val_accuracy:.1f}%" if r.val_accuracy is not None else ""
            out.append((f"{r.name}{acc}", r.path))
    return out


class EvaluateScreen(Screen[None]):
    """Pick a model and a dataset, then read its scores."""

    BINDINGS = [
        Binding("ctrl+r", "evaluate", "Evaluate"),
        # Escape, not a letter: the model and dataset boxes take typed text.
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self) -> None:
        super().__init__(id="evaluate")
        self.worker: Worker[None] | None = None
        self.pump = EventPump(self)
        self.result: ev.EvaluationEnded | None = None
        self.batches = 0  # of the running evaluation, once the engine has said
        self._timer: Timer | None = None

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
            yield DataTable(id="per-class", cursor_type="row", zebra_stripes=True)
            with Vertical(id="confusion-box"):
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
        """Refresh the model menu from the runs folder."""
        self.query_one("#eval-model", ModelPicker).set_runs(finished_runs(self.app.runs_dir))

    # -- running ------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.worker is not None and self.worker.state in (WorkerState.PENDING, WorkerState.RUNNING)

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
        self.result = None
        self.batches = 0
        self.pump = EventPump(self)
        self.clear_result()
        self.query_one("#eval-summary", Static).update(f"evaluating {escape(model)} ...")
        self.query_one("#eval-progress", ProgressBar).update(total=100, progress=0)
        self.set_class(True, "-running")
        self.worker = self.run_evaluation(model, dataset)
        if self._timer is None:
            self._timer = self.set_interval(POLL, self._poll)
        self.refresh_bindings()

    @work(thread=True, exclusive=True, exit_on_error=False, group="evaluate", name="run_evaluation")
    def run_evaluation(self, model: str, dataset: str | None) -> None:
        """Iterate the evaluator until it ends or this worker is cancelled (Escape, or a new evaluation)."""
        worker, pump = get_current_worker(), self.pump
        events = self.app.evaluator(
            model, dataset, data_dir=self.app.data_dir, runs_dir=self.app.runs_dir, batch_size=None,
            device="auto", stop=worker.cancelled_event,
        )
        pump.feed(events, worker.cancelled_event)

    @on(EventsReady)
    def _events_ready(self, message: EventsReady) -> None:
        if message.pump is self.pump:
            self.apply(self.pump.drain())

    def _poll(self) -> None:
        # The pump posts at most every 0.15 s, so the tick before a slow batch waits for the next
        # event; this shows it anyway.
        self.apply(self.pump.drain())

    def apply(self, events: list[Any]) -> None:
        """Show evaluation progress and results."""
        bar = self.query_one("#eval-progress", ProgressBar)
        for event in events:
            if isinstance(event, ev.EvaluationStarted):
                self.batches = event.batches
                bar.update(total=event.batches, progress=0)
                self.query_one("#eval-summary", Static).update(
                    f"evaluating {escape(event.model)} on {event.dataset} ({event.split}, {event.images} images) ..."
                )
            elif isinstance(event, ev.EvalBatchEnded):
                bar.update(total=event.batches, progress=event.batch)
            elif isinstance(event, ev.EvaluationEnded):
                self.show_result(event)

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

    @on(Worker.StateChanged)
    def _worker_changed(self, event: Worker.StateChanged) -> None:
        if event.worker is not self.worker or event.state not in (WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED):
            return
        self.set_class(False, "-running")
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        if event.state == WorkerState.CANCELLED:
            # The thread may still be inside a batch: a fresh pump leaves its last events unread.
            self.pump = EventPump(self)
            bar = self.query_one("#eval-progress", ProgressBar)
            done = f" after {int(bar.progress)} of {int(bar.total)} batches" if self.batches else ""
            self.query_one("#eval-summary", Static).update(f"[b]cancelled[/]{done}: no result. Ctrl+R evaluates again.")
            bar.update(total=100, progress=0)
            self.refresh_bindings()
            return
        self.apply(self.pump.drain())
        if event.state == WorkerState.ERROR:
            self.app.worker_failed(event.worker)
            self.query_one("#eval-summary", Static).update(f"[b red]failed:[/] {escape(str(event.worker.error))}")
        self.refresh_bindings()

    # -- actions ------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel":
            return self.running
        return True

    def action_evaluate(self) -> None:
        self.evaluate()

    def action_cancel(self) -> None:
        """Cancel the running evaluation; the engine stops at its next batch."""
        if self.worker is not None and self.running:
            self.worker.cancel()

    @on(Button.Pressed, "#eval-start")
    def _start_pressed(self) -> None:
        self.evaluate()
