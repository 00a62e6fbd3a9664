"""``--log tensorboard``: the run's figures as TensorBoard event files under ``RUN/tensorboard``.

Written through ``torch.utils.tensorboard.SummaryWriter`` (it needs the ``tensorboard``
package: ``pip install 'tlwork[tensorboard]'``): ``batch/loss`` at every step and
``batch/lr``, each epoch's ``<stage>/train_loss``, ``train_accuracy``, ``val_loss``,
``val_accuracy``, ``lr`` and ``images_per_sec`` at step = epoch, the hyper-parameters
(config.json, in the HParams tab), the command line, the final ``run/val_accuracy`` and
friends, and the confusion matrix as an image. ``tensorboard --logdir runs`` shows every run.
A resumed run writes on in the same folder; ``purge_step`` hides what was logged after the
checkpoint it resumed from, so the curves carry no doubled tail.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator

from core import events as ev
from core.config import RunConfig
from core.training.tracking import Tracker, batch_steps, epoch_figures, final_figures, hyper_parameters

TENSORBOARD_DIR = "tensorboard"
"""The run directory's folder of event files."""


class TensorBoard(Tracker):
    """``SummaryWriter`` event files under ``RUN/tensorboard`` (its own thread writes them)."""

    name = "tensorboard"

    def __init__(self, config: RunConfig, run_dir: Path) -> None:
        super().__init__()
        self.log_dir = run_dir / TENSORBOARD_DIR
        self.writer: Any = None

    def feed(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunStarted):
            self._open(event)
        elif self.writer is None:
            return
        elif isinstance(event, ev.BatchEnded):
            for step, loss in batch_steps(event):
                self.writer.add_scalar("batch/loss", loss, step)
            self.writer.add_scalar("batch/lr", event.lr, event.step)
        elif isinstance(event, ev.EpochEnded):
            for tag, value in epoch_figures(event).items():
                self.writer.add_scalar(tag, value, event.epoch)
            self.writer.flush()  # an epoch is worth seeing at once, not at the next 2-minute flush

    def _open(self, event: ev.RunStarted) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        resumed = event.start_step > 0
        self.writer = SummaryWriter(str(self.log_dir), purge_step=event.start_step + 1 if resumed else None)
        if resumed:  # the hyper-parameters and command line are there from the run's start
            return
        self.writer.add_text("command_line", f"`{event.command_line}`", 0)
        # add_hparams would write them as a second run in a sub-folder; these summaries keep them here.
        metrics = {f"run/{name}": 0.0 for name in ("val_accuracy", "val_loss", "best_val_accuracy")}
        for summary in hparams(hyper_parameters(event.config), metrics):
            self.writer.file_writer.add_summary(summary)

    def finished(self, event: ev.RunFinished, picture: Path | None) -> None:
        if self.writer is None:
            return
        for name, value in final_figures(event).items():
            self.writer.add_scalar(f"run/{name}", value, event.epochs)
        if picture is not None:
            import numpy as np
            from PIL import Image

            with Image.open(picture) as image:
                pixels = np.asarray(image.convert("RGB"))
            self.writer.add_image("confusion_matrix", pixels, event.epochs, dataformats="HWC")

    def close(self, status: str, stop: threading.Event | None, patience: float | None) -> Iterator[str]:
        writer, self.writer = self.writer, None
        if writer is not None:
            self.guard("closing its event file", writer.close)
        return iter(())
