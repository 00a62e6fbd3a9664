"""``tlwork classify``: top-k labels for image files and folders, on a terminal or as data.

A thin loop over ``core.inference.classify.classify``. On a terminal each image gets its top-k labels
with probabilities and bars, and a folder gets a progress bar; piped output is one stable
line per image; ``--json`` is one object per image per line and ``--csv`` one row per image,
with the model line and errors on stderr so stdout stays data. A file that cannot be
classified is named with its reason (``tlwork: error: PATH: reason`` on stderr) while the
others are still classified, and the exit code is then ``EXIT_PARTIAL`` (5). Nothing here
imports torch or transformers at module level.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any, Optional, TextIO

import typer

from core import events as ev
from core.errors import EXIT_UNREADABLE
from core.inference.classify import DEFAULT_MODEL

EXIT_PARTIAL = EXIT_UNREADABLE
"""Some inputs could not be classified (each is named on stderr); the others were."""

BAR_WIDTH = 30


class JsonLines:
    """``{"path", "predictions": [{"label", "score"}]}`` or ``{"path", "error"}`` per line."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def handle(self, event: ev.Event) -> None:
        if isinstance(event, ev.ImageClassified):
            record: dict[str, Any] = {
                "path": event.path,
                "predictions": [{"label": label, "score": score} for label, score in event.predictions],
            }
        elif isinstance(event, ev.ImageFailed):
            record = {"path": event.path, "error": event.error}
        else:
            return
        self.out.write(json.dumps(record) + "\n")
        self.out.flush()

    def close(self) -> None:
        pass


class CsvRows:
    """A header, then ``path,label_1,score_1,...,label_k,score_k,error`` per image."""

    def __init__(self, out: TextIO) -> None:
        self.writer = csv.writer(out, lineterminator="\n")
        self.out = out
        self.k = 0

    def handle(self, event: ev.Event) -> None:
        if isinstance(event, ev.ClassificationStarted):
            self.k = event.top_k
            header = ["path"] + [f"{c}_{i}" for i in range(1, self.k + 1) for c in ("label", "score")] + ["error"]
            self.writer.writerow(header)
        elif isinstance(event, ev.ImageClassified):
            cells: list[Any] = [event.path]
            for label, score in event.predictions:
                cells += [label, repr(score)]
            cells += [""] * (2 * self.k - 2 * len(event.predictions)) + [""]
            self.writer.writerow(cells)
        elif isinstance(event, ev.ImageFailed):
            self.writer.writerow([event.path] + [""] * (2 * self.k) + [event.error])
        else:
            return
        self.out.flush()

    def close(self) -> None:
        pass


def _pct(score: float) -> str:
    return f"{100 * score:6.2f}%"


