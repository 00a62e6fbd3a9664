"""The training screen's learning-rate chart, read from what it draws.

Two real tiny runs (seven epochs of three batches) through the workbench: with no scheduler
the chart is one flat line level with the peak-rate label, and with StepLR(5, 0.1) it steps
down to a line near the floor. A scripted run held at its first batch checks that a single
point is a line too, not the full block Textual's ``Sparkline`` draws for one value.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
from tui_fixtures import DEMO_CONFIG, ScriptedEngine, make_test_app, wait_for

from core.config import RunConfig
from tui.app import make_app
from tui.widgets.lr_chart import LrChart, lr_label

AXIS = 7  # the label column and its rule


def drawn(chart: LrChart) -> list[str]:
    """The chart's rows as text, top first."""
    return [strip.text for strip in chart.render_lines(chart.region.reset_offset)]


def heights(rows: list[str]) -> list[int]:
    """Per plot column, the row (counted from the bottom) its mark is in; every column has exactly one."""
    plot = [row[AXIS:] for row in rows]
    out = []
    for column in range(len(plot[0])):
        marked = [len(plot) - 1 - y for y, row in enumerate(plot) if row[column] != " "]
        assert len(marked) == 1, f"column {column}: marks in rows {marked}\n" + "\n".join(rows)
        out.append(marked[0])
    return out


async def run_to_end(config: RunConfig) -> list[str]:
    """Train ``config`` with the real engine in the workbench; the finished chart's rows."""
    app = make_app(runs_dir=config.runs_dir, cursor_blink=False)
    async with app.run_test(size=(110, 34)) as pilot:
        await app.start_run(config)
        training = app.training
        await wait_for(pilot, lambda: not training.running, timeout=240)
        assert training.state == "finished", training.outcome
        await pilot.pause()
        return drawn(training.query_one("#lr-chart", LrChart))


@pytest.mark.parametrize("scheduler", ["none", "step"])
async def test_the_lr_chart_of_a_real_run_is_flat_without_a_scheduler_and_steps_down_with_steplr(
    scheduler: str, tiny_config: Callable[..., RunConfig],
) -> None:
    rows = await run_to_end(tiny_config(epochs=7, scheduler=scheduler))  # lr 5e-4, StepLR(5, 0.1)
    top = len(rows) - 1
    assert rows[0][: AXIS - 1].strip() == lr_label(5e-4) == "5e-4" and rows[-1][: AXIS - 1].strip() == "0"
    columns = heights(rows)
    if scheduler == "none":
        assert set(columns) == {top}  # one flat line, level with the 5e-4 label
    else:
        assert columns[0] == top and columns == sorted(columns, reverse=True)
        assert len(set(columns)) == 2 and columns[-1] <= 1  # a tenth of the peak: at the floor
        assert 0.5 < columns.count(top) / len(columns) < 0.8  # five epochs of seven at the peak


async def test_the_first_batch_draws_a_line_not_a_full_block(workspace: Any) -> None:
    engine = ScriptedEngine(hold_at=1)
    app = make_test_app(engine)
    async with app.run_test(size=(110, 34)) as pilot:
        await app.start_run(DEMO_CONFIG)
        training = app.training
        await wait_for(pilot, lambda: training.last_batch is not None)
        rows = drawn(training.query_one("#lr-chart", LrChart))
        assert rows[0][: AXIS - 1].strip() == "1e-3"
        assert set(heights(rows)) == {len(rows) - 1}  # one mark per column, in the top row only
        assert "█" not in "".join(rows)
        training.request_stop()
        await wait_for(pilot, lambda: not training.running)
