"""Datasets: CIFAR-10/100, image folders and the shipped demo set, split and described.

``load_splits(spec, data_dir, val_split, seed)`` returns ``Splits``: the raw train,
validation and test datasets (items are ``(PIL image, label)``), the class names, the
dataset's mean/std and its native image size. Datasets with a test split validate on it, as
the notebook does; a folder with only training images holds out a stratified, seeded
``val_split`` fraction, so the same config always yields the same split. A dataset that
cannot be downloaded, an empty folder or a single class is a ``DataError`` with a one-line
message that says what to put where.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from PIL import Image
from torch.utils.data import Dataset

from core.data.images import open_rgb, screen_images
from core.data.layout import scan_class_folders
from core.errors import DataError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
DEMO_DIR = Path(__file__).parent / "demo_data"
CIFAR_URLS = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-batches-py"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python"),
}




@dataclass
class Splits:
    """A dataset ready to train on."""

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    class_names: list[str]
    mean_: tuple[float, float, float] | None  # None: measured from the training images when first asked
    std_: tuple[float, float, float] | None
    native_size: int | None
    val_source: str  # "test" when validating on the test split, else "held-out"
    unreadable: list[tuple[str, str, str]] = field(default_factory=list)  # (path, kind, reason), left out

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

    def __init__(self, base: Any, indices: Sequence[int]) -> None:
        self.base = base
        self.indices = list(indices)
        base_targets = list(getattr(base, "targets"))
        self.targets = [base_targets[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.base[self.indices[index]]




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
    spec: str, data_dir: str = "data", val_split: float = 0.1, seed: int = 0, scoring: bool = False
) -> Splits:
    """The dataset named by ``spec``: cifar10, cifar100, demo or imagefolder:PATH.

    ``scoring``: only the test or validation images will be read (evaluation). When a test
    folder exists, the training folder is then not screened and the test folder gets the
    cheap check; a held-out split is screened as in training, so it comes out the same.
    """
    if spec in CIFAR_URLS:
        return _cifar(spec, data_dir)
    if spec == "demo":
        return _folders("demo", DEMO_DIR / "train", DEMO_DIR / "test", val_split, seed, CIFAR10_MEAN, CIFAR10_STD, 32)
    if spec.startswith("imagefolder:"):
        root = Path(spec[len("imagefolder:"):]).expanduser()
        if not root.is_dir():
            raise DataError(f"--dataset {spec}: folder {root} does not exist")
        train_dir = root / "train" if (root / "train").is_dir() else root
        test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
        return _folders(spec, train_dir, test_dir, val_split, seed, None, None, None, scoring)
    raise DataError(f"unknown --dataset {spec!r}; choose one of: cifar10, cifar100, demo, imagefolder:PATH")


def _cifar(name: str, data_dir: str) -> Splits:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    url, folder = CIFAR_URLS[name]
    root = Path(data_dir).expanduser()
    try:
        train = cls(str(root), train=True, download=True)
        test = cls(str(root), train=False, download=True)
    except Exception as exc:
        raise DataError(
            f"could not load {name.upper()} from {root} ({type(exc).__name__}); "
            f"download {url} into {root}/ (or extract it to {root / folder}), or pick --dataset demo"
        ) from None
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
    return Splits(name, train, test, test, list(train.classes), mean, std, 32, "test")


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
) -> Splits:
    samples, names = scan_class_folders(train_dir)
    if not samples:
        raise DataError(f"{train_dir}: no images found; expected {train_dir}/<class>/<image>.jpg")
    skip_train = spec == "demo" or (scoring and test_dir is not None)
    samples, unreadable = (samples, []) if skip_train else screen_images(samples)
    present = sorted({label for _, label in samples})
    if len(present) < 2:
        raise DataError(f"{train_dir}: only one class with images ({names[present[0]]!r}); a classifier needs two or more")
    full = ImageFiles(samples, names)
    if test_dir is not None:
        test_samples, _ = scan_class_folders(test_dir, names)
        if spec != "demo":
            test_samples, more = screen_images(test_samples, full=not scoring)
            unreadable += more
        test = ImageFiles(test_samples, names)
        train, val, source = full, test, "test"
    else:
        if val_split <= 0:
            raise DataError(f"{train_dir} has no test/ or val/ folder; give --val-split > 0 to hold out validation images")
        tr, held = stratified_split(full.targets, val_split, seed)
        train, val, source = Subset(full, tr), Subset(full, held), "held-out"
        test = val
    # Image-folder statistics are measured only if training normalises with them (evaluation never does).
    return Splits(spec, train, val, test, names, mean, std, native_size, source, unreadable)


def channel_stats(dataset: Any, limit: int = 500) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
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
    return tuple(round(float(x), 4) for x in mean), tuple(round(float(x), 4) for x in std)  # type: ignore[return-value]


def targets_of(dataset: Any) -> list[int]:
    """Integer labels of a dataset, without decoding images."""
    return list(getattr(dataset, "targets"))
