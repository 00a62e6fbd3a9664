"""Folder layouts: where a dataset folder's training and test images are, and its class folders' files.

``folder_layout(root)`` is the one reading of an image-folder dataset, shared by training
(``core.data.datasets``), evaluation and ``check-data``:

- ``root/train/`` holds the training class folders, else class folders sit directly in
  ``root`` (``root/<class>/<image>``);
- ``root/test/`` (or, failing that, ``root/val/``) holds the test split's class folders;
- a ``root`` with a ``test/`` or ``val/`` folder and no ``train/`` is a test set alone (the
  layout most published test sets come in): it has no training images.

``class_files`` lists a split's (path, class name) pairs; ``scan_class_folders`` turns them
into (path, label) pairs, refusing classes training does not know.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from core.data.images import IMAGE_EXTENSIONS
from core.errors import DataError

TEST_FOLDERS = ("test", "val")
"""Names of a dataset folder's test split, in order of preference."""


@dataclass(frozen=True)
class FolderLayout:
    """Where a dataset folder's splits are; ``train`` is None for a test set alone."""

    root: Path
    train: Path | None
    test: Path | None


def folder_layout(root: Path) -> FolderLayout:
    """Read ``root``'s layout (see the module docstring); ``root`` must be a folder."""
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    test = next((root / d for d in TEST_FOLDERS if (root / d).is_dir()), None)
    if (root / "train").is_dir():
        return FolderLayout(root, root / "train", test)
    if test is None:
        return FolderLayout(root, root, None)
    # No train/ beside test/ or val/: a test set alone, unless class folders sit beside it,
    # where "test" could be a class as well as a split and guessing would mislabel images.
    others = sorted(d.name for d in _subfolders(root) if d.name not in TEST_FOLDERS)
    if others:
        raise DataError(
            f"{root} has {test.name}/ beside other folders ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}) "
            f"and no train/; move the training class folders into {root / 'train'}/"
        )
    return FolderLayout(root, None, test)


def _subfolders(folder: Path) -> list[Path]:
    """The visible subfolders of ``folder``, sorted by name (hidden ones are caches, not classes)."""
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def class_files(folder: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """([(path, class name)] for every image in ``folder/<class>/``, searched recursively; the class names, sorted)."""
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; imagefolder:PATH needs PATH/<class>/<image> files")
    classes = [d.name for d in _subfolders(folder)]
    files = [
        (str(p), cls)
        for cls in classes
        for p in sorted((folder / cls).rglob("*"))
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    ]
    return files, classes


def scan_class_folders(root: Path, class_names: Sequence[str] | None = None) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, label) for every image in ``root/<class>/``, and the class names (``root``'s own, sorted, by default).

    With ``class_names`` (the training classes), a class folder outside them is an error.
    """
    files, found = class_files(root)
    names = list(class_names) if class_names is not None else found
    index = {n: i for i, n in enumerate(names)}
    unknown = [cls for cls in found if cls not in index]
    if unknown:
        raise DataError(f"{root / unknown[0]}: class {unknown[0]!r} is not among the training classes; remove or rename it")
    return [(path, index[cls]) for path, cls in files], names
