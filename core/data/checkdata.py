"""``tlwork check-data``: what is wrong with a dataset before hours of training find out.

``check_dataset(spec)`` reads every image of an image-folder dataset (``imagefolder:PATH``,
a bare folder, or ``demo``) once, in a few threads, and reports: files that cannot be used
(zero bytes, truncated, corrupt, or refused as a decompression bomb), images in modes other
than RGB (CMYK, RGBA, L, P...; loading converts them), per-class counts and imbalance, and
exact duplicates (equal file bytes, by SHA-256) between the training and test splits, inside
the training split, and across its classes. CIFAR-10/100 are checked for counts and
duplicates on their decoded arrays. The result is a plain ``DataReport`` with ``to_dict``
for ``--json``; nothing here prints.
"""

from __future__ import annotations

import hashlib
import io
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from core.data.datasets import DEMO_DIR
from core.data.exclude import leave_out
from core.data.images import classify_image_error, decode_threads
from core.data.layout import class_files, folder_layout
from core.errors import ConfigError, DataError

IMBALANCE_WARNING = 2.0


def imbalance_line(class_counts: dict[str, int]) -> str | None:
    """``classes are imbalanced: largest/smallest = R (big N, small M)`` from IMBALANCE_WARNING on, else None.

    check-data's warning and a training run's log line both start with it.
    """
    if not class_counts or min(class_counts.values()) == 0:
        return None
    big = max(class_counts, key=lambda c: class_counts[c])
    small = min(class_counts, key=lambda c: class_counts[c])
    ratio = class_counts[big] / class_counts[small]
    if ratio < IMBALANCE_WARNING:
        return None
    return (f"classes are imbalanced: largest/smallest = {ratio:.1f} ({big} {class_counts[big]}, "
            f"{small} {class_counts[small]})")
"""Largest over smallest class count from which ``check-data`` warns."""


@dataclass(frozen=True)
class FileProblem:
    """An image file training cannot use."""

    split: str
    path: str
    kind: str  # zero-byte | truncated | too-large | unreadable
    reason: str


@dataclass
class SplitReport:
    """One split's figures."""

    name: str
    folder: str
    images: int
    class_counts: dict[str, int]
    modes: dict[str, int] = field(default_factory=dict)  # non-RGB modes -> count
    mode_examples: dict[str, list[str]] = field(default_factory=dict)
    problems: list[FileProblem] = field(default_factory=list)


@dataclass
class DataReport:
    """Everything ``check-data`` found."""

    dataset: str
    splits: list[SplitReport]
    cross_duplicates: list[tuple[str, str]]  # (train file, test file) with equal bytes
    train_duplicates: int  # extra copies inside the training split
    cross_class_duplicates: list[tuple[str, str]]  # equal files filed under two training classes
    imbalance: float | None  # largest / smallest training class count
    warnings: list[str]
    excluded: int = 0  # images left out because an --exclude file lists them

    @property
    def problems(self) -> list[FileProblem]:
        """Every unusable file, split by split."""
        return [p for s in self.splits for p in s.problems]

    @property
    def ok(self) -> bool:
        """True when every image can be read."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (the ``--json`` output)."""
        data = asdict(self)
        data["ok"] = self.ok
        data["problems"] = [asdict(p) for p in self.problems]
        for split in data["splits"]:
            split.pop("problems")
        return data


@dataclass(frozen=True)
class _FileInfo:
    digest: str | None
    mode: str | None
    problem: tuple[str, str] | None


def inspect_file(path: str) -> _FileInfo:
    """Hash and fully decode one file (a decompression bomb is refused before decoding)."""
    from PIL import Image

    from core.data.images import refuse_bomb

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return _FileInfo(None, None, ("unreadable", f"cannot be read ({exc.strerror or exc})"))
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        return _FileInfo(digest, None, ("zero-byte", "empty file (0 bytes)"))
    try:
        with Image.open(io.BytesIO(data)) as img:
            mode = img.mode
            refuse_bomb(img)
            img.load()
    except Exception as exc:  # every decoder error is a finding, not a crash
        return _FileInfo(digest, None, classify_image_error(path, exc))
    return _FileInfo(digest, mode, None)


def resolve_folders(spec: str) -> list[tuple[str, Path]]:
    """The (split name, folder) pairs of ``demo``, ``imagefolder:PATH`` or a PATH, training first.

    The layout is ``core.data.layout``'s, as training and evaluation read it; a folder
    holding only ``test/`` or ``val/`` is that one split.
    """
    if spec == "demo":
        root = DEMO_DIR
    else:
        root = Path(spec[len("imagefolder:"):] if spec.startswith("imagefolder:") else spec).expanduser()
        if not root.is_dir():
            raise DataError(f"{spec}: no such folder; check-data takes demo, cifar10, cifar100, imagefolder:PATH or a folder")
    layout = folder_layout(root)
    return [(name, folder) for name, folder in (("train", layout.train), (layout.test.name if layout.test else "", layout.test)) if folder is not None]


