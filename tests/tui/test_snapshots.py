"""Snapshots of every screen state (pytest-textual-snapshot), from the scenes the README's
screenshots are made of. Cursor blink is frozen and every figure is scripted, so a change
in a picture is a change in the app. Update with ``--snapshot-update`` after looking at
the new pictures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tui_fixtures import SCENES, Scene


@pytest.mark.parametrize("scene", SCENES, ids=[s.name for s in SCENES])
def test_screen(scene: Scene, workspace: Path, snap_compare: Any) -> None:
    assert snap_compare(scene.build(), press=scene.press, terminal_size=scene.size, run_before=scene.prepare)


def test_screenshots_are_the_accepted_snapshots() -> None:
    """README's pictures (screenshots/make.py) must be what the snapshot tests accept."""
    here = Path(__file__).parent
    shots = here.parent.parent / "screenshots"
    for scene in SCENES:
        accepted = here / "__snapshots__" / "test_snapshots" / f"test_screen[{scene.name}].svg"
        picture = shots / f"{scene.name}.svg"
        assert picture.is_file(), f"run python screenshots/make.py {scene.name}"
        assert picture.read_text(encoding="utf-8") == accepted.read_text(encoding="utf-8"), (
            f"screenshots/{scene.name}.svg is stale: run python screenshots/make.py"
        )
