"""Form rows built from the engine's registries: a labelled menu with its description, and a
model picker over finished runs.

``ChoiceField`` shows a ``Select`` of a registry's choices with the chosen one's one-line
description beside it; a choice whose name ends in ``:`` (``imagefolder:``, ``timm:``,
``hf:``) reveals a text box for the rest (a path, a model name). ``ModelPicker`` lists runs
that have a model, with a text box for any other bundle path or ``hf:ID``; it reads the runs
folder in a thread worker, since ``list_runs`` parses every run's metrics. Both post one
``Changed`` message whatever part the user edited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from textual import on, work
from textual.app import ComposeResult
from textual.containers import HorizontalGroup
from textual.message import Message
from textual.widgets import Input, Label, Select, Static
from textual.worker import Worker

from core.registry import Choice
from core.runs.store import list_runs
from tui.jobs import finished_listing


def finished_runs(runs_dir: str) -> list[tuple[str, str]]:
    """(label, run directory) for runs with a model, newest first."""
    out = []
    for r in list_runs(runs_dir):
        if r.has_bundle:
            acc = f"  {100 * r.val_accuracy:.1f}%" if r.val_accuracy is not None else ""
            out.append((f"{r.name}{acc}", r.path))
    return out


class ChoiceField(HorizontalGroup):
    """``label [menu] description`` (or ``label [menu] [rest]`` for a prefix choice)."""

    DEFAULT_CSS = """
    ChoiceField {
        height: auto;
        margin-bottom: 0;
    }
    ChoiceField > Select {
        width: 25;
    }
    ChoiceField > .choice-field--description {
        width: 1fr;
        padding-left: 1;
        color: $text-muted;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    ChoiceField > Input {
        width: 1fr;
        display: none;
        margin-left: 1;
    }
    ChoiceField.-prefix > Input { display: block; }
    ChoiceField.-prefix > .choice-field--description { display: none; }
    """

    @dataclass
    class Changed(Message):
        """The field's value changed (menu or text box)."""

        field: ChoiceField

        @property
        def control(self) -> ChoiceField:
            return self.field

    def __init__(
        self,
        label: str,
        choices: Sequence[Choice],
        *,
        value: str | None,
        blank: str | None = None,
        placeholders: dict[str, str] | None = None,
        id: str | None = None,
    ) -> None:
        super().__init__(id=id)
        self.label = label
        self.choices = tuple(choices)
        self.blank = blank
        self.blank_hint = ""
        self.placeholders = placeholders or {}
        self._initial = value

    def compose(self) -> ComposeResult:
        yield Label(self.label, classes="field-label")
        yield Select(
            [(c.label, c.name) for c in self.choices],
            allow_blank=self.blank is not None,
            prompt=self.blank or "Select",
            compact=True,
        )
        yield Input(compact=True)
        yield Static("", classes="choice-field--description")

    def on_mount(self) -> None:
        self.set_value(self._initial)

    @property
    def select(self) -> Select[str]:
        return self.query_one(Select)

    @property
    def rest(self) -> Input:
        return self.query_one(Input)

    @property
    def value(self) -> str | None:
        """The machine value: a choice name, ``prefix:rest``, or None for the blank choice."""
        chosen = self.select.value
        if chosen is Select.NULL:
            return None
        name = str(chosen)
        return name + self.rest.value.strip() if name.endswith(":") else name

    def set_value(self, value: str | None) -> None:
        """Select ``value`` (a name, or ``prefix:rest`` for prefix choices)."""
        if value is None:
            if self.blank is not None:
                self.select.clear()
        else:
            # A listed choice wins over a prefix that also matches (timm:tf_efficientnet_lite0 vs timm:).
            prefix = next((c.name for c in self.choices if c.name.endswith(":") and value.startswith(c.name)), None)
            if any(c.name == value for c in self.choices):
                self.select.value = value
            elif prefix is not None:
                self.select.value = prefix
                self.rest.value = value[len(prefix):]
        self._show()

    def set_blank_hint(self, hint: str) -> None:
        """The description shown while the blank (default) choice is selected."""
        self.blank_hint = hint
        self._show()

    def _show(self) -> None:
        chosen = self.select.value
        choice = next((c for c in self.choices if c.name == chosen), None)
        prefix = choice is not None and choice.name.endswith(":")
        self.set_class(prefix, "-prefix")
        if prefix and choice is not None:
            self.rest.placeholder = self.placeholders.get(choice.name, choice.description)
        description = choice.description if choice is not None else self.blank_hint
        self.query_one(".choice-field--description", Static).update(description)

    @on(Select.Changed)
    def _select_changed(self, event: Select.Changed) -> None:
        event.stop()
        self._show()
        self.post_message(self.Changed(self))

    @on(Input.Changed)
    def _rest_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.Changed(self))


