"""A learning-rate chart: the schedule as a line on an axis from 0 to the run's peak.

Textual's ``Sparkline`` scales each series from its own minimum to its maximum and fills
the bars: a single point is a full block, a constant rate is a bar on the floor, and a
decay from 5e-4 to 4.9e-4 fills the whole height. It has no option to fix the range, so
this widget draws the rate as a thin line with 0 at the bottom and the peak rate (labelled)
at the top: a constant rate is a flat line under its value, StepLR(5, 0.1) drops to a tenth
of the height, warm-up climbs from near the floor and cosine ends on it.
"""

from __future__ import annotations

import math
from typing import Sequence

from rich.segment import Segment
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget

from tui.widgets.loss_chart import AXIS, LINE, bucket


def lr_label(value: float) -> str:
    """A rate in at most ``AXIS - 1`` characters: ``5e-4``, ``2.5e-4``, ``0``."""
    if value == 0:
        return "0"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"[: AXIS - 1]


class LrChart(Widget):
    """One point per batch, drawn as a line from 0 (bottom) to the peak rate so far (top)."""

    DEFAULT_CSS = """
    LrChart {
        height: 6;
        min-height: 2;
    }
    LrChart > .lr-chart--line {
        color: $primary-lighten-2;
        text-style: bold;
    }
    LrChart > .lr-chart--axis {
        color: $text-muted;
    }
    """

    COMPONENT_CLASSES = {"lr-chart--line", "lr-chart--axis"}

    values: reactive[tuple[float, ...]] = reactive(tuple, layout=False)

    def set_values(self, values: Sequence[float]) -> None:
        """Replace the series (negative or non-finite rates are dropped: they have no height here)."""
        self.values = tuple(v for v in values if math.isfinite(v) and v >= 0)

    def render_line(self, y: int) -> Strip:
        width, height = self.size.width, self.size.height
        plot_width = max(1, width - AXIS)
        axis = self.get_component_rich_style("lr-chart--axis", partial=True)
        if not self.values:
            text = "no data yet" if y == 0 else ""
            return Strip([Segment(" " * AXIS + text.ljust(plot_width), axis)]).adjust_cell_length(width)
        peak = max(self.values)
        label = lr_label(peak) if y == 0 else "0" if y == height - 1 else ""
        segments = [Segment(label.rjust(AXIS - 1) + "│", axis)]
        line = self.get_component_rich_style("lr-chart--line", partial=True)
        row_from_bottom = height - 1 - y
        cells = []
        steps = 3 * (height - 1)
        for value in bucket(self.values, plot_width):
            # Three marks per row (low, middle, high); the peak and 0 take the middle marks of
            # the top and bottom rows, level with their labels.
            mark = 1 + round((value / peak if peak > 0 else 0.0) * steps)
            cells.append(LINE[mark % 3] if mark // 3 == row_from_bottom else " ")
        segments.append(Segment("".join(cells), line))
        return Strip(segments).adjust_cell_length(width)

    def watch_values(self) -> None:
        self.refresh()
