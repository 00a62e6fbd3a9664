"""``tlwork check-data DATASET``: a dataset's unusable files, odd modes, balance and leaks.

A thin front end over ``core.data.checkdata.check_dataset``. It prints plain, aligned lines
(stable when piped): a summary, per-split class counts with the imbalance ratio, every file
that cannot be used with its reason, images in modes other than RGB, exact duplicates
between the training and test splits, and warnings. ``--json`` prints the whole report as
one JSON object. Exit code 0 when every image can be read, 3 when some cannot (training
skips those; ``--strict`` makes it stop). A progress bar appears on stderr only on a
terminal. Nothing here imports torch at module level.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, Optional

import typer

from core.errors import EXIT_UNAVAILABLE

EXIT_UNREADABLE = EXIT_UNAVAILABLE  # some images cannot be read
"""Some images cannot be used (the same code as other unreadable data)."""


def check_data(
    dataset: str = typer.Argument(..., help="demo, cifar10, cifar100, imagefolder:PATH, or a folder of class folders"),
    data_dir: str = typer.Option("data", help="where CIFAR-10/100 are found"),
    exclude: Optional[str] = typer.Option(
        None, metavar="FILE", help="leave out the images this text file lists (one path per line), as tlwork run --exclude does"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the whole report as one JSON object"),
) -> None:
    """Check a dataset: unreadable, truncated, zero-byte and oversized images, odd modes, class balance, train/test duplicates.

    Exits 0 when every image can be read and 3 when some cannot.
    """
    from core.data.checkdata import check_dataset
    from core.data.exclude import read_exclude
    from tui.cli import user_errors

    with user_errors(), _progress() as progress:
        excluded = read_exclude(exclude) if exclude is not None else frozenset()
        report = check_dataset(dataset, data_dir=data_dir, progress=progress, exclude=excluded)
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
    else:
        for line in report_lines(report):
            typer.echo(line)
    if not report.ok:
        raise typer.Exit(EXIT_UNREADABLE)


def report_lines(report: Any) -> list[str]:
    """The plain-text report."""
    splits = report.splits
    total = sum(s.images for s in splits)
    parts = ", ".join(f"{s.name} {s.images}" for s in splits)
    verdict = "all images readable" if report.ok else f"{len(report.problems)} image(s) cannot be used"
    lines = [f"{report.dataset}: {total} images ({parts}), {len(splits[0].class_counts)} classes; {verdict}"]
    if report.excluded:
        lines.append(f"left out {report.excluded} image(s) listed in the --exclude file (nothing was moved or deleted)")
    for split in splits:
        counts = split.class_counts
        width = max((len(c) for c in counts), default=5)
        top = max(counts.values(), default=0) or 1
        lines.append(f"{split.name} ({split.folder}):")
        for name, n in counts.items():
            lines.append(f"  {name:<{width}} {n:>7}  {'#' * round(20 * n / top)}")
    if report.imbalance is not None:
        lines.append(f"imbalance (largest/smallest training class): {report.imbalance:.2f}")
    if report.problems:
        lines.append("cannot be used (training skips these; --strict stops on them):")
        kind_width = max(len(p.kind) for p in report.problems)
        lines += [f"  {p.kind:<{kind_width}} {p.path}: {p.reason}" for p in report.problems]
    for split in splits:
        for mode, n in sorted(split.modes.items()):
            examples = ", ".join(split.mode_examples.get(mode, []))
            lines.append(f"{split.name}: {n} image(s) in mode {mode} (converted to RGB when loaded), e.g. {examples}")
    if report.cross_duplicates:
        lines.append(f"exact duplicates between train and test ({len(report.cross_duplicates)}):")
        lines += [f"  {a} = {b}" for a, b in report.cross_duplicates]
    if report.cross_class_duplicates:
        lines.append("the same image under two training classes:")
        lines += [f"  {a} = {b}" for a, b in report.cross_class_duplicates]
    lines += [f"warning: {w}" for w in report.warnings]
    return lines


class _progress:
    """A transient rich progress bar on a terminal's stderr; a no-op callback elsewhere."""

    def __enter__(self) -> Callable[[int, int], None] | None:
        if not sys.stderr.isatty():
            self.bar = None
            return None
        from rich.console import Console
        from rich.progress import Progress

        self.bar = Progress(console=Console(stderr=True), transient=True)
        self.bar.start()
        task = self.bar.add_task("checking images", total=None)

        def update(done: int, total: int) -> None:
            if done % 64 == 0 or done == total:
                self.bar.update(task, completed=done, total=total)  # type: ignore[union-attr]

        return update

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()
