"""Exclusion lists: plain text files of image paths, one a line, that training leaves out.

The mistakes gallery (``tlwork mistakes``, the TUI's Mistakes view) marks images as
mislabelled, broken or in no class; the marks are such a file. ``tlwork run --exclude FILE``
and ``tlwork check-data --exclude FILE`` read it. Nothing is ever moved or deleted: a listed
file is only skipped. Blank lines and lines starting with ``#`` are ignored; a relative path
is taken from the current folder, and paths are compared once resolved, so ``./a/b.jpg`` and
``/abs/a/b.jpg`` name the same image. No torch here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence, TypeVar

from core.errors import ConfigError

T = TypeVar("T")

MARKS_FILE = "exclude.txt"
"""The name of the marks file the TUI writes next to a run."""


def _key(path: str | Path) -> str:
    return str(Path(path).expanduser().resolve())


def read_exclude(path: str | Path) -> frozenset[str]:
    """The resolved paths listed in ``path``; a missing or unreadable file is a ``ConfigError``."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--exclude {path}: no such file; give a text file of image paths, one per line") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--exclude {path}: cannot be read ({exc.__class__.__name__}); give a UTF-8 text file of image paths") from None
    lines = (line.strip() for line in text.splitlines())
    return frozenset(_key(line) for line in lines if line and not line.startswith("#"))


def leave_out(samples: Sequence[tuple[str, T]], excluded: frozenset[str]) -> tuple[list[tuple[str, T]], int]:
    """(the samples whose file is not in ``excluded``, how many were left out)."""
    if not excluded:
        return list(samples), 0
    kept = [s for s in samples if _key(s[0]) not in excluded]
    return kept, len(samples) - len(kept)


def write_marks(path: str | Path, marked: Iterable[str]) -> Path:
    """Write ``marked`` (resolved, sorted, once each) to ``path``, replacing it; returns the path."""
    file = Path(path).expanduser()
    file.parent.mkdir(parents=True, exist_ok=True)
    lines = sorted({_key(p) for p in marked})
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    tmp.replace(file)
    return file


def read_marks(path: str | Path) -> set[str]:
    """The marks in ``path`` (an empty set when it does not exist yet)."""
    return set(read_exclude(path)) if Path(path).expanduser().is_file() else set()
