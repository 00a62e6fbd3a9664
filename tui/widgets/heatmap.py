"""A confusion-matrix heatmap: rows are true classes, columns predictions, shaded by row share.

Each cell's shade is the fraction of that true class's images predicted as the column's
class, so a rare class reads as clearly as a common one; the diagonal (correct) is shaded
in the success colour and mistakes in the error colour, and counts are printed when the
cells are wide enough. Long class lists overflow into the scrolling container around it.
Focused, the arrow keys move a cursor over the cells and Enter posts ``CellSelected`` (the
Evaluate screen lists that cell's images).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from rich.console import RenderableType
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.color import Color
from textual.message import Message
from textual.widget import Widget

LABEL = 11
EMPTY = "no evaluation yet"


class ConfusionHeatmap(Widget):
    """``confusion[true][pred]`` counts as a shaded grid with class names on both axes."""

    DEFAULT_CSS = """
    ConfusionHeatmap {
        width: auto;
        height: auto;
    }
    ConfusionHeatmap > .confusion-heatmap--right { color: $success; }
    ConfusionHeatmap > .confusion-heatmap--wrong { color: $error; }
    ConfusionHeatmap > .confusion-heatmap--axis { color: $text-muted; }
    """

    COMPONENT_CLASSES = {"confusion-heatmap--right", "confusion-heatmap--wrong", "confusion-heatmap--axis"}
    BINDINGS = [
        Binding("up", "move(-1, 0)", "Up", show=False),
        Binding("down", "move(1, 0)", "Down", show=False),
        Binding("left", "move(0, -1)", "Left", show=False),
        Binding("right", "move(0, 1)", "Right", show=False),
        Binding("enter", "select", "List cell"),
    ]
    can_focus = True

    @dataclass
    class CellSelected(Message):
        """Enter on a cell: its true and predicted class."""

        true: str
        pred: str

    def action_move(self, rows: int, columns: int) -> None:
        """Move the cursor, staying on the grid."""
        n = len(self.class_names)
        if n:
            self.cursor = (min(n - 1, max(0, self.cursor[0] + rows)), min(n - 1, max(0, self.cursor[1] + columns)))
            self.refresh()

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    def action_select(self) -> None:
        if self.class_names:
            t, p = self.cursor
            self.post_message(self.CellSelected(self.class_names[t], self.class_names[p]))

    def __init__(self, *, cell_width: int = 4, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.cell_width = cell_width
        self.label_width = LABEL
        self.class_names: tuple[str, ...] = ()
        self.confusion: tuple[tuple[int, ...], ...] = ()
        self.cursor = (0, 0)  # (true, predicted) row and column

    def set_matrix(self, class_names: Sequence[str], confusion: Sequence[Sequence[int]]) -> None:
        """Show a new matrix; cells narrow to 2 columns (colour only) for many classes."""
        self.class_names = tuple(class_names)
        self.confusion = tuple(tuple(r) for r in confusion)
        widest = max((n for row in self.confusion for n in row), default=0)
        # Room for the largest count and a space; colour only (2 columns) for many classes.
        self.cell_width = max(3, len(str(widest)) + 1) if len(self.class_names) <= 20 else 2
        self.label_width = min(LABEL, max((len(n) for n in self.class_names), default=4) + 1)
        self.refresh(layout=True)

    def get_content_width(self, container, viewport) -> int:  # type: ignore[no-untyped-def]
        if not self.class_names:
            return len(EMPTY)
        return self.label_width + self.cell_width * len(self.class_names)

    def get_content_height(self, container, viewport, width) -> int:  # type: ignore[no-untyped-def]
        return 1 + max(1, len(self.class_names))

    def _shade(self, base: Color, hot: Color, share: float) -> Style:
        # A floor keeps any non-zero cell visibly tinted; the square root lifts small shares.
        colour = base.blend(hot, 0.2 + 0.8 * share**0.5) if share > 0 else base
        return Style(bgcolor=colour.rich_color, color=colour.get_contrast_text().rich_color)

    def render(self) -> RenderableType:
        axis = self.get_component_rich_style("confusion-heatmap--axis", partial=True)
        if not self.class_names:
            return Text(EMPTY, style=axis)
        w, label_width = self.cell_width, self.label_width
        _, base = self.background_colors
        right = Color.from_rich_color(self.get_component_rich_style("confusion-heatmap--right", partial=True).color)
        wrong = Color.from_rich_color(self.get_component_rich_style("confusion-heatmap--wrong", partial=True).color)
        text = Text("true\\pred".ljust(label_width)[:label_width], style=axis, no_wrap=True, overflow="crop")
        for name in self.class_names:
            text.append(name[: w - 1].rjust(w - 1) + " " if w > 2 else name[:1].rjust(w), axis)
        for t, (name, row) in enumerate(zip(self.class_names, self.confusion)):
            text.append("\n" + name[: label_width - 1].ljust(label_width), axis)
            total = sum(row) or 1
            for p, count in enumerate(row):
                share = count / total
                label = (str(count) if count else "·").rjust(w - 1) + " " if w > 2 else " " * w
                style = self._shade(base, right if t == p else wrong, share)
                if self.has_focus and (t, p) == self.cursor:
                    style += Style(reverse=True, bold=True)
                text.append(label, style)
        return text
