"""The errors tlwork raises on purpose, each with a kind and an exit code (no torch here).

Every error a user can act on is a ``TlworkError``: its message is one line naming the
problem and the fix, ``kind`` names the family and ``exit_code`` is what the CLI exits
with. Front ends map errors through ``exit_code_of`` and ``is_user_error`` alone, so the
CLI, ``classify``, ``check-data`` and the TUI cannot disagree.

The families:

- ``ConfigError`` (usage, exit 2): a bad option or value, an unknown model, backbone or
  dataset, a run that cannot be resumed as asked;
- ``DataError`` and ``WeightsUnavailable`` (unavailable, exit 3): a dataset or weights that
  cannot be downloaded or read; the message says what to place where;
- ``RunFault`` and its kinds (exits 6-9): a run that met a non-finite loss, ran out of
  memory, could not write a file, or lost a data-parallel worker. Each leaves the run's last
  good checkpoint in place;
- ``ExportMismatch`` (exit 10): an exported model whose outputs disagree with PyTorch's
  beyond the tolerance; nothing was written.

``out_of_memory`` and ``write_failed`` build the faults' messages; ``suggest_batch_size``
proposes the batch size to try after an out-of-memory.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

EXIT_OK = 0
EXIT_ERROR = 1  # an unexpected error: a traceback on stderr
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_STOPPED = 4  # not an error: the run stopped on a signal after saving a checkpoint
EXIT_UNREADABLE = 5  # not an error: classify could not read some of the images
EXIT_NONFINITE = 6
EXIT_OUT_OF_MEMORY = 7
EXIT_WRITE_FAILED = 8
EXIT_WORKER_LOST = 9
EXIT_EXPORT_MISMATCH = 10
EXIT_INTERRUPTED = 130


class TlworkError(Exception):
    """An error with a one-line message a user can act on."""

    kind = "error"
    exit_code = EXIT_ERROR


class ConfigError(TlworkError, ValueError):
    """A configuration that cannot run; the message is one line naming the problem and the fix."""

    kind = "usage"
    exit_code = EXIT_USAGE


class DataError(TlworkError):
    """The dataset cannot be used as given (missing, unreadable, empty, one class); the message names the fix."""

    kind = "unavailable"
    exit_code = EXIT_UNAVAILABLE


class WeightsUnavailable(TlworkError):
    """Pretrained weights could not be downloaded or read; the message says what to place where."""

    kind = "unavailable"
    exit_code = EXIT_UNAVAILABLE


class RunFault(TlworkError):
    """A run ended on a fault; the message says where, what was kept and what to try."""

    kind = "fault"
    exit_code = EXIT_ERROR


class NonFiniteLoss(RunFault):
    """The loss (or the weights) became NaN or infinite."""

    kind = "nonfinite"
    exit_code = EXIT_NONFINITE


class OutOfMemory(RunFault):
    """The device ran out of memory at ``batch_size``."""

    kind = "oom"
    exit_code = EXIT_OUT_OF_MEMORY

    def __init__(self, message: str, batch_size: int | None = None) -> None:
        super().__init__(message)
        self.batch_size = batch_size


class CheckpointWriteFailed(RunFault):
    """A checkpoint or run file could not be written (disk full, read-only, file too large)."""

    kind = "write"
    exit_code = EXIT_WRITE_FAILED


class WorkerLost(RunFault):
    """Another worker of a data-parallel job died, left or stopped answering."""

    kind = "worker-lost"
    exit_code = EXIT_WORKER_LOST


class ExportMismatch(TlworkError):
    """An exported model disagrees with the PyTorch model beyond the tolerance; no file was written."""

    kind = "mismatch"
    exit_code = EXIT_EXPORT_MISMATCH


def is_user_error(error: BaseException | None) -> bool:
    """True for errors whose one-line message is the whole story (no traceback needed)."""
    return isinstance(error, TlworkError)


def exit_code_of(error: BaseException) -> int:
    """The CLI's exit code for ``error``: its own for a ``TlworkError``, else 1."""
    return error.exit_code if isinstance(error, TlworkError) else EXIT_ERROR


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


def write_failed(path: str | Path, exc: OSError, kept: str | None) -> CheckpointWriteFailed:
    """The error for a failed checkpoint write, saying the previous checkpoint is intact."""
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