class PlainLines:
    """Stable lines for pipes and logs: ``PATH: label 93.12%, label 4.01%, ...``."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def handle(self, event: ev.Event) -> None:
        if isinstance(event, ev.ClassificationStarted):
            line = f"model: {event.model} ({event.images} image{'s' if event.images != 1 else ''}, top {event.top_k})"
        elif isinstance(event, ev.ImageClassified):
            line = f"{event.path}: " + ", ".join(f"{label} {_pct(score).strip()}" for label, score in event.predictions)
        elif isinstance(event, (ev.ClassificationEnded, ev.ClassificationStopped)):
            line = summary(event)
        else:
            return
        self.out.write(line + "\n")
        self.out.flush()

    def close(self) -> None:
        pass


class RichView:
    """Per image: the path, then each label with its probability and a bar; a progress bar for many images."""

    def __init__(self, show_progress: bool) -> None:
        from rich.console import Console

        self.console = Console(highlight=False)
        self.show_progress = show_progress
        self.progress: Any = None
        self.task: Any = None

    def _print(self, *items: Any) -> None:
        (self.progress.console if self.progress is not None else self.console).print(*items)

    def handle(self, event: ev.Event) -> None:
        from rich.bar import Bar
        from rich.table import Table
        from rich.text import Text

        if isinstance(event, ev.ClassificationStarted):
            self._print(Text.assemble(("model: ", "bold"), event.model, f"  ({event.images} images, top {event.top_k})"))
            if self.show_progress and event.images > 1:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

                self.progress = Progress(
                    TextColumn("[bold]classify"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=self.console, transient=True,
                )
                self.progress.start()
                self.task = self.progress.add_task("classify", total=event.images)
        elif isinstance(event, ev.ImageClassified):
            grid = Table.grid(padding=(0, 2))
            grid.add_column(no_wrap=True)
            grid.add_column(justify="right", no_wrap=True)
            grid.add_column(width=BAR_WIDTH)
            for label, score in event.predictions:
                grid.add_row("  " + label, _pct(score), Bar(size=1.0, begin=0.0, end=score, width=BAR_WIDTH, color="green"))
            self._print(Text(event.path, style="bold"))
            self._print(grid)
            self._advance()
        elif isinstance(event, ev.ImageFailed):
            self._print(Text(f"error: {event.error}", style="red"))
            self._advance()
        elif isinstance(event, (ev.ClassificationEnded, ev.ClassificationStopped)):
            self.close()
            self.console.print(summary(event))

    def _advance(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def summary(event: ev.ClassificationEnded | ev.ClassificationStopped) -> str:
    """``classified 12 images, 1 failed, in 0.8s`` (``stopped: classified ...`` for a stopped run)."""
    failed = f", {event.failed} failed" if event.failed else ""
    stopped = "stopped: " if isinstance(event, ev.ClassificationStopped) else ""
    return f"{stopped}classified {event.classified} image{'s' if event.classified != 1 else ''}{failed} in {event.seconds:.1f}s"


def classify(
    inputs: list[str] = typer.Argument(..., metavar="IMAGE... | DIR", help="image files and/or folders (searched recursively)"),
    model: str = typer.Option(
        DEFAULT_MODEL,
        help="a run directory or name, a bundle (model.json), 'last', a Hugging Face hub id "
        "(owner/name or hf:ID) or a local Hugging Face folder",
    ),
    top_k: int = typer.Option(5, "--top-k", "-k", help="how many labels to show per image"),
    as_json: bool = typer.Option(False, "--json", help='one object per image per line: {"path", "predictions": [{"label", "score"}]} or {"path", "error"}'),
    as_csv: bool = typer.Option(False, "--csv", help="one CSV row per image: path, label_1, score_1, ..., error"),
    batch_size: int = typer.Option(32, help="images per forward pass"),
    device: str = typer.Option("auto", help="auto, cuda, cuda:N, mps or cpu"),
    runs_dir: str = typer.Option("runs", help="where run names and 'last' are looked up"),
    workers: Optional[int] = typer.Option(None, help="image-decoding processes (default: 0 on CPU, up to 8 beside a GPU)"),
    explain: Optional[str] = typer.Option(
        None, "--explain", metavar="DIR", help="also write DIR/<image>.png per image: the image with the Grad-CAM heatmap "
        "of the predicted class over it (a tlwork run or bundle with a convolutional backbone)",
    ),
) -> None:
    """Classify images with a trained run, a bundle or a Hugging Face model; prints the top-k labels.

    Exit codes: 0 every image classified; 2 a usage error or unknown model; 3 the model's
    weights are unavailable (not cached and no network); 5 some images could not be
    classified (each is named on stderr; the others were classified).
    """
    from tui.cli import fail, user_errors

    if as_json and as_csv:
        raise fail("--json and --csv cannot be combined; pick one")
    if top_k < 1:
        raise fail(f"--top-k must be at least 1 (got {top_k})")
    if batch_size < 1:
        raise fail(f"--batch-size must be at least 1 (got {batch_size})")
    if workers is not None and workers < 0:
        raise fail(f"--workers must not be negative (got {workers})")
    from core.inference.classify import classify as run_classify

    explained = _explain(model, list(inputs), explain, runs_dir, device) if explain is not None else []
    data_out = as_json or as_csv
    view: Any
    if as_json:
        view = JsonLines(sys.stdout)
    elif as_csv:
        view = CsvRows(sys.stdout)
    elif sys.stdout.isatty():
        view = RichView(show_progress=any(Path(i).is_dir() for i in inputs) or len(inputs) > 4)
    else:
        view = PlainLines(sys.stdout)
    failed = 0
    events = run_classify(model, list(inputs), top_k=top_k, batch_size=batch_size, device=device, runs_dir=runs_dir, workers=workers)
    try:
        with user_errors(view.close):
            for event in events:
                view.handle(event)
                if isinstance(event, ev.ImageFailed):
                    failed += 1
                    if not isinstance(view, RichView):
                        typer.echo(f"tlwork: error: {event.error}", err=True)
                elif data_out and isinstance(event, ev.ClassificationStarted):
                    typer.echo(f"tlwork: model: {event.model}", err=True)
                elif data_out and isinstance(event, (ev.ClassificationEnded, ev.ClassificationStopped)):
                    typer.echo(f"tlwork: {summary(event)}", err=True)
    finally:
        view.close()
    if explain is not None:
        typer.echo(f"tlwork: wrote {len(explained)} Grad-CAM overlay(s) to {explain}", err=data_out)
    if failed:
        raise typer.Exit(EXIT_PARTIAL)


def _explain(model: str, inputs: list[str], out_dir: str, runs_dir: str, device: str) -> list[ev.ImageExplained]:
    """Write the Grad-CAM overlays first, so a model that cannot be explained fails before any output."""
    from core.inference.classify import expand_inputs, resolve_ref
    from core.inference.explain import explain
    from tui.cli import user_errors

    with user_errors():
        events = list(explain(resolve_ref(model, runs_dir), expand_inputs(inputs), out_dir, runs_dir=runs_dir, device=device))
    return [e for e in events if isinstance(e, ev.ImageExplained)]
