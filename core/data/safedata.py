"""Training data that survives broken image files and resumes exactly.

``SafeImages`` wraps a raw (PIL image, label) dataset for a ``DataLoader``. An image that
cannot be read (zero bytes, truncated, corrupt, a decompression bomb) becomes an
``Unreadable`` record instead of an exception, and ``collate`` drops such records from the
batch and hands them on, so the training loop can log their names and go on (or, with
``--strict``, stop). Each sample's augmentation draws from its own RNG stream seeded by
(run seed, epoch, sample index), never from the process-wide one: a resumed run, or one with
a different number of loader processes, augments every image exactly as an uninterrupted
run does. Loader processes leave SIGINT, SIGHUP and SIGTERM to the main process
(``worker_options``), so Ctrl+C, a dropped SSH session or a ``kill -TERM`` of the whole
process group stops the run cleanly instead of killing its workers.
"""

from __future__ import annotations

import functools
import hashlib
import multiprocessing
import multiprocessing.context
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data._utils.collate import default_collate

from core.data.datasets import Images, sample_path
from core.data.images import classify_image_error
from core.errors import DataError


@dataclass(frozen=True)
class Unreadable:
    """A sample whose image could not be loaded."""

    index: int
    path: str
    kind: str  # one of core.data.IMAGE_FAULTS
    reason: str


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample's augmentation in one epoch."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class SafeImages(Dataset):
    """``transform(image), label`` per item; unreadable images come back as ``Unreadable``."""

    def __init__(self, base: Images, transform: Callable[[Any], torch.Tensor], seed: int = 0, seeded: bool = True) -> None:
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


def _stop_signals() -> set[int]:
    """The signals that stop a run: the main process handles them, loader processes must not die of them."""
    return {getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)}


def _await_parent_sigterm(parent: int) -> None:
    """In a loader process: end at a SIGTERM from the training process only (its DataLoader's terminate())."""
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == parent:
            os._exit(0)  # as torch's own worker SIGTERM handler does for its parent
        # From anyone else (``kill -TERM -PGID``, a scheduler, ``timeout``): the main process stops the run.


def shield_worker(_worker_id: int) -> None:
    """Loader-process init: leave Ctrl+C, hang-ups and SIGTERM to the main process, which stops cleanly.

    A terminal sends SIGINT (Ctrl+C) and SIGHUP (a dropped SSH session) to the whole process
    group, and so do job schedulers and ``timeout`` with SIGTERM; a worker killed by one would
    make the main process fail ("DataLoader worker killed") instead of finishing the batch and
    saving a checkpoint. SIGINT and SIGHUP are ignored. SIGTERM stays blocked and a thread
    takes each one: the DataLoader's own ``terminate()`` of a stuck worker (sent by the parent)
    still ends it, any other sender is ignored. A SIGKILLed training process still takes its
    workers with it: torch's worker watchdog ends a worker whose parent is gone.
    """
    term = getattr(signal, "SIGTERM", None)
    ignored = _stop_signals() - {term}
    release = set(ignored)
    if hasattr(signal, "pthread_sigmask") and hasattr(signal, "sigwaitinfo") and term is not None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {term})  # before the thread starts: it inherits the mask
        threading.Thread(target=_await_parent_sigterm, args=(os.getppid(),), name="tlwork-sigterm", daemon=True).start()
    elif term is not None:
        release.add(term)  # no sigwaitinfo (macOS): SIGTERM keeps its default, as the DataLoader expects
    for sig in ignored:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, release)  # blocked since the fork (_shielded_fork_context)


@functools.lru_cache(maxsize=None)
def _shielded_fork_context() -> Any:
    """A fork context whose processes start with the stop signals blocked (see ``shield_worker``)."""
    ctx = multiprocessing.context

    class ShieldedForkProcess(ctx.ForkProcess):  # type: ignore[name-defined,misc]
        """Forked with SIGINT, SIGTERM and SIGHUP blocked, until the worker's init has set them up.

        Without it a signal to the process group in the milliseconds between the fork and the
        worker's init (every epoch starts new workers) would still kill the worker. Signals the
        training process gets meanwhile stay pending and arrive as soon as the fork returns.
        """

        @staticmethod
        def _Popen(process_obj: Any) -> Any:
            old = signal.pthread_sigmask(signal.SIG_BLOCK, _stop_signals())
            try:
                return ctx.ForkProcess._Popen(process_obj)  # type: ignore[attr-defined]
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)  # the parent only: the child runs the worker

    class ShieldedForkContext(ctx.ForkContext):  # type: ignore[name-defined,misc]
        Process = ShieldedForkProcess

    return ShieldedForkContext()


def worker_options(workers: int) -> dict[str, Any]:
    """DataLoader keyword arguments that keep stop signals away from its worker processes."""
    if workers <= 0:
        return {}
    options: dict[str, Any] = {"worker_init_fn": shield_worker}
    # Only where the loader would fork anyway (Linux): spawned workers start with a clean slate.
    if hasattr(signal, "pthread_sigmask") and multiprocessing.get_start_method() == "fork":
        options["multiprocessing_context"] = _shielded_fork_context()
    return options


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
        generator=torch.Generator().manual_seed(seed),
        **worker_options(workers),
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
