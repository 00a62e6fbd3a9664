"""Device memory and load at a glance, in two lines: CUDA used/peak/total and NVML
utilisation, or the process's resident memory and CPU use when training on the CPU.

The panel only formats a dict of figures (``core.device.memory_stats`` keys); the screen
that owns it decides when to poll, so tests inject fixed figures and snapshots stay stable.
"""

from __future__ import annotations

from typing import Mapping

from rich.console import RenderableType
from rich.text import Text
from textual.widget import Widget

from tui.widgets.prob_bars import bar


def format_mib(mib: float) -> str:
    """``812`` -> ``812 MiB``; ``20480`` -> ``20.0 GiB``."""
    return f"{mib / 1024:.1f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"


def describe(stats: Mapping[str, float]) -> list[tuple[str, str, float | None]]:
    """At most two rows of (name, value, fraction for a bar or None) for the figures present."""
    rows: list[tuple[str, str, float | None]] = []
    if "used" in stats:
        total = stats.get("total") or 0.0
        scale, unit = (1024.0, "GiB") if max(total, stats["used"]) >= 1024 else (1.0, "MiB")
        value = f"{stats['used'] / scale:.1f}" + (f" / {total / scale:.1f}" if total else "") + f" {unit}"
        if "peak" in stats:
            value += f", peak {stats['peak'] / scale:.1f}"
        rows.append(("cuda", value, stats["used"] / total if total else None))
        if "util" in stats:
            rows.append(("gpu util", f"{stats['util']:.0f}%", stats["util"] / 100))
    if "rss" in stats:
        rows.append(("process", format_mib(stats["rss"]), None))
    if "cpu" in stats:
        rows.append(("cpu", f"{stats['cpu']:.0f}%", None))
    return rows


class MemoryPanel(Widget):
    """A few lines of device figures; ``update_stats`` replaces them."""

    DEFAULT_CSS = """
    MemoryPanel {
        height: auto;
        min-height: 1;
    }
    MemoryPanel > .memory-panel--name { color: $text-muted; }
    MemoryPanel > .memory-panel--bar { color: $accent; }
    """

    COMPONENT_CLASSES = {"memory-panel--name", "memory-panel--bar"}

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.stats: dict[str, float] = {}

    def update_stats(self, stats: Mapping[str, float]) -> None:
        """Show new figures."""
        self.stats = dict(stats)
        self.refresh(layout=True)

    def get_content_height(self, container, viewport, width) -> int:  # type: ignore[no-untyped-def]
        return max(1, len(describe(self.stats)))

    def render(self) -> RenderableType:
        rows = describe(self.stats)
        name_style = self.get_component_rich_style("memory-panel--name", partial=True)
        if not rows:
            return Text("memory: n/a", style=name_style)
        width = self.content_region.width or self.size.width
        text = Text(no_wrap=True, overflow="ellipsis")
        for i, (name, value, frac) in enumerate(rows):
            if i:
                text.append("\n")
            text.append(f"{name:<10}", name_style)
            text.append(value)
            room = width - 10 - len(value) - 1
            if frac is not None and room >= 4:
                text.append(" " + bar(frac, room), self.get_component_rich_style("memory-panel--bar", partial=True))
        return text
