"""The runs screen: past runs with status and key figures, and what to do with one.

Enter on a run opens its actions: evaluate it, classify with it, export it to ONNX (``o``:
``tlwork export`` in a thread worker, parity check included), start a new run from its
settings (config.json loads into the set-up screen), or compare it with a marked run,
which draws both runs' per-epoch training and validation loss on shared scales. The list
is read with ``core.runs.store.list_runs``, which tolerates damaged and running runs; it
parses every run's metrics, so it runs in a thread worker and the rows show when it ends.
"""

from __future__ import annotations

from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label
from textual.worker import Worker, WorkerState

from core.config import RunConfig
from core.errors import is_user_error
from core.runs.store import RunSummary, list_runs, read_config, read_metrics
from tui.jobs import finished_listing
from tui.screens.dialogs import ActionsScreen
from tui.widgets.line_chart import LineChart, Series
from tui.widgets.nav import NavBar


def epoch_curves(run_dir: str) -> tuple[list[float], list[float]]:
    """Per-epoch (train loss, validation loss) from a run's metrics.jsonl."""
    epochs = [m for m in read_metrics(run_dir) if m.get("event") == "epoch_ended"]
    train = [float(m["train_loss"]) for m in epochs if isinstance(m.get("train_loss"), (int, float))]
    val = [float(m["val_loss"]) for m in epochs if isinstance(m.get("val_loss"), (int, float))]
    return train, val


def resumable(run: RunSummary | None) -> bool:
    """A run that stopped, failed or died before its final model, with a checkpoint to go on from."""
    return (
        run is not None and not run.has_bundle and run.status in ("stopped", "killed", "failed", "interrupted")
        and (Path(run.path) / "checkpoint-last.json").is_file()
    )


COLUMNS = (" ", "name", "status", "val acc", "epochs", "mode", "backbone", "dataset", "best", "model")


def _pct(value: float | None) -> str:
    return f"{100 * value:.1f}%" if value is not None else "-"


