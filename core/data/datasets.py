"""Datasets: CIFAR-10/100, image folders and the shipped demo set, split and described.

``load_splits(spec, data_dir, val_split, seed)`` returns ``Splits``: the raw train,
validation and test datasets (items are ``(PIL image, label)``), the class names, the
dataset's mean/std and its native image size. Validation selects the model a run keeps
(``--keep best``), so it is never the test split while ``val_split`` > 0: a stratified, seeded
``val_split`` fraction of the training images is held out (as Hugging Face's example does
with ``train_val_split``), the test split stays for ``tlwork eval``, and the same config
always yields the same split. A folder whose second split is ``val/`` (not ``test/``)
validates on it. With ``val_split`` 0 a dataset with a test split validates on it, as the
notebook does (``val_source`` "test": nothing is selected on it). A dataset that
cannot be downloaded, an empty folder, a single class or a folder with test images only is
a ``DataError`` with a one-line message that says what to put where.

``load_eval_set(spec)`` is what evaluation scores on another dataset: its test split, or
every image of a folder without one (a folder holding only ``test/`` or ``val/`` included).
``unwrap`` and ``sample_paths`` see through ``Subset`` wrappers to the files behind items.
Folder layouts are read by ``core.data.layout`` alone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

from PIL import Image
from torch.utils.data import Dataset

from core.data.exclude import leave_out
from core.data.images import open_rgb, screen_images
from core.data.layout import folder_layout, scan_class_folders
from core.errors import ConfigError, DataError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
DEMO_DIR = Path(__file__).parent / "demo_data"
CIFAR_URLS = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-batches-py"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python"),
}


class Images(Protocol):
    """A dataset of (image, label) items with a length (torch's ``Dataset`` declares no ``__len__``)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


@dataclass
class Splits:
    """A dataset ready to train on."""

    name: str
    train: Images
    val: Images
    test: Images
    class_names: list[str]
    mean_: tuple[float, float, float] | None  # None: measured from the training images when first asked
    std_: tuple[float, float, float] | None
    native_size: int | None
    val_source: str  # "held-out" (a slice of train), "val" (the folder's val/ split) or "test" (the test split)
    unreadable: list[tuple[str, str, str]] = field(default_factory=list)  # (path, kind, reason), left out
    excluded: int = 0  # images left out because an --exclude file lists them

    def _measure(self) -> None:
        if self.mean_ is None or self.std_ is None:
            self.mean_, self.std_ = channel_stats(self.train)

    @property
    def mean(self) -> tuple[float, float, float]:
        """Per-channel mean in [0, 1] units (an image folder's is measured once, on demand)."""
        self._measure()
        assert self.mean_ is not None
        return self.mean_

    @property
    def std(self) -> tuple[float, float, float]:
        """Per-channel standard deviation in [0, 1] units."""
        self._measure()
        assert self.std_ is not None
        return self.std_


class ImageFiles(Dataset):
    """A list of (path, label) read with Pillow and converted to RGB."""

    def __init__(self, samples: Sequence[tuple[str, int]], class_names: Sequence[str]) -> None:
        self.samples = list(samples)
        self.class_names = list(class_names)
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        return open_rgb(path), label


class Subset(Dataset):
    """Items of ``base`` at ``indices``, keeping ``targets`` for stratification and counts."""

    def __init__(self, base: Images, indices: Sequence[int]) -> None:
        self.base = base
        self.indices = list(indices)
        base_targets = list(getattr(base, "targets"))
        self.targets = [base_targets[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.base[self.indices[index]]


def unwrap(dataset: Images, indices: Sequence[int] | None = None) -> tuple[Images, list[int] | None]:
    """The dataset under any ``Subset``-style wrappers (``base`` and ``indices``), and where items are in it.

    Returns (innermost dataset, the positions in it of ``dataset``'s items ``indices``, or of
    all its items when ``indices`` is None). The positions stay None when nothing was wrapped
    and none were asked for: every item is where it was, and no list of them is built.
    """
    where = None if indices is None else list(indices)
    while hasattr(dataset, "indices") and hasattr(dataset, "base"):
        outer = list(dataset.indices)
        where = outer if where is None else [outer[i] for i in where]
        dataset = dataset.base
    return dataset, where


def sample_paths(dataset: Images, indices: Sequence[int] | None = None) -> list[str] | None:
    """The files behind items ``indices`` (default: all) of an ``ImageFiles`` or a ``Subset`` of one.

    None for datasets that are not backed by files (CIFAR's arrays) and for an index out of range.
    """
    base, where = unwrap(dataset, indices)
    samples = getattr(base, "samples", None)
    if not samples:
        return None
    if where is None:
        return [str(path) for path, _ in samples]
    if not all(0 <= i < len(samples) for i in where):
        return None
    return [str(samples[i][0]) for i in where]


def sample_path(dataset: Images, index: int) -> str | None:
    """The file behind ``dataset[index]``, or None (see ``sample_paths``)."""
    paths = sample_paths(dataset, [index])
    return paths[0] if paths else None


def stratified_split(targets: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices): ``fraction`` of each class, chosen by ``seed``."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(t, []).append(i)
    train, held = [], []
    for _, idx in sorted(by_class.items()):
        rng.shuffle(idx)
        n = round(len(idx) * fraction)
        if fraction > 0 and len(idx) > 1:
            n = max(1, n)
        held += idx[:n]
        train += idx[n:]
    return sorted(train), sorted(held)


def load_splits(
    spec: str, data_dir: str = "data", val_split: float = 0.1, seed: int = 0, scoring: bool = False,
    download: bool = True, exclude: frozenset[str] = frozenset(),
) -> Splits:
    """The dataset named by ``spec``: cifar10, cifar100, demo or imagefolder:PATH.

    ``scoring``: only the test or validation images will be read (evaluation). When a test
    folder exists, the training folder is then not screened and the test folder gets the
    cheap check; a held-out split is screened as in training, so it comes out the same.
    ``download``: fetch CIFAR when it is not in ``data_dir`` (else that is a ``DataError``).
    ``exclude``: resolved paths (``core.data.exclude``) left out of training and validation.
    """
    if spec in CIFAR_URLS:
        if exclude:
            raise ConfigError(f"--exclude lists image files, but {spec} is not a folder of files; "
                              "drop --exclude or train on an imagefolder: copy")
        return _cifar(spec, data_dir, download, val_split, seed)
    if spec == "demo":
        demo = folder_layout(DEMO_DIR)
        assert demo.train is not None
        return _folders("demo", demo.train, demo.test, val_split, seed, CIFAR10_MEAN, CIFAR10_STD, 32, exclude=exclude)
    layout = folder_layout(_imagefolder_root(spec))
    if layout.train is None:
        assert layout.test is not None
        raise DataError(
            f"{layout.root} has no training images, only a {layout.test.name}/ folder; put the training class folders "
            f"in {layout.root / 'train'}/ (evaluating on it works: tlwork eval RUN --dataset {spec})"
        )
    return _folders(spec, layout.train, layout.test, val_split, seed, None, None, None, scoring, exclude)


def _imagefolder_root(spec: str) -> Path:
    """The folder of ``imagefolder:PATH``; any other spec is unknown."""
    if not spec.startswith("imagefolder:"):
        raise DataError(f"unknown --dataset {spec!r}; choose one of: cifar10, cifar100, demo, imagefolder:PATH")
    root = Path(spec[len("imagefolder:"):]).expanduser()
    if not root.is_dir():
        raise DataError(f"--dataset {spec}: folder {root} does not exist")
    return root


@dataclass(frozen=True)
class EvalSet:
    """The images evaluation scores, the name of the split they are, and their class names."""

    data: Images
    split: str  # test, val (a folder holding only val/) or all (a folder without a test split)
    class_names: list[str]
    native_size: int | None


def load_eval_set(spec: str, data_dir: str = "data", val_split: float = 0.1, seed: int = 0) -> EvalSet:
    """What ``tlwork eval --dataset spec`` scores: the test split, or every image of a folder without one.

    A folder holding only ``test/`` or ``val/`` (most published test sets) is scored whole
    under that folder's name; class folders directly in the folder, or in its ``train/``
    alone, are scored whole as ``all`` (a held-out slice would hide most of them). Either may
    hold a single class.
    """
    if spec in CIFAR_URLS or spec == "demo":
        splits = load_splits(spec, data_dir, val_split, seed, scoring=True)
        return EvalSet(splits.test, "test", splits.class_names, splits.native_size)
    layout = folder_layout(_imagefolder_root(spec))
    if layout.train is not None and layout.test is not None:
        splits = load_splits(spec, data_dir, val_split, seed, scoring=True)
        return EvalSet(splits.test, "test", splits.class_names, splits.native_size)
    folder = layout.test or layout.train or layout.root  # root/train/ alone: its class folders, scored whole
    samples, names = scan_class_folders(folder)
    if not samples:
        raise DataError(f"{folder}: no images found; expected {folder}/<class>/<image>.jpg")
    # As before this existed: a test folder gets the cheap check, a whole folder the training one.
    samples, _ = screen_images(samples, full=layout.test is None)
    return EvalSet(ImageFiles(samples, names), folder.name if layout.test else "all", names, None)


def _cifar(name: str, data_dir: str, download: bool = True, val_split: float = 0.0, seed: int = 0) -> Splits:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    url, folder = CIFAR_URLS[name]
    root = Path(data_dir).expanduser()
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except Exception as exc:
        missing = "" if download else ", not downloaded here"
        raise DataError(
            f"could not load {name.upper()} from {root} ({type(exc).__name__}{missing}); "
            f"download {url} into {root}/ (or extract it to {root / folder}), or pick --dataset demo"
        ) from None
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
    if val_split <= 0:
        return Splits(name, train, test, test, list(train.classes), mean, std, 32, "test")
    tr, held = stratified_split(train.targets, val_split, seed)
    return Splits(name, Subset(train, tr), Subset(train, held), test, list(train.classes), mean, std, 32, "held-out")


def _folders(
    spec: str,
    train_dir: Path,
    test_dir: Path | None,
    val_split: float,
    seed: int,
    mean: tuple[float, float, float] | None,
    std: tuple[float, float, float] | None,
    native_size: int | None,
    scoring: bool = False,
    exclude: frozenset[str] = frozenset(),
) -> Splits:
    samples, names = scan_class_folders(train_dir)
    if not samples:
        raise DataError(f"{train_dir}: no images found; expected {train_dir}/<class>/<image>.jpg")
    samples, excluded = leave_out(samples, exclude)
    # The test split alone is scored, or the training images are shipped: no need to screen them.
    val_is_test = test_dir is not None and (val_split <= 0 or test_dir.name == "val")
    skip_train = spec == "demo" or (scoring and val_is_test)
    samples, unreadable = (samples, []) if skip_train else screen_images(samples)
    present = sorted({label for _, label in samples})
    if len(present) < 2:
        raise DataError(f"{train_dir}: only one class with images ({names[present[0]]!r}); a classifier needs two or more")
    full = ImageFiles(samples, names)
    train: Images
    val: Images
    test: Images
    if test_dir is not None:
        test_samples, _ = scan_class_folders(test_dir, names)
        if spec != "demo":
            test_samples, more = screen_images(test_samples, full=not scoring)
            unreadable += more
        test = ImageFiles(test_samples, names)
        if val_is_test:  # the test split validates: --exclude leaves its listed files out too
            test_samples, more_excluded = leave_out(test_samples, exclude)
            excluded += more_excluded
            test = ImageFiles(test_samples, names)
            train, val, source = full, test, ("val" if test_dir.name == "val" else "test")
        else:
            tr, held = stratified_split(full.targets, val_split, seed)
            train, val, source = Subset(full, tr), Subset(full, held), "held-out"
    else:
        if val_split <= 0:
            raise DataError(f"{train_dir} has no test/ or val/ folder; give --val-split > 0 to hold out validation images")
        tr, held = stratified_split(full.targets, val_split, seed)
        train, val, source = Subset(full, tr), Subset(full, held), "held-out"
        test = val
    # Image-folder statistics are measured only if training normalises with them (evaluation never does).
    return Splits(spec, train, val, test, names, mean, std, native_size, source, unreadable, excluded)


def channel_stats(dataset: Images, limit: int = 500) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and std of up to ``limit`` evenly spaced images, in [0, 1] units."""
    import numpy as np

    n = len(dataset)
    step = max(1, n // limit)
    sums = np.zeros(3)
    sq = np.zeros(3)
    count = 0
    for i in range(0, n, step):
        try:
            img, _ = dataset[i]
        except Exception:  # an unreadable image: training skips (or, with --strict, refuses) it
            continue
        arr = np.asarray(img.resize((64, 64)) if max(img.size) > 64 else img, dtype=np.float64) / 255.0
        flat = arr.reshape(-1, 3)
        sums += flat.sum(0)
        sq += (flat**2).sum(0)
        count += flat.shape[0]
    if count == 0:
        raise DataError("no training image could be read; run `tlwork check-data` on the dataset to list the broken files")
    mean = sums / count
    std = np.sqrt(np.maximum(sq / count - mean**2, 1e-12))
    r, g, b = (round(float(x), 4) for x in mean)
    sr, sg, sb = (round(float(x), 4) for x in std)
    return (r, g, b), (sr, sg, sb)


def targets_of(dataset: Images) -> list[int]:
    """Integer labels of a dataset, without decoding images."""
    return list(getattr(dataset, "targets"))
