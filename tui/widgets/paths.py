"""Picking image files from the keyboard: a path box that completes like a shell, and a
directory tree that shows only folders and images.

``PathSuggester`` offers the first entry of the typed folder that starts with the typed
name (folders end in ``/``); the Input shows it greyed and the right arrow accepts it.
``ImageTree`` hides dot-files and anything that is not an image, so a long data folder is
quick to walk with the arrow keys.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from textual.suggester import Suggester
from textual.widgets import DirectoryTree

from core.data.images import IMAGE_EXTENSIONS

MAX_FILES = 1000


def is_image(path: Path) -> bool:
    """By extension, the same list the engine's data loader accepts."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def expand_images(text: str) -> list[str]:
    """A file as itself; a folder as its images (sorted, not recursive, at most ``MAX_FILES``)."""
    path = Path(text).expanduser()
    if path.is_dir():
        return [str(p) for p in sorted(path.iterdir()) if p.is_file() and is_image(p)][:MAX_FILES]
    return [text]


class PathSuggester(Suggester):
    """Complete the last component of a path from the file system."""

    def __init__(self) -> None:
        super().__init__(use_cache=False, case_sensitive=True)

    async def get_suggestion(self, value: str) -> str | None:
        if not value:
            return None
        head, sep, prefix = value.rpartition("/")
        folder = Path(os.path.expanduser(head or "/")) if sep else Path(".")
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            return None
        for name in names:
            if name.startswith(prefix) and name != prefix and (prefix.startswith(".") or not name.startswith(".")):
                suffix = "/" if (folder / name).is_dir() else ""
                return value + name[len(prefix):] + suffix
        return None


class ImageTree(DirectoryTree):
    """A DirectoryTree of folders and image files only."""

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        return [p for p in paths if not p.name.startswith(".") and (p.is_dir() or is_image(p))]
