"""Make ``screenshots/*.svg``: one picture of every screen state of the workbench.

The pictures come from the scenes the snapshot tests check (``tests/tui/tui_fixtures.py``:
the scripted engine, a fixed workspace, injected memory figures), rendered by the same
function pytest-textual-snapshot uses, so each SVG here is byte-for-byte the accepted
snapshot of the same name. Run it from anywhere::

    python screenshots/make.py            # every scene
    python screenshots/make.py classify   # just the named scenes
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "tui")]

from pytest_textual_snapshot import normalize_svg  # noqa: E402  (how snapshots are stored)
from textual._doc import take_svg_screenshot  # noqa: E402  (the renderer snap_compare uses)

from tui_fixtures import SCENES, build_workspace  # noqa: E402


def main(names: list[str]) -> None:
    """Render the named scenes (all when none are named) into this folder."""
    unknown = set(names) - {s.name for s in SCENES}
    if unknown:
        raise SystemExit(f"unknown scene(s): {', '.join(sorted(unknown))}; known: {', '.join(s.name for s in SCENES)}")
    with tempfile.TemporaryDirectory() as tmp:
        build_workspace(Path(tmp))
        os.chdir(tmp)  # the scenes use paths relative to their workspace
        for scene in SCENES:
            if names and scene.name not in names:
                continue
            svg = take_svg_screenshot(app=scene.build(), press=scene.press, terminal_size=scene.size, run_before=scene.prepare)
            (HERE / f"{scene.name}.svg").write_text(normalize_svg(svg), encoding="utf-8")
            print(f"screenshots/{scene.name}.svg")


if __name__ == "__main__":
    main(sys.argv[1:])