class ModelPicker(HorizontalGroup):
    """A menu of runs that have a model, or any bundle path / ``hf:ID`` typed beside it."""

    DEFAULT_CSS = """
    ModelPicker {
        height: auto;
    }
    ModelPicker > Select {
        width: 2fr;
        max-width: 52;
    }
    ModelPicker > Input {
        width: 1fr;
        margin-left: 1;
    }
    """

    @dataclass
    class Changed(Message):
        """The chosen model changed."""

        picker: ModelPicker

        @property
        def control(self) -> ModelPicker:
            return self.picker

    def __init__(self, label: str = "model", *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.label = label
        self.refs: list[str] = []
        self.listed = False  # the last ``reload`` has filled the menu
        self._typed_choice: str | None = None  # ``choose`` typed it while the menu was being read
        self._listing: Worker[list[tuple[str, str]]] | None = None

    def compose(self) -> ComposeResult:
        yield Label(self.label, classes="field-label")
        yield Select[str]([], prompt="no finished runs", compact=True)
        yield Input(placeholder="or a bundle path / hf:ID", compact=True)

    @property
    def select(self) -> Select[str]:
        return self.query_one(Select)

    @property
    def other(self) -> Input:
        return self.query_one(Input)

    @property
    def value(self) -> str | None:
        """What to load: the typed reference if any, else the chosen run's directory."""
        typed = self.other.value.strip()
        if typed:
            return typed
        chosen = self.select.value
        return None if chosen is Select.NULL else str(chosen)

    def set_runs(self, runs: Iterable[tuple[str, str]]) -> None:
        """Offer ``(label, run directory)`` pairs, keeping the current choice if still there."""
        options = list(runs)
        self.refs = [v for _, v in options]
        current = self.select.value
        with self.prevent(Select.Changed):
            self.select.set_options(options)
            self.select.prompt = "pick a run" if options else "no finished runs"
            if current is not Select.NULL and any(v == current for _, v in options):
                self.select.value = current
            elif options:
                self.select.value = options[0][1]

    def choose(self, ref: str) -> None:
        """Pick the run at ``ref`` if it is listed, else type it into the text box.

        While a ``reload`` is under way the ref is typed, and moves to the menu if the new
        list has it: ``value`` is the same either way.
        """
        if ref in self.refs:
            self.select.value = ref
            self.other.value = ""
            self._typed_choice = None
        else:
            self.other.value = ref
            self._typed_choice = ref

    def reload(self, runs_dir: str) -> None:
        """Re-read the finished runs under ``runs_dir``; the menu changes when they are read."""
        self.listed = False
        self._listing = self.list_runs(runs_dir)

    @work(thread=True, exclusive=True, exit_on_error=False, group="list-runs")
    def list_runs(self, runs_dir: str) -> list[tuple[str, str]]:
        """The finished runs, off the UI thread."""
        return finished_runs(runs_dir)

    @on(Worker.StateChanged)
    def _listed(self, event: Worker.StateChanged) -> None:
        runs = finished_listing(event, self._listing, self.notify)
        if runs is None:
            return
        self.set_runs(runs)
        typed = self._typed_choice
        if typed is not None and typed in self.refs and self.other.value == typed:
            self.choose(typed)
        self.listed = True

    @on(Select.Changed)
    @on(Input.Changed)
    def _changed(self, event: Message) -> None:
        event.stop()
        self.post_message(self.Changed(self))
