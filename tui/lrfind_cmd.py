"""``tlwork lr-find [run options]``: the learning-rate range test, with a terminal plot and a suggestion.

It takes every ``tlwork run`` option that shapes a run (the same parameters, read from
``run``'s signature, so the two cannot drift), runs ``core.training.lrfind.lr_find`` and
prints, per stage, a plotext chart of the smoothed loss against the rate (log scale) with
the suggestion marked, the suggested rate with its rule and reason, and the ``tlwork run``
flags to use it. ``--json`` prints one JSON object instead: the suggested rate(s), and per
stage the curve points. No run directory is written. Nothing here imports torch at module level.
"""

from __future__ import annotations

import inspect
import json
import math
import sys
from typing import Any

import typer

# ``run`` options that make no sense for a range test: how a run is launched, resumed or printed.
NOT_FOR_LR_FIND = ("ctx", "resume", "as_json", "nproc_per_node", "nnodes", "node_rank", "rdzv_endpoint", "dist_timeout")


def lr_find_command(**options: Any) -> None:
    """Find a learning rate: an LR range test per stage (exponential rate, smoothed loss, stop on divergence).

    Takes the options of `tlwork run`. A linear probe tests on cached features (seconds);
    fine-tuning tests the full network; probe-then-finetune suggests both rates, the
    fine-tuning one after a short probe. Prints a plot with the suggestion marked and the
    flags to use it; --json prints the curves and suggested rates. Writes no run directory.

    Exit codes: 0 a suggestion; 2 a bad option (or a loss that diverged at once); 3 data or
    weights unavailable; 4 stopped.
    """
    from core.errors import EXIT_STOPPED
    from core.events import LrFindStopped, LrFound
    from core.training.lrfind import lr_find
    from tui.cli import SignalStop, config_values, consume, run_config

    steps, start_lr, end_lr, as_json = (options.pop(k) for k in ("steps", "start_lr", "end_lr", "as_json"))
    config = run_config(config_values(options))
    found: list[Any] = []

    def keep(events: Any) -> Any:
        for event in events:
            if isinstance(event, LrFound):
                found.append(event)
            yield event

    with SignalStop() as stopper:
        events = keep(lr_find(config, steps=steps, start_lr=start_lr, end_lr=end_lr, stop=stopper.event))
        last = consume(events if not as_json else (e for e in events if isinstance(e, (LrFound, LrFindStopped))), as_json=False)
    if isinstance(last, LrFindStopped):
        raise typer.Exit(EXIT_STOPPED)
    if as_json:
        typer.echo(json.dumps(record(found)))
        return
    for stage in found:
        typer.echo(plot(stage, color=sys.stdout.isatty()))
        typer.echo(f"{stage.stage}: suggested lr {stage.suggestion:.2g} ({stage.reason})")
    typer.echo("use it: tlwork run ... " + " ".join(f"--{flag.replace('_', '-')} {lr:.2g}" for flag, lr in flags(found).items()))


def flags(found: list[Any]) -> dict[str, float]:
    """The ``tlwork run`` flags the suggestions fill: ``lr``, and ``probe_lr`` when a probe precedes fine-tuning."""
    if len(found) > 1:
        return {"probe_lr": found[0].suggestion, "lr": found[-1].suggestion}
    return {"lr": found[-1].suggestion} if found else {}


def record(found: list[Any]) -> dict[str, Any]:
    """The ``--json`` object: the rate for ``--lr`` on top, then each stage's suggestion and curve."""
    last = found[-1]
    return {
        "suggested_lr": last.suggestion, "rule": last.rule, "reason": last.reason, "flags": flags(found),
        "stages": [
            {"stage": f.stage, "mode": f.mode, "suggested_lr": f.suggestion, "rule": f.rule, "reason": f.reason,
             "valley": f.valley, "steepest": f.steepest, "diverged": f.diverged,
             "curve": [{"lr": lr, "loss": loss} for lr, loss in zip(f.lrs, f.losses)]}
            for f in found
        ],
    }


def plot(found: Any, width: int = 78, height: int = 18, color: bool = True) -> str:
    """The stage's curve as a plotext chart, the suggestion marked (``draw``)."""
    import plotext as plt

    plt.clear_figure()
    plt.plotsize(width, height)
    plt.theme("pro" if color else "clear")
    draw(plt, [found])
    plt.title(f"{found.stage}: loss against learning rate")
    return str(plt.build())


def draw(plt: Any, found: list[Any], colours: tuple[str, ...] = ("cyan", "magenta")) -> None:
    """Each stage's smoothed loss against the rate (log scale, decade ticks) on plotext's API ``plt``
    (the plotext module, or textual-plotext's ``PlotextPlot.plt``), its suggestion marked by a
    vertical line and a point."""
    plt.xscale("log")
    lrs = [lr for f in found for lr in f.lrs]
    decades = range(math.floor(math.log10(min(lrs))), math.ceil(math.log10(max(lrs))) + 1) if lrs else range(0)
    plt.xticks([10.0**d for d in decades], [f"1e{d}" for d in decades])
    plt.xlabel("learning rate")
    for f, colour in zip(found, colours):
        plt.plot(list(f.lrs), list(f.losses), marker="braille", color=colour, label=f"{f.stage} (smoothed loss)")
        plt.vline(f.suggestion, "red")
        i = min(range(len(f.lrs)), key=lambda k: abs(math.log(f.lrs[k] / f.suggestion)))
        plt.scatter([f.lrs[i]], [f.losses[i]], marker="●", color="red", label=f"{f.rule} {f.suggestion:.2g}")


def _signature() -> inspect.Signature:
    """``run``'s options (types resolved) without ``NOT_FOR_LR_FIND``, then the range test's own."""
    from tui.cli import run

    kept = [p for name, p in inspect.signature(run, eval_str=True).parameters.items() if name not in NOT_FOR_LR_FIND]
    own = {
        "steps": (int, typer.Option(100, help="optimiser steps of the test (at most; it stops early when the loss diverges)")),
        "start_lr": (float, typer.Option(1e-7, help="the first rate of the test")),
        "end_lr": (float, typer.Option(10.0, help="the last rate of the test")),
        "as_json": (bool, typer.Option(False, "--json", help="print one JSON object: suggested_lr, flags, and per stage the curve")),
    }
    extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=t) for n, (t, d) in own.items()]
    return inspect.Signature([p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in kept] + extra)


lr_find_command.__signature__ = _signature()  # type: ignore[attr-defined]
