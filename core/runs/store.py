"""The run store: ``runs/<name>/`` with config.json, metrics.jsonl, status.json and the bundle.

``create_run_dir`` makes a fresh, sanitised run folder (never outside the runs folder, never
reusing one); ``MetricsWriter`` appends JSON lines and flushes each; ``list_runs`` reads
every run's summary without loading torch, tolerating damaged or half-written runs;
``resolve_model`` turns ``last``, a run name, a run directory or a bundle path into a bundle
folder.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from core.config import RunConfig, check_run_name
from core.errors import ConfigError


@dataclass(frozen=True)
class RunSummary:
    """One row of ``tlwork runs``."""

    name: str
    path: str
    status: str  # running | finished | stopped | failed | interrupted | killed | unknown
    mode: str
    backbone: str
    dataset: str
    epochs_done: int
    epochs: int
    val_accuracy: float | None
    best_val_accuracy: float | None
    started: float
    seconds: float | None
    has_bundle: bool
    kept_epoch: int | None = None  # the epoch the bundle holds (--keep best or last), once finished

    @property
    def model(self) -> str:
        """What the runs lists show for the bundle: ``epoch 4``, ``yes`` or ``-``."""
        if not self.has_bundle:
            return "-"
        return f"epoch {self.kept_epoch}" if self.kept_epoch else "yes"


def default_name(config: RunConfig) -> str:
    """``20261127-184501-resnet18-finetune``: sortable, readable, safe as a folder name."""
    backbone = config.backbone.split(":")[-1].replace("/", "-")
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{backbone}-{config.mode}"
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in base)[:100]


def create_run_dir(config: RunConfig) -> Path:
    """A new folder under ``config.runs_dir``; a taken name gets ``-2``, ``-3``..."""
    name = config.name or default_name(config)
    check_run_name(name)
    root = Path(config.runs_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    candidate, n = root / name, 1
    while True:
        try:
            candidate.mkdir()
            break
        except FileExistsError:
            n += 1
            candidate = root / f"{name}-{n}"
    if candidate.resolve().parent != root.resolve():
        raise ConfigError(f"--name {name!r} would write outside {root}")
    return candidate


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically replace a small JSON file."""
    from core.runs.store import atomic_write

    atomic_write(path, (json.dumps(data, indent=2) + "\n").encode())


class MetricsWriter:
    """Appends one JSON object per line to metrics.jsonl and flushes it at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: TextIO = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        """Append a record with a wall-clock timestamp."""
        self._fh.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
        self._fh.flush()

    def close(self) -> None:
        """Close the file (idempotent)."""
        if not self._fh.closed:
            self._fh.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every intact line of a run's metrics.jsonl (a torn last line is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    out: list[dict[str, Any]] = []
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def read_json(path: Path) -> dict[str, Any]:
    """A small JSON object file (config.json, status.json), or {} when it is missing, damaged or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_status(run_dir: Path) -> dict[str, Any]:
    """A run's status.json, or {} when it is missing or damaged."""
    return read_json(Path(run_dir) / "status.json")


def read_config(run_dir: Path | None) -> RunConfig | None:
    """A run's config.json as a ``RunConfig``, or None when there is none or it is damaged.

    For showing and reusing a run's settings; resuming reads it strictly instead
    (``core.runs.resumption.load_run_config``), since a damaged config must not train.
    """
    if run_dir is None:
        return None
    data = read_json(Path(run_dir) / "config.json")
    if not data:
        return None
    try:
        return RunConfig.from_dict(data)
    except (TypeError, ValueError):
        return None


def summarize(run_dir: Path) -> RunSummary:
    """A run's summary from its files; damaged files give an ``unknown`` row, not an error."""
    config = read_json(run_dir / "config.json")
    status = read_status(run_dir)
    metrics = read_metrics(run_dir)
    epochs = [m for m in metrics if m.get("event") == "epoch_ended"]
    accs = [m["val_accuracy"] for m in epochs if isinstance(m.get("val_accuracy"), (int, float))]
    finished = next((m for m in reversed(metrics) if m.get("event") == "run_finished"), {})
    kept = finished.get("kept_epoch") if isinstance(finished.get("kept_epoch"), int) else None
    kept_acc = finished.get("val_accuracy") if kept and isinstance(finished.get("val_accuracy"), (int, float)) else None
    total = config.get("epochs", 0) + (config.get("probe_epochs", 0) if config.get("mode") == "probe-then-finetune" else 0)
    state = status.get("status", "unknown")
    if state == "running":
        from core.runs.lock import is_running

        if not is_running(run_dir):  # its lock is free: the process died (SIGKILL, power loss)
            state = "killed"
    return RunSummary(
        name=run_dir.name,
        path=str(run_dir),
        status=state,
        mode=config.get("mode", "?"),
        backbone=config.get("backbone", "?"),
        dataset=config.get("dataset", "?"),
        epochs_done=len(epochs),
        epochs=int(total or 0),
        val_accuracy=kept_acc if kept_acc is not None else accs[-1] if accs else None,
        best_val_accuracy=max(accs) if accs else None,
        started=float(status.get("started", (run_dir / "config.json").stat().st_mtime if (run_dir / "config.json").exists() else 0)),
        seconds=status.get("seconds"),
        has_bundle=(run_dir / "model.json").is_file(),
        kept_epoch=kept,
    )


def list_runs(runs_dir: str | Path = "runs") -> list[RunSummary]:
    """All runs under ``runs_dir``, newest first."""
    root = Path(runs_dir).expanduser()
    if not root.is_dir():
        return []
    runs = [summarize(d) for d in root.iterdir() if d.is_dir() and (d / "config.json").exists()]
    return sorted(runs, key=lambda r: (r.started, r.name), reverse=True)


def resolve_model(ref: str, runs_dir: str | Path = "runs") -> Path:
    """A bundle folder for ``last``, a run name, a run directory or a bundle path."""
    if ref == "last":
        finished = [r for r in list_runs(runs_dir) if r.has_bundle]
        if not finished:
            raise ConfigError(f"no finished run with a model under {runs_dir}/; train one with `tlwork run` first")
        return Path(finished[0].path)
    p = Path(ref).expanduser()
    candidates = [p, Path(runs_dir).expanduser() / ref] if not p.is_absolute() else [p]
    for c in candidates:
        if (c.is_file() and c.name in ("model.json", "model.safetensors")) or (c / "model.json").is_file():
            return c if c.is_dir() else c.parent
    for c in candidates:
        if c.is_dir() and (c / "config.json").is_file():
            raise ConfigError(f"{c}: this run has no final model yet (stopped or still running); resume or finish it first")
    raise ConfigError(f"{ref}: no such run or bundle; pass a run directory, a model.json path or 'last' (see `tlwork runs`)")


_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a crash leaves either the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; a model file is as readable as any other
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


