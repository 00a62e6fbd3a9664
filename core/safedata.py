"""Training data that survives broken image files and resumes exactly.

``SafeImages`` wraps a raw (PIL image, label) dataset for a ``DataLoader``. An image that
cannot be read (zero bytes, truncated, corrupt, a decompression bomb) becomes an
``Unreadable`` record instead of an exception, and ``collate`` drops such records from the
batch and hands them on, so the training loop can log their names and go on (or, with
``--strict``, stop). Each sample's augmentation draws from its own RNG stream seeded by
(run seed, epoch, sample index), never from the process-wide one: a resumed run, or one with
a different number of loader processes, augments every image exactly as an uninterrupted
run does. Loader processes ignore SIGINT and SIGHUP, so Ctrl+C or a dropped SSH session
reaches only the main process, which stops the run cleanly, instead of killing its workers.
"""

from __future__ import annotations

import hashlib
import signal
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data._utils.collate import default_collate

from core.data import DataError, classify_image_error


@dataclass(frozen=True)
class Unreadable:
    """A sample whose image could not be loaded."""

    index: int
    path: str
    kind: str  # one of core.data.IMAGE_FAULTS
    reason: str


def sample_path(dataset: Any, index: int) -> str | None:
    """The file behind ``dataset[index]``, looking through ``Subset``-style wrappers."""
    while hasattr(dataset, "indices") and hasattr(dataset, "base"):
        index, dataset = dataset.indices[index], dataset.base
    samples = getattr(dataset, "samples", None)
    if samples is not None and 0 <= index < len(samples):
        return str(samples[index][0])
    return None


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample's augmentation in one epoch."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class SafeImages(Dataset):
    """``transform(image), label`` per item; unreadable images come back as ``Unreadable``."""

    def __init__(self, base: Any, transform: Callable[[Any], torch.Tensor], seed: int = 0, seeded: bool = True) -> None:
        self.base = base
        self.transform = transform
        self.seed = seed
        self.seeded = seeded
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Augment for ``epoch`` (call before iterating; loader processes copy it when they start)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | Unreadable:
        try:
            image, label = self.base[index]
        except Exception as exc:  # any decoder error: Pillow raises OSError, SyntaxError, ValueError...
            path = sample_path(self.base, index) or f"sample {index}"
            kind, reason = classify_image_error(path, exc)
            return Unreadable(index, path, kind, reason)
        if not self.seeded:
            return self.transform(image), label
        # A private stream per sample, then the global RNG exactly as it was: the model's own
        # draws (dropout) see the same sequence whether or not this runs in this process.
        state = torch.get_rng_state()
        torch.manual_seed(sample_seed(self.seed, self.epoch, index))
        try:
            return self.transform(image), label
        finally:
            torch.set_rng_state(state)


def collate(items: Sequence[Any]) -> tuple[Any, Any, tuple[Unreadable, ...]]:
    """``(images, labels, unreadable)``; images and labels are None when no item was readable."""
    bad = tuple(x for x in items if isinstance(x, Unreadable))
    good = [x for x in items if not isinstance(x, Unreadable)]
    if not good:
        return None, None, bad
    images, labels = default_collate(good)
    return images, labels, bad


def unpack(batch: Any) -> tuple[Any, Any, tuple[Unreadable, ...]]:
    """``(images, labels, unreadable)`` from a ``collate`` batch or a plain ``(images, labels)`` one."""
    if len(batch) == 3:
        return batch[0], batch[1], tuple(batch[2])
    images, labels = batch
    return images, labels, ()


def ignore_interrupts(_worker_id: int) -> None:
    """Loader-process init: leave Ctrl+C and hang-ups to the main process, which stops cleanly.

    A terminal sends SIGINT (Ctrl+C) and SIGHUP (a dropped SSH session) to the whole process
    group; a worker killed by one would make the main process fail instead of saving a
    checkpoint. SIGTERM keeps its default: the DataLoader uses it to end stuck workers.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


def make_loader(
    dataset: SafeImages,
    batch_size: int,
    device: torch.device,
    workers: int,
    sampler: Sampler[int] | None = None,
    seed: int = 0,
) -> DataLoader:
    """A loader over ``SafeImages`` with the skipping collate and a private base-seed generator.

    The loader's own generator keeps its per-iterator seed draw off the global RNG, so
    starting an epoch (or resuming in the middle of one) never shifts the model's draws.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        collate_fn=collate,
        worker_init_fn=ignore_interrupts if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )


class SkipLog:
    """Counts and names the unreadable images a run met; ``strict`` turns the first into an error."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.files: dict[str, str] = {}
        self.in_epoch = 0

    def add(self, bad: Iterable[Unreadable]) -> list[str]:
        """Record a batch's unreadable images; returns a log line for each file not seen before."""
        lines = []
        for item in bad:
            if self.strict:
                raise DataError(
                    f"{item.path}: {item.reason}; fix or remove the file (see `tlwork check-data`), "
                    "or run without --strict to skip unreadable images"
                )
            self.in_epoch += 1
            if item.path not in self.files:
                self.files[item.path] = item.reason
                lines.append(f"skipped unreadable image {item.path}: {item.reason}")
        return lines

    def end_epoch(self, epoch: int) -> str | None:
        """A summary line for the epoch, or None when every image was read."""
        count, self.in_epoch = self.in_epoch, 0
        if not count:
            return None
        return (
            f"epoch {epoch}: skipped {count} unreadable image(s); {len(self.files)} file(s) so far "
            "(list them with `tlwork check-data`, or pass --strict to stop on the first)"
        )


def drain(items: list[Unreadable]) -> list[Unreadable]:
    """Take everything out of a shared list of unreadable samples (the pipeline fills it)."""
    out = items[:]
    del items[: len(out)]
    return out
