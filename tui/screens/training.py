"""The training screen: a run's progress, curves, figures and log, with stop controls.

The engine's ``train`` generator runs as this screen's engine job (``tui.jobs``): its events
arrive a few times a second however fast batches come, and each batch is applied inside one
``batch_update``. ``state`` is a reactive: setting it redraws the title and the footer.
Stopping is the engine's cooperative stop: "stop now" sets the engine's ``stop``, so the run
ends at the next batch boundary with a checkpoint, and so does any shutdown of the app;
"stop after this epoch" sets ``stop_after_epoch``.
"""

from __future__ import annotations

import threading
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Label, ProgressBar, RichLog, Static
from textual.worker import Worker, WorkerState

from core import events as ev
from core.config import RunConfig
from tui.jobs import JobScreen
from tui.render import describe, format_seconds
from tui.screens.dialogs import ConfirmScreen
from tui.widgets.loss_chart import LossChart
from tui.widgets.lr_chart import LrChart
from tui.widgets.memory import MemoryPanel
from tui.widgets.nav import NavBar

MEMORY_EVERY = 1.0  # seconds between memory figures
STATES = ("running", "stopping", "finished", "stopped", "failed")  # and "idle" before the first run


class TrainingScreen(JobScreen):
    """Watch, stop and follow up a training run."""

    BINDINGS = [
        Binding("s", "stop", "Stop now"),
        Binding("e", "stop_after_epoch", "Stop after epoch"),
        Binding("v", "evaluate", "Evaluate run"),
        Binding("c", "classify", "Classify"),
        Binding("n", "new_run", "New run"),
    ]

    state: reactive[str] = reactive("idle", bindings=True, init=False)
    """idle | running | stopping | finished | stopped | failed; the title, classes and footer follow it."""
    after_epoch: reactive[bool] = reactive(False, bindings=True, init=False)
    """"Stop after this epoch" was asked for the current run."""

    def __init__(self) -> None:
        super().__init__(id="training")
        self.stop_after_epoch = threading.Event()
        self.quit_when_done = False
        self.run_dir = ""
        self.device = ""
        self.device_name = ""
        self.mode = ""
        self.stages: list[tuple[str, int]] = []
        self.stage = ""
        self.losses: list[float] = []
        self.lrs: list[float] = []
        self.last_batch: ev.BatchEnded | None = None
        self.epoch = 0
        self.total_epochs = 0
        self.outcome = ""
        self._memory_timer: Timer | None = None

    # -- layout ---------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield NavBar("training")
        yield Static("No run yet: press F1 to set one up, or open a past run from F5.", id="run-title")
        with Horizontal(id="training-top"):
            with Vertical(id="progress-bars"):
                for ident, label in (("batch", "batch"), ("epoch", "epochs"), ("run", "run")):
                    with Horizontal(classes="progress-row"):
                        yield Label(label, classes="progress-label")
                        yield ProgressBar(total=100, show_eta=False, show_percentage=False, id=f"{ident}-progress")
                        yield Label("", id=f"{ident}-count", classes="progress-count")
            with Vertical(id="run-figures"):
                yield Static("", id="stage-info")
                yield Static("", id="speed")
                yield MemoryPanel(id="memory")
        with Horizontal(id="training-charts"):
            with Vertical(id="loss-box"):
                yield Label("loss per batch (━ smoothed)", classes="chart-title", id="loss-title")
                yield LossChart(id="loss-chart")
            with Vertical(id="lr-box"):
                yield Label("learning rate", classes="chart-title", id="lr-title")
                yield LrChart(id="lr-chart")
        with Horizontal(id="training-bottom"):
            yield DataTable(id="epoch-table", classes="panel", cursor_type="row", zebra_stripes=True)
            yield RichLog(id="run-log", classes="panel", wrap=True, min_width=20, markup=False, highlight=False, max_lines=2000)
        yield Footer()

    def on_mount(self) -> None:
        self._columns(ema=False)
        self.query_one("#epoch-table").border_title = "epochs"
        self.query_one("#run-log").border_title = "log"

    def _columns(self, ema: bool) -> None:
        """The epoch table's columns (a run with --ema gets its average's accuracy beside the live one's)."""
        table = self.query_one("#epoch-table", DataTable)
        table.clear(columns=True)
        # Fixed widths: rows arrive one per epoch, and auto widths would shift as they come.
        for label, width in (("ep", 3), ("stage", 8), ("train loss", 10), ("val loss", 8), ("val acc", 7),
                             *((("ema acc", 7),) if ema else ()), ("time", 7), ("train acc", 9), ("lr", 8), ("img/s", 7)):
            table.add_column(label, width=width)

    # -- starting and stopping ----------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the run is going (running or stopping), until its end is shown."""
        return self.state in ("running", "stopping")

    def start(self, config: RunConfig, resume: str | None = None) -> None:
        """Reset the display and run ``config`` in a thread worker (or resume the run at ``resume``)."""
        self._reset()
        self.mode = config.mode
        line = f"tlwork run --resume {resume}" if resume else config.command_line()
        self.query_one("#run-log", RichLog).write(line)
        self.stop_after_epoch = threading.Event()
        self.quit_when_done = False
        self.after_epoch = False
        self.state = "running"
        after_epoch = self.stop_after_epoch

        def engine(stop: threading.Event) -> Any:
            if resume is not None:
                return self.app.resumer(resume, runs_dir=self.app.runs_dir, stop=stop, stop_after_epoch=after_epoch)
            return self.app.engine(config, stop=stop, stop_after_epoch=after_epoch)

        # A cancelled worker (the app closing) still runs the engine to its stop and checkpoint.
        self.start_job(engine, name="run_training", group="training", finish_on_cancel=True)
        self._memory_timer = self.set_interval(MEMORY_EVERY, self._show_memory)

    def request_stop(self, *, quit_after: bool = False) -> None:
        """Stop at the next batch boundary (a checkpoint is kept); optionally quit afterwards."""
        self.quit_when_done = self.quit_when_done or quit_after
        if not self.running or not self.stop_job():
            if quit_after:
                self.app.exit()
            return
        if self.state != "stopping":
            self.query_one("#run-log", RichLog).write("stopping after this batch; a checkpoint will be kept")
            self.state = "stopping"

    # -- applying events --------------------------------------------------------------------

    def apply_events(self, events: list[Any]) -> None:
        """Show a batch of engine events; widgets redraw once per batch."""
        with self.app.batch_update():
            for event in events:
                self._apply(event)
            self._show_batch()
            self._show_stage()

    def _apply(self, event: Any) -> None:
        log = self.query_one("#run-log", RichLog)
        if not isinstance(event, (ev.BatchEnded, ev.EpochEnded)):  # those two have their own display
            line = describe(event)
            if line:
                log.write(line)
        match event:
            case ev.BatchEnded():
                self.losses.extend(event.losses)
                # One rate per loss, so the two charts share their x-axis (batches).
                self.lrs.extend([event.lr] * max(1, len(event.losses)))
                self.last_batch = event
                self.stage = event.stage
            case ev.RunStarted():
                self._run_started(event)
            case ev.StageStarted():
                self.stage = event.stage
            case ev.ExtractionProgressed():
                self._extraction(event)
            case ev.EpochStarted():
                self.epoch, self.total_epochs, self.stage = event.epoch, event.total_epochs, event.stage
                self.query_one("#batch-progress", ProgressBar).update(total=event.batches, progress=0)
                self.query_one("#batch-count", Label).update(f"0/{event.batches}")
            case ev.EpochEnded():
                self._epoch_ended(event)
                ema = f", EMA val acc {100 * event.ema_val_accuracy:.2f}%" if event.ema_val_accuracy is not None else ""
                log.write(f"epoch {event.epoch}/{event.total_epochs}: val acc {100 * event.val_accuracy:.2f}%{ema}, "
                          f"val loss {event.val_loss:.4f}")
            case ev.RunStopped():
                self.outcome = describe(event) or "stopped"
                self.state = "stopped"
            case ev.RunFinished():
                why = f"ended early ({event.reason})" if event.reason else "finished"
                self.outcome = (f"{why}: val acc {100 * event.val_accuracy:.2f}% (kept the {event.kept} epoch, "
                                f"{event.kept_epoch or event.epochs}{', its EMA weights' if event.kept_weights == 'ema' else ''}); "
                                f"model {event.bundle}")
                self.state = "finished"

    def _run_started(self, event: ev.RunStarted) -> None:
        self.run_dir, self.device, self.device_name = event.run_dir, event.device, event.device_name
        self.mode = str(event.config.get("mode", self.mode))
        self._columns(ema=bool(event.config.get("ema")))
        # The engine's plan; an engine that does not say gets one stage over the whole run,
        # named by the stage events as they come.
        self.stages = list(event.stages)
        self.total_epochs = event.total_epochs
        self.query_one("#epoch-progress", ProgressBar).update(total=event.total_epochs, progress=event.start_epoch)
        self.query_one("#epoch-count", Label).update(f"{event.start_epoch}/{event.total_epochs}")
        self.query_one("#run-progress", ProgressBar).update(total=event.total_steps, progress=event.start_step)
        self._show_memory()
        self._show_title()  # the state is unchanged, but now there is a run folder and a device to name

    def _extraction(self, event: ev.ExtractionProgressed) -> None:
        """A cached-feature probe's first pass: the batch bar shows it, with its ETA."""
        self.query_one("#batch-progress", ProgressBar).update(total=max(1, event.total), progress=event.done)
        eta = "done" if event.done >= event.total else f"ETA {format_seconds(event.eta)}"
        self.query_one("#batch-count", Label).update(f"{event.done}/{event.total} {eta}")
        self.query_one("#speed", Static).update(
            f"extracting the frozen backbone's features: {event.split} images, once, before the first epoch"
        )

    def _epoch_ended(self, event: ev.EpochEnded) -> None:
        table = self.query_one("#epoch-table", DataTable)
        table.add_row(
            str(event.epoch), event.stage, f"{event.train_loss:.4f}", f"{event.val_loss:.4f}",
            f"{100 * event.val_accuracy:.1f}%",
            *((f"{100 * event.ema_val_accuracy:.1f}%",) if event.ema_val_accuracy is not None else ()),
            format_seconds(event.seconds), f"{100 * event.train_accuracy:.1f}%",
            f"{event.lr:.2e}", f"{event.images_per_sec:.0f}",
        )
        table.move_cursor(row=table.row_count - 1)
        self.epoch = event.epoch
        self.query_one("#epoch-progress", ProgressBar).update(progress=event.epoch)
        self.query_one("#epoch-count", Label).update(f"{event.epoch}/{event.total_epochs}")

    def _show_memory(self) -> None:
        if self.device:
            self.query_one("#memory", MemoryPanel).update_stats(self.app.memory(self.device))

    def _show_batch(self) -> None:
        b = self.last_batch
        self.query_one("#loss-chart", LossChart).set_values(self.losses)
        self.query_one("#lr-chart", LrChart).set_values(self.lrs)
        if b is None:
            return
        self.query_one("#batch-progress", ProgressBar).update(total=b.batches, progress=b.batch)
        self.query_one("#batch-count", Label).update(f"{b.batch}/{b.batches}")
        self.query_one("#run-progress", ProgressBar).update(total=b.total_steps, progress=b.step)
        eta = "done" if b.step >= b.total_steps else f"ETA {format_seconds(b.eta)}"
        self.query_one("#run-count", Label).update(f"{b.step}/{b.total_steps} {eta}")
        self.query_one("#loss-title", Label).update(f"loss per batch {b.loss:.4f} (━ smoothed)")
        self.query_one("#lr-title", Label).update(f"learning rate {b.lr:.2e}")
        self.query_one("#speed", Static).update(
            f"{b.images_per_sec:,.0f} img/s · wait {100 * b.data_wait:.0f}% · {format_seconds(b.elapsed)} elapsed"
        )

    def watch_state(self, state: str) -> None:
        for name in STATES:
            self.set_class(state == name, f"-{name}")
        self.query_one(NavBar).set_status({"running": "● training", "stopping": "● stopping"}.get(state, ""))
        self._show_title()
        self._show_stage()

    def watch_after_epoch(self) -> None:
        self._show_title()

    def _show_title(self) -> None:
        where = f"{self.run_dir} on {self.device_name or self.device}" if self.run_dir else "starting"
        if self.state == "running":
            text = f"training {where}"
            if self.after_epoch:
                text += f" (stopping after epoch {max(1, self.epoch)})"
        elif self.state == "stopping":
            text = f"stopping {where}: after this batch, keeping a checkpoint"
        elif self.state == "failed":
            text = f"failed: {self.outcome}"
        elif self.state in ("finished", "stopped"):
            text = self.outcome
        else:
            return
        self.query_one("#run-title", Static).update(text)

    def _show_stage(self) -> None:
        self.query_one("#stage-info", Static).update(self._stage_text())

    def _stage_text(self) -> str:
        if not self.stage:
            return ""
        names = [name for name, _ in self.stages] or [self.stage]
        parts = [f"[reverse b] {name} [/]" if name == self.stage else name for name in names]
        return "stage " + " → ".join(parts) + f" · epoch {self.epoch}/{self.total_epochs}"

    def job_finished(self, worker: Worker[None]) -> None:
        if self._memory_timer is not None:
            self._memory_timer.stop()
            self._memory_timer = None
        if worker.state == WorkerState.ERROR:
            self.app.worker_failed(worker)
            error = worker.error
            self.outcome = f"{type(error).__name__}: {error}" if error is not None else "unknown error"
            self.query_one("#run-log", RichLog).write(f"error: {self.outcome}")
            self.state = "failed"
        elif self.state in ("running", "stopping"):
            self.outcome = "stopped"  # the engine returned without a final event (e.g. interrupted)
            self.state = "stopped"
        if self.quit_when_done:
            self.app.exit()

    def _reset(self) -> None:
        self.run_dir = self.device = self.device_name = self.stage = self.outcome = ""
        self.stages, self.losses, self.lrs = [], [], []
        self.last_batch = None
        self.epoch = self.total_epochs = 0
        self.query_one("#epoch-table", DataTable).clear()
        self.query_one("#run-log", RichLog).clear()
        for ident in ("batch", "epoch", "run"):
            self.query_one(f"#{ident}-progress", ProgressBar).update(total=100, progress=0)
            self.query_one(f"#{ident}-count", Label).update("")
        self.query_one("#speed", Static).update("")
        self.query_one("#memory", MemoryPanel).update_stats({})

    # -- actions ----------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            return self.state == "running"
        if action == "stop_after_epoch":
            return self.state == "running" and not self.after_epoch
        if action in ("evaluate", "classify"):
            return self.state == "finished"
        if action == "new_run":
            return not self.running
        return True

    def action_stop(self) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self.request_stop()

        self.app.push_screen(
            ConfirmScreen("Stop the run now?", "It stops after the current batch and keeps a checkpoint you can resume from.", yes="Stop"),
            answered,
        )

    def action_stop_after_epoch(self) -> None:
        self.stop_after_epoch.set()
        self.query_one("#run-log", RichLog).write(f"will stop after epoch {max(1, self.epoch)} and keep its checkpoint")
        self.after_epoch = True

    async def action_evaluate(self) -> None:
        await self.app.open_evaluate(self.run_dir)

    async def action_classify(self) -> None:
        await self.app.open_classify(self.run_dir)

    async def action_new_run(self) -> None:
        await self.app.switch_mode("setup")
