"""``tlwork mistakes MODEL``: the highest-loss images of a scored split, with their files.

A thin front end over ``core.inference.mistakes.find_mistakes``. Plain aligned lines, one an
image, highest loss first (``loss  prob  true -> pred  path``); ``--json`` prints one JSON
array of entries (path, true, pred, prob, loss, index, top). The paths can go straight into
an exclusion file for ``tlwork run --exclude FILE`` (``--mark FILE`` appends them). Nothing
here imports torch at module level.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, Optional

import typer


def mistakes(
    model: str = typer.Argument(..., help="a run directory or name, a bundle (model.json) or 'last'"),
    dataset: Optional[str] = typer.Option(None, help="dataset to score (its test split); default: the run's own validation split"),
    top: int = typer.Option(20, help="how many images to list, highest loss first"),
    true: Optional[str] = typer.Option(None, "--true", metavar="CLASS", help="only images of this true class"),
    pred: Optional[str] = typer.Option(None, "--pred", metavar="CLASS", help="only images predicted as this class"),
    mark: Optional[str] = typer.Option(
        None, "--mark", metavar="FILE", help="also add the listed paths to this exclusion file (for tlwork run --exclude FILE)"
    ),
    data_dir: str = typer.Option("data", help="where CIFAR-10/100 are found"),
    batch_size: Optional[int] = typer.Option(None, help="images per batch (default: the run's)"),
    device: str = typer.Option("auto", help="auto, cuda, cuda:N, mps or cpu"),
    runs_dir: str = typer.Option("runs", help="where runs are looked up"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON array: [{path, true, pred, prob, loss, index, top}]"),
) -> None:
    """List the images a model gets most wrong (highest loss first): file, true label, prediction, probability, loss.

    Exit codes: 0 listed; 2 a bad option, an unknown class or model; 3 data unavailable.
    """
    from core.events import MistakesFound
    from core.inference.mistakes import find_mistakes
    from tui.cli import consume, fail

    if batch_size is not None and batch_size < 1:
        raise fail(f"--batch-size must be at least 1 (got {batch_size})")
    events = find_mistakes(model, dataset, top=top, true=true, pred=pred, data_dir=data_dir, runs_dir=runs_dir,
                           batch_size=batch_size, device=device)
    found = consume((e for e in events if isinstance(e, MistakesFound)), as_json=False)
    if not isinstance(found, MistakesFound):
        raise fail("scoring produced no result", 1)
    if mark is not None:
        from core.data.exclude import read_marks, write_marks

        written = write_marks(mark, read_marks(mark) | {m.path for m in found.mistakes})
        typer.echo(f"marked {len(found.mistakes)} image(s) in {written}; train without them: tlwork run --exclude {written}", err=True)
    if as_json:
        typer.echo(json.dumps([record(m) for m in found.mistakes]))
        return
    for line in lines(found):
        typer.echo(line)


def record(mistake: Any) -> dict[str, Any]:
    """One ``--json`` entry."""
    data = asdict(mistake)
    data["top"] = [{"label": label, "prob": p} for label, p in mistake.top]
    return data


def lines(found: Any) -> list[str]:
    """The plain listing: a header, then ``loss  prob  true -> pred  path`` per image."""
    filtered = f", {found.matched} match the filters" if found.matched != found.images else ""
    out = [f"{found.model} on {found.dataset} {found.split}: {found.images} images{filtered}; "
           f"the {len(found.mistakes)} highest losses:"]
    width = max((len(m.true) for m in found.mistakes), default=4)
    for m in found.mistakes:
        sign = " " if m.true == m.pred else "x"
        out.append(f"{sign} {m.loss:7.3f}  {100 * m.prob:5.1f}%  {m.true:>{width}} -> {m.pred:<{width}}  {m.path}")
    return out
