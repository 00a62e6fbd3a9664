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

import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from core.config import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
DEMO_DIR = Path(__file__).parent / "demo_data"
CIFAR_URLS = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-batches-py"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python"),
}


class DataError(ConfigError):
    """The dataset cannot be used as given; the message names the fix."""


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


def open_rgb(path: str | Path) -> Image.Image:
    """Decode an image file fully and convert it to RGB (CMYK, RGBA, L and P included).

    A possible decompression bomb (more than ``Image.MAX_IMAGE_PIXELS`` pixels) is an error,
    never a warning, and is refused before its pixels are decoded; a truncated file is an
    error too (Pillow's ``LOAD_TRUNCATED_IMAGES`` stays off).
    """
    with Image.open(path) as img:
        refuse_bomb(img)
        img.load()
        if img.mode == "P" and "transparency" in img.info:
            return img.convert("RGBA").convert("RGB")
        return img.convert("RGB")


# Pillow only warns between MAX_IMAGE_PIXELS and twice that. tlwork's policy is an error, set
# once for the process (a filter changed per call would race between decoding threads), and
# checked again by ``refuse_bomb`` in case something resets the filters.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def refuse_bomb(img: Image.Image) -> None:
    """Raise ``DecompressionBombError`` for an opened image over ``Image.MAX_IMAGE_PIXELS``."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and img.width * img.height > limit:
        raise Image.DecompressionBombError(
            f"{img.width}x{img.height} = {img.width * img.height} pixels is over the limit of {limit}"
        )


IMAGE_FAULTS = ("zero-byte", "truncated", "too-large", "unreadable")
"""How an image file can fail to load, as ``classify_image_error`` names it."""


def classify_image_error(path: str | Path, exc: BaseException) -> tuple[str, str]:
    """(kind, one-line reason) for an error raised while loading ``path``; kind is in ``IMAGE_FAULTS``."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return "too-large", f"refused as a possible decompression bomb ({text})"
    try:
        empty = os.path.getsize(path) == 0
    except OSError:
        return "unreadable", f"cannot be opened ({text})"
    if empty:
        return "zero-byte", "empty file (0 bytes)"
    if isinstance(exc, UnidentifiedImageError):
        return "unreadable", "not an image Pillow can read"
    if "truncated" in text.lower() or isinstance(exc, EOFError):
        return "truncated", f"truncated ({text})"
    return "unreadable", f"corrupt ({type(exc).__name__}: {text})"


def quick_check(path: str, full: bool = False) -> tuple[str, str] | None:
    """(kind, reason) when ``path`` is not a usable image, else None.

    ``full`` decodes the whole image. Otherwise the check is cheap for JPEG and PNG: it reads
    the header (catching empty files, non-images and decompression bombs) and the
    end-of-image marker (catching truncation); other formats, and files whose marker is
    missing, are decoded fully to be sure.
    """
    try:
        with Image.open(path) as img:
            fmt = img.format
            refuse_bomb(img)
            if fmt in _END_MARKERS and not full:
                with open(path, "rb") as fh:
                    fh.seek(max(0, os.path.getsize(path) - 64))
                    if _END_MARKERS[fmt] in fh.read().rstrip(b"\0\r\n "):
                        return None
            img.load()
    except Exception as exc:  # any decoder error means the file is left out
        return classify_image_error(path, exc)
    return None


_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}
FULL_CHECK_LIMIT = 20_000
"""Folders with at most this many images are decoded in full before training (a few seconds);
larger ones get the cheap check, and the streaming loader skips what fails later."""


SMALL_IMAGE_PIXELS = 128 * 128
"""Below this many pixels an image decodes in tens of microseconds, mostly holding the GIL."""


def decode_threads(paths: Sequence[str], cap: int = 16) -> int:
    """How many threads to decode ``paths`` in: one per core (at most ``cap``) for large images.

    Pillow releases the GIL while it decodes, so threads pay off on photos; a CIFAR-sized
    image spends most of its time in Python holding the GIL, and two threads contending for
    it decode 32x32 JPEGs half as fast as one (measured on 2 cores). A few files spread
    over the list decide, from their headers.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for path in list(paths)[:: max(1, len(paths) // 8)][:8]:
        try:
            with Image.open(path) as img:
                if img.width * img.height >= SMALL_IMAGE_PIXELS:
                    return max(1, min(cap, cores))
        except Exception:  # unreadable files are reported by the check itself
            continue
    return 1


def thread_map(fn: Any, items: Sequence[Any], threads: int) -> list[Any]:
    """``[fn(x) for x in items]``, in ``threads`` threads when that is more than one."""
    if threads <= 1:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, items, chunksize=64))


def screen_images(
    samples: list[tuple[str, int]], threads: int | None = None, full: bool = True
) -> tuple[list[tuple[str, int]], list[tuple[str, str, str]]]:
    """(usable samples, [(path, kind, reason)] left out), checking large files in a few threads.

    Up to ``FULL_CHECK_LIMIT`` files are decoded in full unless ``full`` is False.
    """
    from functools import partial

    paths = [path for path, _ in samples]
    check = partial(quick_check, full=full and len(paths) <= FULL_CHECK_LIMIT)
    results = thread_map(check, paths, threads or decode_threads(paths, 8))
    kept = [sample for sample, bad in zip(samples, results) if bad is None]
    left = [(path, *bad) for path, bad in zip(paths, results) if bad is not None]
    return kept, left


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
