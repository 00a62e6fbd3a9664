"""Faults a training run can meet, as one-line errors a front end can map to exit codes.

A run that hits a non-finite loss, runs out of device memory or cannot write its checkpoint
raises a ``RunFault`` subclass. Each is a ``ConfigError`` (a one-line message that names the
problem and the fix), so front ends that already show configuration errors cleanly show
these too; ``kind`` lets the CLI give each its own exit code. Every fault leaves the run's
last good checkpoint in place. ``is_out_of_memory`` recognises the out-of-memory errors of
CUDA, MPS and the CPU allocator; ``suggest_batch_size`` proposes the size to try next.
"""

from __future__ import annotations

from core.config import ConfigError


class RunFault(ConfigError):
    """A run ended on a fault; the message says where, what was kept and what to try."""

    kind = "fault"


class NonFiniteLoss(RunFault):
    """The loss (or the weights) became NaN or infinite."""

    kind = "nonfinite"


class OutOfMemory(RunFault):
    """The device ran out of memory at ``batch_size``."""

    kind = "oom"

    def __init__(self, message: str, batch_size: int | None = None) -> None:
        super().__init__(message)
        self.batch_size = batch_size


class CheckpointWriteFailed(RunFault):
    """A checkpoint or run file could not be written (disk full, read-only, file too large)."""

    kind = "write"


_OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory", "failed to allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's OutOfMemoryError and the allocator errors MPS and the CPU raise instead."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    if isinstance(exc, (RuntimeError, MemoryError)):
        text = str(exc).lower()
        return isinstance(exc, MemoryError) or any(m in text for m in _OOM_MARKERS)
    return False


def suggest_batch_size(failed: int) -> int:
    """The largest power of two below ``failed`` (at least 1): a size worth trying next."""
    size = 1
    while size * 2 < failed:
        size *= 2
    return size


def out_of_memory(device: str, batch_size: int, where: str) -> OutOfMemory:
    """The error for an out-of-memory at ``batch_size``, naming a size to try."""
    hint = f"try --batch-size {suggest_batch_size(batch_size)} or --batch-size auto" if batch_size > 1 else (
        "even one image does not fit; try a smaller --image-size or backbone, or --mode linear-probe"
    )
    return OutOfMemory(f"{device} ran out of memory at batch size {batch_size} ({where}); {hint}", batch_size)


def write_failed(path: object, exc: OSError, kept: str | None) -> CheckpointWriteFailed:
    """The error for a failed checkpoint write, saying the previous checkpoint is intact."""
    import errno
    import os
    from pathlib import Path

    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        fix = "free disk space (or raise the file-size limit)"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "make the runs folder writable"
    else:
        fix = "check the runs folder"
    if kept:
        run = Path(str(path)).parent
        then = f"the previous checkpoint {kept} is intact; {fix}, then continue with `tlwork run --resume {run}`"
    else:
        then = f"no checkpoint was saved yet; {fix} and start the run again"
    return CheckpointWriteFailed(f"could not write {path}: {reason}; {then}")


def kept(last_checkpoint: str | None) -> str:
    """The clause saying which checkpoint a failed run leaves behind."""
    if last_checkpoint:
        return f"the last good checkpoint {last_checkpoint} is kept"
    return "no checkpoint was saved before it"


def first_nonfinite(losses: list[float], batches: list[int]) -> tuple[int, str] | None:
    """(batch index, value) of the first NaN or infinite loss, or None."""
    for loss, batch in zip(losses, batches):
        if loss != loss or loss in (float("inf"), float("-inf")):
            return batch, str(loss)
    return None


def finite_weights(model: object) -> bool:
    """True when every floating-point parameter and buffer is finite (one device sync)."""
    import torch

    tensors = [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]  # type: ignore[attr-defined]
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all().item())


def nonfinite_advice(last_checkpoint: str | None) -> str:
    """What to try after a non-finite loss."""
    if last_checkpoint:
        return "lower --lr in a new run, or resume with --skip-nonfinite to skip such batches"
    return "lower --lr, or pass --skip-nonfinite to skip such batches"


def nonfinite_message(value: str, epoch: int, batch: int, step: int, last_checkpoint: str | None) -> str:
    """The one-line report of a non-finite loss that stops a run."""
    return (
        f"loss is {value} at epoch {epoch}, batch {batch} (step {step}); the run stopped and "
        f"{kept(last_checkpoint)}; {nonfinite_advice(last_checkpoint)}"
    )
