"""Fixtures for the workbench tests: a workspace to run in, with the scripted fakes at hand.

The fakes and scenes live in ``tui_fixtures`` so that ``screenshots/make.py`` can use them
too; this file only turns them into pytest fixtures.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tui_fixtures import ScriptedEngine, build_workspace


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with fixed runs and photos, made the current directory (paths stay relative)."""
    build_workspace(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def engine() -> ScriptedEngine:
    """A scripted training engine that runs straight through."""
    return ScriptedEngine()


@pytest.fixture
def held_engine() -> ScriptedEngine:
    """A scripted engine that waits after step 5 until it is asked to stop."""
    return ScriptedEngine(hold_at=5)
