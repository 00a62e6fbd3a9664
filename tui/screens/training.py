"""The training screen: a run's progress, curves, figures and log, with stop controls.

The engine's ``train`` generator runs in a thread worker and hands its events to an
``EventPump``, which posts a few ``EventsReady`` messages a second however fast batches
come; each message applies every buffered event inside one ``batch_update``. Stopping is
the engine's cooperative stop: "stop now" sets the worker's ``cancelled_event`` (the
engine's ``stop``), so the run ends at the next batch boundary with a checkpoint, and so
does any shutdown of the app; "stop after this epoch" sets ``stop_after_epoch``.
"""

from __future__ import annotations

import threading
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Label, ProgressBar, RichLog, Static
from textual.worker import Worker, WorkerState, get_current_worker

from core import events as ev
from core.config import RunConfig
from tui.render import describe, format_seconds
from tui.screens.dialogs import ConfirmScreen
from tui.screens.pump import EventPump, EventsReady
from tui.widgets.loss_chart import LossChart
from tui.widgets.lr_chart import LrChart
from tui.widgets.memory import MemoryPanel
from tui.widgets.nav import NavBar

POLL = 0.25
MEMORY_EVERY = 4  # polls: memory figures once a second


class TrainingScreen(Screen[None]):
    """Watch, stop and follow up a training run."""

    BINDINGS = [
        Binding("s", "stop", "Stop now"),
        Binding("e", "stop_after_epoch", "Stop after epoch"),
        Binding("v", "evaluate", "Evaluate run"),
        Binding("c", "classify", "Classify"),
        Binding("n", "new_run", "New run"),
    ]

    def __init__(self) -> None:
        super().__init__(id="training")
        self.state = "idle"  # idle | running | stopping | finished | stopped | failed
        self.worker: Worker[None] | None = None
        self.pump = EventPump(self)
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
        self._timer: Timer | None = None
        self._polls = 0

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
            yield DataTable(id="epoch-table", cursor_type="row", zebra_stripes=True)
            yield RichLog(id="run-log", wrap=True, min_width=20, markup=False, highlight=False, max_lines=2000)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#epoch-table", DataTable)
        # Fixed widths: rows arrive one per epoch, and auto widths would shift as they come.
        for label, width in (("ep", 3), ("stage", 8), ("train loss", 10), ("val loss", 8), ("val acc", 7), ("time", 7),
                             ("train acc", 9), ("lr", 8), ("img/s", 7)):
            table.add_column(label, width=width)
        self.query_one("#epoch-table").border_title = "epochs"
        self.query_one("#run-log").border_title = "log"

    # -- starting and stopping ----------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the engine's worker is alive (running or stopping)."""
        return self.state in ("running", "stopping")

    def start(self, config: RunConfig, resume: str | None = None) -> None:
        """Reset the display and run ``config`` in a thread worker (or resume the run at ``resume``)."""
        self._reset()
        self.state = "running"
        self.mode = config.mode
        line = f"tlwork run --resume {resume}" if resume else config.command_line()
        self.query_one("#run-title", Static).update(f"{'resuming' if resume else 'starting'} {line}")
        self.query_one("#run-log", RichLog).write(line)
        self.stop_after_epoch = threading.Event()
        self.quit_when_done = False
        self.pump = EventPump(self)
        self.worker = self.run_training(config, resume)
        self._timer = self.set_interval(POLL, self._poll)
        self.refresh_bindings()
        self._show_state()

    @work(thread=True, exclusive=True, exit_on_error=False, group="training", name="run_training")
    def run_training(self, config: RunConfig, resume: str | None = None) -> None:
        """Iterate the engine; its ``stop`` is this worker's ``cancelled_event``."""
        worker, pump = get_current_worker(), self.pump
        stops = {"stop": worker.cancelled_event, "stop_after_epoch": self.stop_after_epoch}
        if resume is not None:
            events = self.app.resumer(resume, runs_dir=self.app.runs_dir, **stops)
        else:
            events = self.app.engine(config, **stops)
        for event in events:
            pump.put(event)

    def request_stop(self, *, quit_after: bool = False) -> None:
        """Stop at the next batch boundary (a checkpoint is kept); optionally quit afterwards."""
        self.quit_when_done = self.quit_when_done or quit_after
        if not self.running or self.worker is None:
            if quit_after:
                self.app.exit()
            return
        self.worker.cancelled_event.set()
        if self.state != "stopping":
            self.state = "stopping"
            self.query_one("#run-log", RichLog).write("stopping after this batch; a checkpoint will be kept")
        self._show_state()
        self.refresh_bindings()

    # -- applying events --------------------------------------------------------------------

    @on(EventsReady)
    def _events_ready(self, message: EventsReady) -> None:
        if message.pump is self.pump:
            self.apply(self.pump.drain())

    def _poll(self) -> None:
        self.apply(self.pump.drain())
        self._polls += 1
        if self.device and self._polls % MEMORY_EVERY == 1:
            self.query_one("#memory", MemoryPanel).update_stats(self.app.memory(self.device))

    def apply(self, events: list[Any]) -> None:
        """Show a batch of engine events; widgets redraw once per batch."""
        if not events:
            return
        log = self.query_one("#run-log", RichLog)
        table = self.query_one("#epoch-table", DataTable)
        with self.app.batch_update():
            for event in events:
                if isinstance(event, ev.BatchEnded):
                    self.losses.extend(event.losses)
                    # One rate per loss, so the two charts share their x-axis (batches).
                    self.lrs.extend([event.lr] * max(1, len(event.losses)))
                    self.last_batch = event
                    self.stage = event.stage
                    continue
                line = describe(event)
                if line and not isinstance(event, ev.EpochEnded):
                    log.write(line)
                if isinstance(event, ev.RunStarted):
                    self._run_started(event)
                elif isinstance(event, ev.StageStarted):
                    self.stage = event.stage
                elif isinstance(event, ev.EpochStarted):
                    self.epoch, self.total_epochs, self.stage = event.epoch, event.total_epochs, event.stage
                    self.query_one("#batch-progress", ProgressBar).update(total=event.batches, progress=0)
                    self.query_one("#batch-count", Label).update(f"0/{event.batches}")
                elif isinstance(event, ev.EpochEnded):
                    table.add_row(
                        str(event.epoch), event.stage, f"{event.train_loss:.4f}", f"{event.val_loss:.4f}",
                        f"{100 * event.val_accuracy:.1f}%", format_seconds(event.seconds), f"{100 * event.train_accuracy:.1f}%",
                        f"{event.lr:.2e}", f"{event.images_per_sec:.0f}",
                    )
                    table.move_cursor(row=table.row_count - 1)
                    log.write(f"epoch {event.epoch}/{event.total_epochs}: val acc {100 * event.val_accuracy:.2f}%, val loss {event.val_loss:.4f}")
                    self.epoch = event.epoch
                    self.query_one("#epoch-progress", ProgressBar).update(progress=event.epoch)
                    self.query_one("#epoch-count", Label).update(f"{event.epoch}/{event.total_epochs}")
                elif isinstance(event, ev.RunStopped):
                    self.outcome = describe(event) or "stopped"
                    self.state = "stopped"
                elif isinstance(event, ev.RunFinished):
                    self.outcome = f"finished: val acc {100 * event.val_accuracy:.2f}% (best {100 * event.best_val_accuracy:.2f}%); model {event.bundle}"
                    self.state = "finished"
            self._show_batch()
            self._show_state()
        self.refresh_bindings()

    def _run_started(self, event: ev.RunStarted) -> None:
        self.run_dir, self.device, self.device_name = event.run_dir, event.device, event.device_name
        self.mode = str(event.config.get("mode", self.mode))
        if self.mode == "probe-then-finetune":
            self.stages = [("probe", int(event.config.get("probe_epochs", 1))), ("finetune", int(event.config.get("epochs", 1)))]
        self.total_epochs = event.total_epochs
        self.query_one("#epoch-progress", ProgressBar).update(total=event.total_epochs, progress=event.start_epoch)
        self.query_one("#epoch-count", Label).update(f"{event.start_epoch}/{event.total_epochs}")
        self.query_one("#run-progress", ProgressBar).update(total=event.total_steps, progress=event.start_step)
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

    def _show_state(self) -> None:
        title = self.query_one("#run-title", Static)
        where = f"{self.run_dir} on {self.device_name or self.device}" if self.run_dir else "starting"
        texts = {
            "running": f"training {where}",
            "stopping": f"stopping {where}: after this batch, keeping a checkpoint",
            "finished": self.outcome,
            "stopped": self.outcome,
            "failed": f"failed: {self.outcome}",
        }
        if self.state in texts:
            if self.state == "running" and self.stop_after_epoch.is_set():
                texts["running"] += f" (stopping after epoch {max(1, self.epoch)})"
            title.update(texts[self.state])
        for state in ("running", "stopping", "finished", "stopped", "failed"):
            self.set_class(self.state == state, f"-{state}")
        self.query_one("#stage-info", Static).update(self._stage_text())
        self.query_one(NavBar).set_status({"running": "● training", "stopping": "● stopping"}.get(self.state, ""))

    def _stage_text(self) -> str:
        if not self.stage:
            return ""
        names = [name for name, _ in self.stages] or [self.stage]
        parts = [f"[reverse b] {name} [/]" if name == self.stage else name for name in names]
        return "stage " + " → ".join(parts) + f" · epoch {self.epoch}/{self.total_epochs}"

    @on(Worker.StateChanged)
    def _worker_changed(self, event: Worker.StateChanged) -> None:
        if event.worker is not self.worker or event.state not in (WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED):
            return
        self.apply(self.pump.drain())
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        if event.state == WorkerState.ERROR:
            self.app.worker_failed(event.worker)
            error = event.worker.error
            self.outcome = f"{type(error).__name__}: {error}" if error is not None else "unknown error"
            self.state = "failed"
            self.query_one("#run-log", RichLog).write(f"error: {self.outcome}")
        elif self.state in ("running", "stopping"):
            self.state = "stopped"  # the engine returned without a final event (e.g. interrupted)
            self.outcome = self.outcome or "stopped"
        self._show_state()
        self.refresh_bindings()
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
            return self.state == "running" and not self.stop_after_epoch.is_set()
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
        self._show_state()
        self.refresh_bindings()

    async def action_evaluate(self) -> None:
        await self.app.open_evaluate(self.run_dir)

    async def action_classify(self) -> None:
        await self.app.open_classify(self.run_dir)

    async def action_new_run(self) -> None:
        await self.app.switch_mode("setup")
