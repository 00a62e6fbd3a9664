"""The top line of every screen: the app's name and its five screens with their keys.

It doubles as a tab bar (the current screen is highlighted, a click switches) and as the
reminder that F1-F5 move between screens, which keeps those keys out of a crowded footer.
"""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.widget import Widget

SCREENS: tuple[tuple[str, str, str], ...] = (
    ("setup", "f1", "Set-up"),
    ("training", "f2", "Training"),
    ("evaluate", "f3", "Evaluate"),
    ("classify", "f4", "Classify"),
    ("runs", "f5", "Runs"),
)


class NavBar(Widget):
    """``tlwork  F1 Set-up  F2 Training ...`` with the current screen highlighted."""

    DEFAULT_CSS = """
    NavBar {
        height: 1;
        background: $panel;
        color: $text-muted;
    }
    NavBar > .nav-bar--current { background: $primary; color: $text; text-style: bold; }
    NavBar > .nav-bar--key { color: $accent; }
    NavBar > .nav-bar--name { color: $text; text-style: bold; }
    """

    COMPONENT_CLASSES = {"nav-bar--current", "nav-bar--key", "nav-bar--name"}

    def __init__(self, current: str, *, status: str = "") -> None:
        super().__init__()
        self.current = current
        self.status = status

    def set_status(self, status: str) -> None:
        """A short note at the right end (e.g. "training 3/5")."""
        self.status = status
        self.refresh()

    def render(self) -> Text:
        key = self.get_component_rich_style("nav-bar--key", partial=True)
        current = self.get_component_rich_style("nav-bar--current", partial=True)
        text = Text(no_wrap=True, overflow="crop")
        text.append(" tlwork ", self.get_component_rich_style("nav-bar--name", partial=True))
        for mode, k, label in SCREENS:
            # A click runs the same action as the key.
            part = Text.assemble((f" {k.upper()} ", key), (f"{label} ", current if mode == self.current else ""))
            part.stylize(Style(meta={"@click": f"app.switch_mode('{mode}')"}))
            text.append_text(part)
        if self.status:
            room = self.size.width - text.cell_len - 1
            if room > 3:
                text.append(" " * max(1, room - len(self.status)) + self.status[:room] + " ")
        return text
