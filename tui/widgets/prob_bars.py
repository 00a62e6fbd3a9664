"""Top-k predictions as labelled horizontal probability bars.

One row per class: the name, a bar whose length is the probability (eighth-block
resolution) and the percentage. The best guess is highlighted, so the answer reads at a
glance even at 80 columns.
"""

from __future__ import annotations

from typing import Sequence

from rich.console import RenderableType
from rich.text import Text
from textual.widget import Widget

EIGHTHS = " ▏▎▍▌▋▊▉█"


def bar(fraction: float, width: int) -> str:
    """A bar ``fraction`` of ``width`` cells long, to an eighth of a cell."""
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    full, part = divmod(eighths, 8)
    return ("█" * full + (EIGHTHS[part] if part else "")).ljust(width)


class ProbabilityBars(Widget):
    """``(label, probability)`` pairs, best first, drawn as bars."""

    DEFAULT_CSS = """
    ProbabilityBars {
        height: auto;
        min-height: 1;
    }
    ProbabilityBars > .probability-bars--top { color: $success; text-style: bold; }
    ProbabilityBars > .probability-bars--rest { color: $primary; }
    ProbabilityBars > .probability-bars--label { color: $text; }
    ProbabilityBars > .probability-bars--muted { color: $text-muted; }
    """

    COMPONENT_CLASSES = {"probability-bars--top", "probability-bars--rest", "probability-bars--label", "probability-bars--muted"}

    def __init__(self, *, placeholder: str = "no predictions yet", name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.placeholder = placeholder
        self.predictions: tuple[tuple[str, float], ...] = ()
        self.message = ""

    def set_predictions(self, predictions: Sequence[tuple[str, float]]) -> None:
        """Show new predictions (best first)."""
        self.predictions = tuple((str(label), float(p)) for label, p in predictions)
        self.message = ""
        self.refresh(layout=True)

    def set_message(self, message: str) -> None:
        """Show a line instead of bars (an error, or "classifying...")."""
        self.predictions = ()
        self.message = message
        self.refresh(layout=True)

    def get_content_height(self, container, viewport, width) -> int:  # type: ignore[no-untyped-def]
        return max(1, len(self.predictions))

    def render(self) -> RenderableType:
        muted = self.get_component_rich_style("probability-bars--muted", partial=True)
        if not self.predictions:
            return Text(self.message or self.placeholder, style=muted)
        width = self.content_region.width or self.size.width
        name_width = min(16, max(len(label) for label, _ in self.predictions) + 1)
        bar_width = max(4, width - name_width - 8)
        text = Text(no_wrap=True, overflow="ellipsis")
        for i, (label, p) in enumerate(self.predictions):
            style = self.get_component_rich_style("probability-bars--top" if i == 0 else "probability-bars--rest", partial=True)
            if i:
                text.append("\n")
            text.append(label[: name_width - 1].ljust(name_width), self.get_component_rich_style("probability-bars--label", partial=True))
            text.append(bar(p, bar_width), style)
            text.append(f" {100 * p:5.1f}%", style if i == 0 else muted)
        return text