class RunsScreen(Screen[None]):
    """Browse, reuse and compare past runs."""

    BINDINGS = [
        Binding("enter", "open", "Open", show=False),
        Binding("e", "evaluate", "Evaluate"),
        Binding("c", "classify", "Classify"),
        Binding("o", "export", "Export ONNX"),
        Binding("n", "new_from", "Reuse settings"),
        Binding("u", "resume", "Resume"),
        Binding("m", "mark", "Mark"),
        Binding("x", "compare", "Compare"),
        Binding("r", "reload", "Reload"),
    ]

    def __init__(self) -> None:
        super().__init__(id="runs")
        self.runs: list[RunSummary] = []
        self.marked: str | None = None
        self.compared: tuple[str, str] | None = None
        self.listed = False  # the last ``reload`` has filled the table
        self._listing: Worker[list[RunSummary]] | None = None
        self._exporting: Worker[object] | None = None
        self.exported: object | None = None  # the last export's core.inference.export.Exported

    def compose(self) -> ComposeResult:
        yield NavBar("runs")
        yield DataTable(id="runs-table", classes="panel", cursor_type="row", zebra_stripes=True)
        with Vertical(id="compare-box"):
            yield Label("Mark a run (m), move to another, then compare (x).", id="compare-title")
            with Horizontal(id="compare-charts"):
                yield LineChart("train loss by epoch", id="compare-train")
                yield LineChart("validation loss by epoch", id="compare-val")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#runs-table", DataTable)
        table.add_columns(*COLUMNS)
        table.border_title = "runs"
        self.reload()

    def on_screen_resume(self) -> None:
        self.reload()

    def reload(self) -> None:
        """Re-read the runs folder (in a thread worker); the rows change when it is read."""
        self.listed = False
        self._listing = self.list_runs(self.app.runs_dir)

    @work(thread=True, exclusive=True, exit_on_error=False, group="list-runs")
    def list_runs(self, runs_dir: str) -> list[RunSummary]:
        """Every run's summary, off the UI thread."""
        return list_runs(runs_dir)

    @on(Worker.StateChanged)
    def _listed(self, event: Worker.StateChanged) -> None:
        runs = finished_listing(event, self._listing, self.notify)
        if runs is None:
            return
        self.show_runs(runs)
        self.listed = True

    def show_runs(self, runs: list[RunSummary]) -> None:
        """Fill the table with ``runs``, keeping the cursor on the same run."""
        table = self.query_one("#runs-table", DataTable)
        current = self.current.path if self.current else None
        self.runs = runs
        rows = [
            (self._mark(r), r.name, r.status, _pct(r.val_accuracy), f"{r.epochs_done}/{r.epochs}",
             r.mode, r.backbone, r.dataset, _pct(r.best_val_accuracy), r.model)
            for r in runs
        ]
        # Widths measured here: rows that arrive after the first paint would otherwise be drawn
        # at their headers' widths (DataTable measures auto widths only when next idle).
        table.clear(columns=True)
        for i, label in enumerate(COLUMNS):
            table.add_column(label, width=max([len(label), *(len(row[i]) for row in rows)]))
        for r, row in zip(runs, rows):
            table.add_row(*row, key=r.path)
        if not self.runs:
            table.border_subtitle = f"no runs under {self.app.runs_dir}/ yet: F1 sets one up"
        else:
            table.border_subtitle = f"{len(self.runs)} run{'s' if len(self.runs) > 1 else ''} in {self.app.runs_dir}/"
        if current is not None:
            index = next((i for i, r in enumerate(self.runs) if r.path == current), 0)
            table.move_cursor(row=index)
        self.refresh_bindings()

    def _mark(self, run: RunSummary) -> str:
        return "*" if run.path == self.marked else " "

    @property
    def current(self) -> RunSummary | None:
        """The run under the cursor."""
        table = self.query_one("#runs-table", DataTable)
        if not self.runs or table.cursor_row < 0 or table.cursor_row >= len(self.runs):
            return None
        return self.runs[table.cursor_row]

    @on(DataTable.RowHighlighted)
    def _highlighted(self) -> None:
        self.refresh_bindings()

    @on(DataTable.RowSelected)
    def _selected(self) -> None:
        self.action_open()

    # -- actions ------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        run = self.current
        if action in ("evaluate", "classify"):
            return run is not None and run.has_bundle
        if action in ("new_from", "mark", "open"):
            return run is not None
        if action == "resume":
            return resumable(run)
        if action == "export":
            return run is not None and run.has_bundle
        if action == "compare":
            return run is not None and self.marked is not None and self.marked != run.path
        return True

    def action_open(self) -> None:
        run = self.current
        if run is None:
            return
        actions = []
        if run.has_bundle:
            actions += [("evaluate", "Evaluate this run's model"), ("classify", "Classify images with it"),
                        ("export", "Export it to ONNX (parity-checked against PyTorch)")]
        if resumable(run):
            actions.append(("resume", "Resume it from its last checkpoint"))
        actions.append(("new_from", "New run from its settings"))
        if self.marked is not None and self.marked != run.path:
            actions.append(("compare", f"Compare loss curves with {Path(self.marked).name}"))
        actions.append(("mark", "Unmark" if self.marked == run.path else "Mark for comparison"))

        async def picked(action: str | None) -> None:
            if action:
                await self.run_action(action)

        self.app.push_screen(ActionsScreen(run.name, actions), picked)

    async def action_evaluate(self) -> None:
        if self.current is not None:
            await self.app.open_evaluate(self.current.path)

    async def action_classify(self) -> None:
        if self.current is not None:
            await self.app.open_classify(self.current.path)

    def action_export(self) -> None:
        run = self.current
        if run is None or not run.has_bundle:
            return
        self.notify(f"exporting {run.name} to ONNX, checking it against PyTorch on its validation images")
        self._exporting = self.export_onnx(run.path)

    @work(thread=True, exclusive=True, exit_on_error=False, group="export")
    def export_onnx(self, run_dir: str) -> object:
        """``tlwork export RUN --format onnx``, off the UI thread (model.onnx beside the bundle)."""
        from core.inference.export import export_onnx

        return export_onnx(run_dir, runs_dir=self.app.runs_dir)

    @on(Worker.StateChanged)
    def _exported(self, event: Worker.StateChanged) -> None:
        if event.worker is not self._exporting or event.state not in (WorkerState.SUCCESS, WorkerState.ERROR):
            return
        if event.state == WorkerState.ERROR:
            error = event.worker.error
            self.notify(str(error) if is_user_error(error) else f"export failed: {type(error).__name__}: {error}",
                        severity="error", timeout=15)
            return
        done = self.exported = event.worker.result
        self.notify(f"wrote {done.path}: largest logit difference {done.max_logit_diff:.2g} and top-1 agreement "
                    f"{done.top1_agreement:.0%} on {done.checked_on}", timeout=15)

    def _config(self, run: RunSummary) -> RunConfig | None:
        """The run's config.json, or None (with a notification) when it is missing or damaged."""
        config = read_config(Path(run.path))
        if config is None:
            self.notify(f"{run.name}: config.json is missing or unreadable", severity="error")
        return config

    async def action_new_from(self) -> None:
        run = self.current
        config = self._config(run) if run is not None else None
        if config is not None:
            await self.app.new_run_from(config)

    async def action_resume(self) -> None:
        run = self.current
        config = self._config(run) if run is not None and resumable(run) else None
        if run is not None and config is not None:
            await self.app.resume_run(run.path, config)

    def action_mark(self) -> None:
        run = self.current
        if run is None:
            return
        self.marked = None if self.marked == run.path else run.path
        # Only the mark column changes: no need to read the runs folder again.
        table = self.query_one("#runs-table", DataTable)
        first = table.ordered_columns[0].key
        for r in self.runs:
            table.update_cell(r.path, first, self._mark(r))
        self.refresh_bindings()

    def action_compare(self) -> None:
        run = self.current
        if run is None or self.marked is None or self.marked == run.path:
            return
        self.compare(self.marked, run.path)

    def compare(self, first: str, second: str) -> None:
        """Draw the loss curves of two runs on shared scales."""
        self.compared = (first, second)
        (train_a, val_a), (train_b, val_b) = epoch_curves(first), epoch_curves(second)
        a, b = Path(first).name, Path(second).name
        self.query_one("#compare-train", LineChart).set_series([Series("A", tuple(train_a)), Series("B", tuple(train_b))])
        self.query_one("#compare-val", LineChart).set_series([Series("A", tuple(val_a)), Series("B", tuple(val_b))])
        # The same colours as the charts' series (LineChart's DEFAULT_CSS).
        self.query_one("#compare-title", Label).update(
            Content.from_markup("[$primary-lighten-2]━ A[/] $a\n[$accent]━ B[/] $b", a=a, b=b)
        )
        self.add_class("-comparing")

    def action_reload(self) -> None:
        self.reload()

