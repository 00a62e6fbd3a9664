"""The lock a training process holds on its run directory."""

from __future__ import annotations

import os
from pathlib import Path

LOCK = ".lock"



_HELD: set[int] = set()
"""File descriptors of the run locks this process holds."""


def _drop_locks_in_child() -> None:
    # A forked child (a DataLoader worker) shares the lock's open file; closing its copy
    # leaves the lock to the parent alone, so the lock ends when the training process does.
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


class RunLock:
    """An exclusive ``flock`` on ``run_dir/.lock`` for as long as a process trains in it.

    The kernel drops it when the process ends, however it ends (SIGKILL included); forked
    loader processes do not keep it alive.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK
        self.fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; False when another live process holds it (always True without fcntl)."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, resume trusts the user
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        _HELD.add(fd)
        return True

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self.fd is not None:
            _HELD.discard(self.fd)
            os.close(self.fd)
            self.fd = None

    def holder(self) -> str:
        """The pid written by the process holding the lock, or '?'."""
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"


def is_running(run_dir: Path) -> bool:
    """True while a process trains in ``run_dir`` (its lock is held); a killed run is not running."""
    if not (run_dir / LOCK).exists():
        return False
    lock = RunLock(run_dir)
    if lock.acquire():
        lock.release()
        return False
    return True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_locks_in_child)

