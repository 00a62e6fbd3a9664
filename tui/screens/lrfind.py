"""The LR finder dialog of the set-up screen: the range test in a worker, its curve, its suggestion.

Pushed by Set-up (Ctrl+F) with the form's configuration. ``core.training.lrfind.lr_find``
runs as this screen's engine job (``tui.jobs``); progress fills the status line, and each
stage's ``LrFound`` draws its smoothed loss against the rate (log scale) in a
textual-plotext chart with the suggestion marked by a vertical line. ``u`` closes the dialog
and puts the suggestion into the learning-rate box (for probe-then-finetune: the
fine-tuning rate, with the probe's named beside it); Escape stops the test or closes.
"""

from __future__ import annotations

import threading
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Footer, Static
from textual.worker import Worker, WorkerState
from textual_plotext import PlotextPlot

from core import events as ev
from core.config import RunConfig
from tui.jobs import JobScreen
from tui.lrfind_cmd import draw


class LrFindScreen(JobScreen):
    """Run the LR range test for a configuration and offer its suggestion."""

    BINDINGS = [
        Binding("u", "use", "Use suggestion"),
        Binding("escape", "close", "Stop / close"),
    ]

    def __init__(self, config: RunConfig) -> None:
        super().__init__(id="lr-find")
        self.config = config
        self.found: list[ev.LrFound] = []

    def compose(self) -> ComposeResult:
        with Vertical(id="lr-find-box", classes="panel"):
            yield Static("starting the range test ...", id="lr-find-status")
            yield PlotextPlot(id="lr-find-plot")
            yield Static("", id="lr-find-reason")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#lr-find-box").border_title = "LR finder"
        config, app = self.config, self.app

        def engine(stop: threading.Event) -> Any:
            return app.lr_finder(config, stop=stop)  # type: ignore[attr-defined]

        self.start_job(engine, name="find_learning_rate", group="lr-find")

    def apply_events(self, events: list[Any]) -> None:
        """Progress in the status line; each stage's curve on the chart."""
        status = self.query_one("#lr-find-status", Static)
        for event in events:
            match event:
                case ev.ExtractionProgressed():
                    status.update(f"extracting {event.split} features: {event.done}/{event.total} images")
                case ev.LrFindProgressed():
                    status.update(f"{event.stage}: step {event.step}/{event.steps}, lr {event.lr:.2g}, loss {event.loss:.3f}")
                case ev.LrFound():
                    self.found.append(event)
                    self.draw()
                case ev.LrFindStopped():
                    status.update(f"stopped during the {event.stage} test: no suggestion")
        self.refresh_bindings()

    def draw(self) -> None:
        """The curves found so far, each with its suggestion, and the summary lines."""
        plot = self.query_one("#lr-find-plot", PlotextPlot)
        plt = plot.plt
        plt.clear_figure()
        plt.title("loss against learning rate")
        draw(plt, self.found)
        plot.refresh()
        lines = [f"[b]{f.stage}[/]: suggested lr [b]{f.suggestion:.2g}[/] — {f.reason}" for f in self.found]
        self.query_one("#lr-find-reason", Static).update("\n".join(lines) + "\nu: put it in the learning-rate box")
        self.query_one("#lr-find-status", Static).update(
            "done: " + ", ".join(f"{f.stage} {f.suggestion:.2g}" for f in self.found))

    def job_finished(self, worker: Worker[None]) -> None:
        if worker.state == WorkerState.ERROR:
            self.app.worker_failed(worker)  # type: ignore[attr-defined]
            self.query_one("#lr-find-status", Static).update(f"[b red]failed:[/] {worker.error}")
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "use":
            return bool(self.found) and not self.running
        return True

    def action_use(self) -> None:
        """Close with the suggestions: {"lr": ..., and "probe_lr" for probe-then-finetune}."""
        if not self.found:
            return
        rates = {"lr": self.found[-1].suggestion}
        if len(self.found) > 1:
            rates["probe_lr"] = self.found[0].suggestion
        self.dismiss(rates)  # type: ignore[arg-type]

    def action_close(self) -> None:
        """Stop a running test (its closing event still arrives); close the dialog otherwise."""
        if self.running:
            self.stop_job()
            return
        self.dismiss(None)  # type: ignore[arg-type]