def check_dataset(
    spec: str,
    *,
    data_dir: str = "data",
    progress: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
    threads: int | None = None,
    exclude: frozenset[str] = frozenset(),
) -> DataReport:
    """Check ``spec`` (see the module docstring); ``progress(done, total)`` is called as files finish.

    ``exclude``: resolved paths (``core.data.exclude``) left out, as ``tlwork run --exclude`` leaves them out.
    """
    if spec in ("cifar10", "cifar100"):
        if exclude:
            raise ConfigError(f"--exclude lists image files, but {spec} is not a folder of files; drop --exclude")
        return _check_arrays(spec, data_dir)
    scanned = [(name, folder, *class_files(folder)) for name, folder in resolve_folders(spec)]
    scanned, left_out = _leave_out(scanned, exclude)
    total = sum(len(files) for _, _, files, _ in scanned)
    first = scanned[0][1]
    if not scanned[0][2]:
        raise DataError(f"{first}: no images found; expected {first}/<class>/<image>.jpg")
    infos: dict[str, _FileInfo] = {}
    done = 0
    paths = [path for _, _, files, _ in scanned for path, _ in files]
    workers = threads or decode_threads(paths, 8)
    with ThreadPoolExecutor(workers) as pool:
        for path, info in zip(paths, pool.map(inspect_file, paths)):
            infos[path] = info
            done += 1
            if progress is not None:
                progress(done, total)
            if stop is not None and stop.is_set():
                break
    splits = []
    for name, folder, files, classes in scanned:
        report = SplitReport(name, str(folder), len(files), {c: 0 for c in classes})
        for path, cls in files:
            report.class_counts[cls] += 1
            info = infos.get(path)
            if info is None:
                continue
            if info.problem is not None:
                report.problems.append(FileProblem(name, path, *info.problem))
            elif info.mode not in ("RGB", None):
                report.modes[info.mode] = report.modes.get(info.mode, 0) + 1
                examples = report.mode_examples.setdefault(info.mode, [])
                if len(examples) < 3:
                    examples.append(path)
        splits.append(report)
    train_files = [(p, c) for p, c in scanned[0][2]]
    other_files = [p for _, _, files, _ in scanned[1:] for p, _ in files]
    report = _summarise(spec, splits, {p: infos[p].digest for p in infos}, train_files, other_files, scanned)
    report.excluded = left_out
    return report


def _leave_out(scanned: list[Any], exclude: frozenset[str]) -> tuple[list[Any], int]:
    """The scanned splits without the files ``exclude`` lists, and how many that left out."""
    kept, total = [], 0
    for name, folder, files, classes in scanned:
        files, n = leave_out(files, exclude)
        kept.append((name, folder, files, classes))
        total += n
    return kept, total


def _summarise(
    spec: str,
    splits: list[SplitReport],
    digests: dict[str, str | None],
    train_files: list[tuple[str, str]],
    other_files: list[str],
    scanned: list[Any],
) -> DataReport:
    by_digest: dict[str, list[tuple[str, str]]] = {}
    for path, cls in train_files:
        d = digests.get(path)
        if d is not None:
            by_digest.setdefault(d, []).append((path, cls))
    cross = [(by_digest[d][0][0], p) for p in other_files if (d := digests.get(p)) is not None and d in by_digest]
    extra = sum(len(v) - 1 for v in by_digest.values())
    cross_class = [
        (v[0][0], other[0]) for v in by_digest.values() for other in v[1:] if other[1] != v[0][1]
    ]
    train = splits[0]
    counts = [n for n in train.class_counts.values()]
    imbalance = max(counts) / min(counts) if counts and min(counts) > 0 else None
    notes: list[str] = []
    problems = [p for s in splits for p in s.problems]
    if problems:
        kinds: dict[str, int] = {}
        for p in problems:
            kinds[p.kind] = kinds.get(p.kind, 0) + 1
        listed = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        notes.append(f"{len(problems)} image(s) cannot be used ({listed}); training skips them, --strict stops on them")
    for split in splits:
        if split.modes:
            listed = ", ".join(f"{m} {n}" for m, n in sorted(split.modes.items()))
            notes.append(f"{split.name}: {sum(split.modes.values())} image(s) not in RGB ({listed}); they are converted to RGB when loaded")
    empty = [c for c, n in train.class_counts.items() if n == 0]
    if empty:
        notes.append(f"train: class(es) with no images: {', '.join(empty)}; remove the folder(s) or add images")
    skew = imbalance_line(train.class_counts)
    if skew:
        notes.append(f"{skew}; consider more images of the small classes, or train with --class-weights balanced "
                     "or --sampler balanced")
    if cross:
        notes.append(f"{len(cross)} test image(s) are exact copies of training images; they inflate test accuracy, remove them from one side")
    if cross_class:
        notes.append(f"{len(cross_class)} training image(s) appear under two classes; fix their labels")
    if extra:
        notes.append(f"train: {extra} duplicate file(s) (equal bytes) within the split")
    for name, _, _, classes in scanned[1:]:
        unknown = sorted(set(classes) - set(train.class_counts))
        if unknown:
            notes.append(f"{name}: class(es) not in train: {', '.join(unknown)}; training refuses this split until they match")
    return DataReport(spec, splits, cross, extra, cross_class, imbalance, notes)


def _check_arrays(spec: str, data_dir: str) -> DataReport:
    """CIFAR: counts and duplicates over the decoded arrays (there are no files to break)."""
    from core.data.datasets import load_splits

    splits = load_splits(spec, data_dir)
    reports, digests, train_files, others = [], {}, [], []
    for name, data in (("train", splits.train), ("test", splits.test)):
        counts = {c: 0 for c in splits.class_names}
        for i, (row, label) in enumerate(zip(data.data, data.targets)):
            key = f"{name}[{i}]"
            digests[key] = hashlib.sha256(row.tobytes()).hexdigest()
            counts[splits.class_names[label]] += 1
            if name == "train":
                train_files.append((key, splits.class_names[label]))
            else:
                others.append(key)
        reports.append(SplitReport(name, f"{data_dir} ({spec})", len(data), counts))
    scanned = [("train", None, [], list(splits.class_names)), ("test", None, [], list(splits.class_names))]
    return _summarise(spec, reports, digests, train_files, others, scanned)
