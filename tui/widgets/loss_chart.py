"""A per-batch loss chart: raw losses as block bars with an exponentially smoothed line over them.

Textual's ``Sparkline`` draws one series; a loss curve is noisy enough that people read the
trend from a smoothed line, so this widget draws both in the same cells: the raw series as
dim eighth-blocks and the smoothed series as a bright mark at its height, with the range on
the left. Every point is kept; columns average the points that fall into them. The columns'
heights are computed once per new series or size (``_raster``), not once per row.
"""

from __future__ import annotations

import math
from typing import Sequence

from rich.segment import Segment
from rich.style import Style
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget

BLOCKS = " ▁▂▃▄▅▆▇█"
LINE = "▁━▔"
AXIS = 7


def ema(values: Sequence[float], alpha: float = 0.1) -> list[float]:
    """Exponential moving average with bias correction (the first points are not dragged to 0)."""
    out: list[float] = []
    avg = 0.0
    for i, v in enumerate(values, 1):
        avg = (1 - alpha) * avg + alpha * v
        out.append(avg / (1 - (1 - alpha) ** i))
    return out


def bucket(values: Sequence[float], columns: int) -> list[float]:
    """``values`` fitted to ``columns``: averaged into buckets, or each repeated to fill."""
    n = len(values)
    if n <= columns:
        return [values[c * n // columns] for c in range(columns)]
    out = []
    for c in range(columns):
        lo, hi = c * n // columns, (c + 1) * n // columns
        chunk = values[lo:max(hi, lo + 1)]
        out.append(sum(chunk) / len(chunk))
    return out


def axis_label(value: float) -> str:
    """A number squeezed into ``AXIS - 1`` characters."""
    text = f"{value:.3g}" if abs(value) < 1000 else f"{value:.1e}"
    return text[: AXIS - 1].rjust(AXIS - 1)


class LossChart(Widget):
    """Raw per-batch losses (dim bars) and their smoothed trend (bright line)."""

    DEFAULT_CSS = """
    LossChart {
        height: 6;
        min-height: 3;
    }
    LossChart > .loss-chart--raw {
        color: $primary-darken-1;
    }
    LossChart > .loss-chart--smooth {
        color: $warning;
        text-style: bold;
    }
    LossChart > .loss-chart--axis {
        color: $text-muted;
    }
    """

    COMPONENT_CLASSES = {"loss-chart--raw", "loss-chart--smooth", "loss-chart--axis"}

    values: reactive[tuple[float, ...]] = reactive(tuple, layout=False)

    def __init__(self, *, smoothing: float = 0.1, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.smoothing = smoothing
        # Per column: (raw bar height in eighths of a row, smoothed value in rows), for one size.
        self._raster: list[tuple[int, float]] = []
        self._raster_size: tuple[int, int] | None = None
        self._labels = ("", "")  # the axis: high, low

    def set_values(self, values: Sequence[float]) -> None:
        """Replace the series (non-finite losses are dropped: a NaN has no height)."""
        self.values = tuple(v for v in values if math.isfinite(v))

    def _columns(self, plot_width: int, height: int) -> list[tuple[int, float]]:
        """The raster for this size, computed when the series or the size has changed."""
        if self._raster_size != (plot_width, height):
            values = self.values
            low, high = min(values), max(values)
            span = (high - low) or 1.0
            levels = height * 8
            raw = bucket(values, plot_width)
            smooth = bucket(ema(values, self.smoothing), plot_width)
            # Bars are never empty: the lowest point shows as one full row.
            self._raster = [
                (round((r - low) / span * (levels - 8)) + 8, (s - low) / span * (height - 1 / 3)) for r, s in zip(raw, smooth)
            ]
            self._labels = (axis_label(high), axis_label(low))
            self._raster_size = (plot_width, height)
        return self._raster

    def render_line(self, y: int) -> Strip:
        width, height = self.size.width, self.size.height
        plot_width = max(1, width - AXIS)
        values = self.values
        axis = self.get_component_rich_style("loss-chart--axis", partial=True)
        if not values:
            return Strip([Segment(" " * width)]) if y else Strip([Segment(" " * AXIS, axis), Segment("no data yet".ljust(plot_width), axis)])
        columns = self._columns(plot_width, height)
        row_from_bottom = height - 1 - y
        raw_style = self.get_component_rich_style("loss-chart--raw", partial=True)
        smooth_style = self.get_component_rich_style("loss-chart--smooth", partial=True)
        label = self._labels[0] if y == 0 else self._labels[1] if y == height - 1 else ""
        segments = [Segment(label.ljust(AXIS - 1) + "│", axis)]
        for filled, level in columns:
            cell = min(8, max(0, filled - row_from_bottom * 8))
            smooth_row = min(height - 1, int(level))
            if smooth_row == row_from_bottom:
                # The smoothed value sits in this row: a low, middle or high mark gives it three
                # steps per row, drawn over the bar (on the bar's colour where the bar covers it).
                covered = cell == 8 and raw_style.color is not None
                style = smooth_style + Style(bgcolor=raw_style.color) if covered else smooth_style
                segments.append(Segment(LINE[min(2, int((level - smooth_row) * 3))], style))
            else:
                segments.append(Segment(BLOCKS[cell], raw_style))
        pad = width - AXIS - len(columns)
        if pad > 0:
            segments.append(Segment(" " * pad))
        return Strip(segments)

    def watch_values(self) -> None:
        self._raster_size = None
        self.refresh()

    def on_resize(self) -> None:
        self._raster_size = None
