"""Image files: the extensions tlwork reads, decoding to RGB, decompression-bomb refusal, the one wording of an image error, and screening a folder's files before training."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

# Pillow only warns between MAX_IMAGE_PIXELS and twice that. tlwork's policy is an error, set
# once for the process (a filter changed per call would race between decoding threads), and
# checked again by ``refuse_bomb`` in case something resets the filters.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

_T = TypeVar("_T")
_R = TypeVar("_R")


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


def refuse_bomb(img: Image.Image) -> None:
    """Raise ``DecompressionBombError`` for an opened image over ``Image.MAX_IMAGE_PIXELS``."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and img.width * img.height > limit:
        raise Image.DecompressionBombError(
            f"{img.width}x{img.height} = {img.width * img.height} pixels is over the limit of {limit}"
        )


IMAGE_FAULTS = ("zero-byte", "truncated", "too-large", "unreadable")
"""How an image file can fail to load, as ``classify_image_error`` names it."""


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def classify_image_error(path: str | Path, exc: BaseException) -> tuple[str, str]:
    """(kind, one-line reason) for an error raised while loading ``path``; kind is in ``IMAGE_FAULTS``.

    The one wording of an image failure: ``check-data``, the training loader's skip log and
    ``classify`` all report through it. ``path`` may name no file (a CIFAR sample), so
    nothing is said about the file unless the error or the file itself shows it.
    """
    text = one_line(exc)
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return "too-large", f"refused as a possible decompression bomb ({text})"
    if isinstance(exc, FileNotFoundError):
        return "unreadable", "no such file"
    if isinstance(exc, IsADirectoryError) or Path(path).is_dir():
        return "unreadable", "a folder, not an image file"
    if _size(path) == 0:
        return "zero-byte", "empty file (0 bytes)"
    if isinstance(exc, UnidentifiedImageError):
        return "unreadable", "not an image Pillow can read"
    if "truncated" in text.lower() or isinstance(exc, EOFError):
        return "truncated", f"truncated ({text})"
    if isinstance(exc, PermissionError):
        return "unreadable", "cannot be read (permission denied)"
    if isinstance(exc, OSError) and exc.errno is not None:  # the file system's error, not the decoder's
        return "unreadable", f"cannot be read ({exc.strerror or text})"
    return "unreadable", f"corrupt ({type(exc).__name__}: {text})"


def image_error(path: str | Path, exc: BaseException) -> str:
    """``PATH: reason``, the one-line message for an error raised while loading ``path``."""
    return f"{path}: {classify_image_error(path, exc)[1]}"


def _size(path: str | Path) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


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


def thread_map(fn: Callable[[_T], _R], items: Iterable[_T], threads: int) -> list[_R]:
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


