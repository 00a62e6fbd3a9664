"""A small braille line chart for comparing a few series on one scale (loss curves of two runs).

Each cell holds a 2x4 braille dot grid, so a 40x8 chart resolves 80x32 points: enough to
see which of two runs learns faster without a plotting dependency. Series share the y-range;
x runs over each series' points (epochs), so runs of different lengths line up by epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip
from textual.widget import Widget

# Braille dot bits by (column, row) within a cell.
DOTS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))
AXIS = 7


@dataclass(frozen=True)
class Series:
    """A named run of y-values, one per x step (epoch)."""

    label: str
    values: tuple[float, ...]


def _line(x0: int, y0: int, x1: int, y1: int) -> list[tuple[int, int]]:
    """Bresenham's points from (x0, y0) to (x1, y1)."""
    points = []
    dx, dy = abs(x1 - x0), -abs(y1 - y0)
    sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
    err = dx + dy
    while True:
        points.append((x0, y0))
        if x0 == x1 and y0 == y1:
            return points
        e2 = 2 * err
        if e2 >= dy:
            err += dy
            x0 += sx
        if e2 <= dx:
            err += dx
            y0 += sy


class LineChart(Widget):
    """Up to three series drawn in braille, with the y-range on the left and a legend below.

    Keep labels short (``A``, ``B``): the legend shares one line with the x-axis note.
    """

    DEFAULT_CSS = """
    LineChart {
        height: 8;
    }
    LineChart > .line-chart--series-0 { color: $primary-lighten-2; }
    LineChart > .line-chart--series-1 { color: $accent; }
    LineChart > .line-chart--series-2 { color: $success; }
    LineChart > .line-chart--axis { color: $text-muted; }
    """

    COMPONENT_CLASSES = {"line-chart--series-0", "line-chart--series-1", "line-chart--series-2", "line-chart--axis"}

    def __init__(self, title: str = "", *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.title = title
        self.series: list[Series] = []
        self._grid: list[list[tuple[int, int]]] = []

    def set_series(self, series: Sequence[Series]) -> None:
        """Replace the plotted series."""
        self.series = [Series(s.label, tuple(v for v in s.values if math.isfinite(v))) for s in series[:3]]
        self._grid = []
        self.refresh()

    def _rasterise(self, width: int, height: int) -> list[list[tuple[int, int]]]:
        """Per cell: (dot bits, series index + 1) with the later series on top."""
        grid = [[(0, 0) for _ in range(width)] for _ in range(height)]
        values = [v for s in self.series for v in s.values]
        if not values or width < 1 or height < 1:
            return grid
        low, high = min(values), max(values)
        span = (high - low) or 1.0
        xs, ys = width * 2, height * 4
        longest = max(len(s.values) for s in self.series)
        for index, s in enumerate(self.series):
            pts = [
                (round(i * (xs - 1) / max(1, longest - 1)), round((high - v) / span * (ys - 1)))
                for i, v in enumerate(s.values)
            ]
            if len(pts) == 1:
                pts.append((min(xs - 1, pts[0][0] + 1), pts[0][1]))  # one epoch: a short dash, not a lone dot
            for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
                for x, y in _line(x0, y0, x1, y1):
                    bits, _ = grid[y // 4][x // 2]
                    grid[y // 4][x // 2] = (bits | DOTS[x % 2][y % 4], index + 1)
        return grid

    def render_line(self, y: int) -> Strip:
        width, height = self.size.width, self.size.height
        axis = self.get_component_rich_style("line-chart--axis", partial=True)
        plot_height = max(1, height - 2)
        plot_width = max(1, width - AXIS)
        if y == 0:
            return Strip([Segment(self.title[:width].ljust(width), axis + Style(bold=True))])
        if y == height - 1:
            longest = max((len(s.values) for s in self.series), default=0)
            segs = [Segment(" " * AXIS)]
            for i, s in enumerate(self.series):
                segs += [Segment("━ ", self.get_component_rich_style(f"line-chart--series-{i}", partial=True)), Segment(s.label + "  ", axis)]
            if longest:
                segs.append(Segment(f"epochs 1-{longest}" if longest > 1 else "epoch 1", axis))
            return Strip(segs).adjust_cell_length(width)
        if len(self._grid) != plot_height or (self._grid and len(self._grid[0]) != plot_width):
            self._grid = self._rasterise(plot_width, plot_height)
        row = y - 1
        values = [v for s in self.series for v in s.values]
        label = ""
        if values:
            label = f"{max(values):.3g}" if row == 0 else f"{min(values):.3g}" if row == plot_height - 1 else ""
        segments = [Segment(label[: AXIS - 1].rjust(AXIS - 1) + "│", axis)]
        if not values:
            segments.append(Segment(("no data" if row == 0 else "").ljust(plot_width), axis))
            return Strip(segments)
        for bits, owner in self._grid[row]:
            if not bits:
                segments.append(Segment(" "))
            else:
                style = self.get_component_rich_style(f"line-chart--series-{owner - 1}", partial=True)
                segments.append(Segment(chr(0x2800 + bits), style))
        return Strip(segments)

    def on_resize(self) -> None:
        self._grid = []
