"""The Textual workbench: ``make_app()`` builds it; ``tlwork`` with no command runs it.

The app is small on purpose: five screens (set-up, training, evaluate, classify, runs), one
per mode so each keeps its state, switched with F1-F5 or the command palette; the engine
functions it calls (``tui.engines``), injected by ``make_app`` so tests drive a scripted fake; quitting
or a lost connection (SIGHUP) during a run, which stops at the next batch boundary and keeps
a checkpoint before exiting; and the one handler that turns a failed worker into a message.
Each screen owns its workers and handlers (``tui/screens``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import traceback
from typing import Any, Iterable

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Input
from textual.worker import Worker

from core.config import RunConfig
from core.errors import is_user_error
from tui import engines
from tui.engines import Engine, Memory, Overlay
from tui.screens.classify import ClassifyScreen
from tui.screens.dialogs import ConfirmScreen, ErrorScreen
from tui.screens.evaluate import EvaluateScreen
from tui.screens.runs import RunsScreen
from tui.screens.setup import SetupScreen
from tui.screens.training import TrainingScreen


class Workbench(App[None]):
    """tlwork's terminal workbench."""

    CSS_PATH = "app.tcss"
    TITLE = "tlwork"
    SCREENS = {
        "setup": SetupScreen,
        "training": TrainingScreen,
        "evaluate": EvaluateScreen,
        "classify": ClassifyScreen,
        "runs": RunsScreen,
    }
    MODES = {name: name for name in SCREENS}
    BINDINGS = [
        Binding("f1", "switch_mode('setup')", "Set-up", show=False),
        Binding("f2", "switch_mode('training')", "Training", show=False),
        Binding("f3", "switch_mode('evaluate')", "Evaluate", show=False),
        Binding("f4", "switch_mode('classify')", "Classify", show=False),
        Binding("f5", "switch_mode('runs')", "Runs", show=False),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(
        self,
        *,
        engine: Engine = engines.train,
        evaluator: Engine = engines.evaluate,
        classifier: Engine = engines.classify,
        resumer: Engine = engines.resume,
        runs_dir: str = "runs",
        data_dir: str = "data",
        browse_dir: str = ".",
        memory: Memory = engines.device_memory,
        cursor_blink: bool = True,
        lr_finder: Engine = engines.lr_find,
        mistake_finder: Engine = engines.mistakes,
        overlayer: Overlay = engines.overlay,
    ) -> None:
        super().__init__()
        self.engine = engine
        self.resumer = resumer
        self.evaluator = evaluator
        self.classifier = classifier
        self.runs_dir = runs_dir
        self.data_dir = data_dir
        self.browse_dir = browse_dir
        self.memory = memory
        self.cursor_blink = cursor_blink
        self.hangup_installed = False
        self.lr_finder = lr_finder  # issue 14: the LR finder (set-up), the mistakes gallery and Grad-CAM
        self.mistake_finder = mistake_finder
        self.overlayer = overlayer

    def on_mount(self) -> None:
        if not self.cursor_blink:
            self.screen_change_signal.subscribe(self, self._freeze_cursor)
        self.switch_mode("setup")
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.hang_up)
            self.hangup_installed = True
        except (AttributeError, NotImplementedError, RuntimeError, ValueError):
            pass  # no SIGHUP (Windows) or not the main thread

    def on_unmount(self) -> None:
        if self.hangup_installed:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)

    def _freeze_cursor(self, screen: Screen[Any]) -> None:
        """Snapshots need a steady cursor: stop every text box on ``screen`` from blinking."""

        def freeze() -> None:
            for box in screen.query(Input):
                box.cursor_blink = False

        self.call_after_refresh(freeze)

    @property
    def training(self) -> TrainingScreen:
        return self.get_screen("training")  # type: ignore[return-value]

    # -- moving between screens -------------------------------------------------------------

    async def start_run(self, config: RunConfig) -> None:
        """Show the training screen and run ``config`` (one run at a time)."""
        if self.training.running:
            self.notify("a run is already going; stop it (F2, s) before starting another", severity="warning")
            return
        await self.switch_mode("training")
        self.training.start(config)

    async def resume_run(self, run_dir: str, config: RunConfig) -> None:
        """Show the training screen and continue the run in ``run_dir`` from its last checkpoint."""
        if self.training.running:
            self.notify("a run is already going; stop it (F2, s) before resuming another", severity="warning")
            return
        await self.switch_mode("training")
        self.training.start(config, resume=run_dir)

    async def open_evaluate(self, ref: str) -> None:
        """Evaluate the run or bundle at ``ref`` on its validation split."""
        await self.switch_mode("evaluate")
        screen = self.get_screen("evaluate")
        assert isinstance(screen, EvaluateScreen)
        screen.reload_runs()
        screen.evaluate(ref)

    async def open_classify(self, ref: str) -> None:
        """Classify with the run or bundle at ``ref``."""
        await self.switch_mode("classify")
        screen = self.get_screen("classify")
        assert isinstance(screen, ClassifyScreen)
        screen.reload_runs()
        screen.choose_model(ref)

    async def new_run_from(self, config: RunConfig) -> None:
        """The set-up screen, filled with ``config``."""
        await self.switch_mode("setup")
        screen = self.get_screen("setup")
        assert isinstance(screen, SetupScreen)
        screen.load_config(config)

    # -- quitting ------------------------------------------------------------------------------

    async def action_quit(self) -> None:
        training = self.training
        if not training.running:
            self.exit()
            return
        if training.quit_when_done:
            self.notify("still stopping: waiting for the current batch to finish and the checkpoint to be saved")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                training.request_stop(quit_after=True)

        await self.push_screen(
            ConfirmScreen("Quit while a run is training?", "The run stops after the current batch, keeps a checkpoint, then tlwork exits.", yes="Stop and quit"),
            answered,
        )

    def hang_up(self) -> None:
        """The terminal went away: stop any run at the next batch boundary, then exit."""
        self._silence_terminal()
        if self.training.running:
            self.training.request_stop(quit_after=True)
        else:
            self.exit()

    def _silence_terminal(self) -> None:
        """Send output nowhere once the terminal has hung up.

        Textual's writer thread dies on its first write to a closed terminal, and from then on
        every refresh blocks on its full queue, so the app would never reach its exit. Writes
        become no-ops, the terminal's output descriptors point at /dev/null, and a writer
        thread that already died is detached so closing the driver does not wait for it.
        """
        driver = self._driver
        if driver is None or self.is_headless:
            return
        driver.write = lambda data: None  # type: ignore[method-assign]
        driver.flush = lambda: None  # type: ignore[method-assign]
        with contextlib.suppress(OSError):
            null = os.open(os.devnull, os.O_WRONLY)
            for fd in (1, 2):
                os.dup2(null, fd)
        writer = getattr(driver, "_writer_thread", None)
        if writer is not None and not writer.is_alive():
            driver._writer_thread = None  # type: ignore[attr-defined]

    # -- errors and the palette -------------------------------------------------------------

    def worker_failed(self, worker: Worker[Any]) -> None:
        """The one place a failed worker is reported (``Worker.StateChanged`` does not bubble,
        so each screen's handler calls this): a user's error as a one-line notification, any
        other as a screen with its traceback."""
        error = worker.error
        if is_user_error(error):
            self.notify(str(error), title="cannot run", severity="error", timeout=12)
        elif error is not None:
            text = "".join(traceback.format_exception(error))
            self.push_screen(ErrorScreen(f"{worker.name} failed: {type(error).__name__}: {error}", text))

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        for mode, label in (("setup", "Set-up"), ("training", "Training"), ("evaluate", "Evaluate"), ("classify", "Classify"), ("runs", "Runs")):
            yield SystemCommand(f"Go to {label}", f"Show the {label.lower()} screen", lambda m=mode: self.switch_mode(m))
        setup = self.get_screen("setup")
        yield SystemCommand("Demo preset", "Set-up: linear probe of the shipped ImageNet EfficientNet-Lite0 on the demo images, 64 px", self._demo_preset)
        if isinstance(setup, SetupScreen) and setup.is_mounted and setup.config is not None:
            yield SystemCommand("Start run", setup.config.command_line(), lambda: self.start_run(setup.config))  # type: ignore[arg-type]
        training = self.training
        if training.state == "running":
            yield SystemCommand("Stop run now", "Stop after this batch and keep a checkpoint", training.action_stop)
            yield SystemCommand("Stop after this epoch", "Finish the current epoch, then stop", training.action_stop_after_epoch)
        if training.state == "finished":
            yield SystemCommand("Evaluate this run", training.run_dir, lambda: self.open_evaluate(training.run_dir))
            yield SystemCommand("Classify with this run", training.run_dir, lambda: self.open_classify(training.run_dir))
        yield from super().get_system_commands(screen)

    async def _demo_preset(self) -> None:
        await self.switch_mode("setup")
        screen = self.get_screen("setup")
        assert isinstance(screen, SetupScreen)
        screen.action_demo()


def make_app(**options: Any) -> Workbench:
    """The app, with its engine functions and folders injectable (tests pass a scripted engine).

    ``options`` are ``Workbench``'s keyword arguments, named once there.
    """
    return Workbench(**options)
