"""Folder layouts: where a dataset's training and test images are, and the (path, label) pairs of class folders."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from core.data.images import IMAGE_EXTENSIONS
from core.errors import DataError


def scan_class_folders(root: Path, class_names: Sequence[str] | None = None) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, label) for every image in ``root/<class>/``, classes sorted by name."""
    if not root.is_dir():
        raise DataError(f"{root}: no such folder; imagefolder:PATH needs PATH/<class>/<image> files")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    names = list(class_names) if class_names is not None else found
    index = {n: i for i, n in enumerate(names)}
    samples: list[tuple[str, int]] = []
    for cls in found:
        if cls not in index:
            raise DataError(f"{root / cls}: class {cls!r} is not among the training classes; remove or rename it")
        for path in sorted((root / cls).rglob("*")):
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                samples.append((str(path), index[cls]))
    return samples, names


