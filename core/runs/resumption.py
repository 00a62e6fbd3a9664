"""Continue a stopped or killed run from its last checkpoint, exactly where it was.

``resume(ref)`` finds the run (a run directory, or a name under the runs folder), refuses
one that is finished, still running (its lock is held) or has no checkpoint yet, reads its
saved config.json with every field's type and every path checked (a config file is input
too), and hands the engine a ``ResumePoint``: the same run directory, the checkpoint's
position, weights, optimiser, scheduler and RNG states. Only settings that cannot change a
healthy run's result may differ from the saved ones (``RESUME_OVERRIDES``). ``RunLock`` is
the lock a training process holds on its run directory (released by the kernel when the
process dies, even by SIGKILL).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from core.config import RunConfig, check_run_name
from core.data.transforms import Preprocessing
from core.device import env_is_main
from core.errors import ConfigError
from core.runs.checkpoint import Position, read_checkpoint
from core.runs.lock import RunLock
from core.runs.store import read_status

RESUME_OVERRIDES = ("device", "workers", "checkpoint_every", "skip_nonfinite", "max_nonfinite", "strict")
"""Settings ``--resume`` accepts anew; every other one comes from the run's config.json.

Not the trackers (``log``, ``mlflow_uri``, ``mlflow_experiment``): they say where the run is
recorded, so a resumed run logs on into the same TensorBoard folder and MLflow run."""

LAST = "checkpoint-last"
BEST = "checkpoint-best"


@dataclass
class ResumePoint:
    """What the engine needs to continue a run."""

    run_dir: Path
    checkpoint: Path
    meta: dict[str, Any]
    tensors: dict[str, Any]
    position: Position


def find_run(ref: str, runs_dir: str | Path = "runs") -> Path:
    """The run directory for ``ref``: a path to one, or a run name under ``runs_dir``."""
    path = Path(ref).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if os.sep not in ref and "/" not in ref:
        check_run_name(ref)  # a bare name must be one safe path component
        candidate = Path(runs_dir).expanduser() / ref
        if candidate.is_dir() and (candidate / "config.json").is_file():
            return candidate
    raise ConfigError(f"--resume {ref}: no such run; pass a run directory or a run name under {runs_dir}/ (see `tlwork runs`)")


def _kinds(annotation: str) -> tuple[tuple[type, ...], bool]:
    """Python types a RunConfig field annotation admits, and whether None is allowed."""
    kinds: set[type] = set()
    parts = [p.strip() for p in annotation.split("|")]
    for part in parts:
        if part == "int":
            kinds.add(int)
        elif part == "float":
            kinds |= {int, float}
        elif part == "bool":
            kinds.add(bool)
        elif part != "None":  # str, a Literal alias or Literal[...]: values are strings
            kinds.add(str)
    return tuple(kinds), "None" in parts


def check_config_types(data: Any, where: Path) -> None:
    """Refuse a config.json whose values have the wrong types (hand-edited or hostile)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: not a run configuration (expected a JSON object)")
    for f in fields(RunConfig):
        if f.name not in data:
            continue
        value = data[f.name]
        if str(f.type).startswith("tuple["):  # a repeatable option (--log): a list of strings in JSON
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise ConfigError(f"{where}: {f.name} has a bad value {value!r}; the run's config.json is damaged")
            continue
        kinds, nullable = _kinds(str(f.type))
        if value is None and nullable:
            continue
        wrong = not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)
        if wrong or (isinstance(value, float) and value != value):
            raise ConfigError(f"{where}: {f.name} has a bad value {value!r}; the run's config.json is damaged")


def _anchor(path: str, origin: str | None) -> Path:
    """A path from a config file, made absolute against the directory the run started in."""
    p = Path(path).expanduser()
    if not p.is_absolute() and origin:
        p = Path(origin) / p
    return p


def load_run_config(run_dir: Path, origin: str | None) -> RunConfig:
    """The run's config.json, type-checked, validated, with its data paths made absolute and checked."""
    where = run_dir / "config.json"
    try:
        data = json.loads(where.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{where}: unreadable ({exc}); the run cannot be resumed") from None
    check_config_types(data, where)
    config = RunConfig.from_dict(data).resolved()
    changes: dict[str, Any] = {}
    if config.dataset.startswith("imagefolder:"):
        folder = _anchor(config.dataset[len("imagefolder:"):], origin)
        if not folder.is_dir():
            raise ConfigError(f"{where}: dataset folder {folder} does not exist; put the data back where the run found it")
        changes["dataset"] = f"imagefolder:{folder}"
    changes["data_dir"] = str(_anchor(config.data_dir, origin))
    # Weights come from the checkpoint: a path in the config is never read on resume.
    return dataclasses.replace(config, **changes)


def prepare(ref: str, runs_dir: str | Path = "runs", overrides: dict[str, Any] | None = None) -> tuple[RunConfig, ResumePoint]:
    """(config, resume point) for ``ref``, or a ConfigError saying why it cannot resume."""


    run_dir = find_run(ref, runs_dir)
    status = read_status(run_dir)
    if status.get("status") == "finished" or (run_dir / "model.json").is_file():
        raise ConfigError(f"run {run_dir} already finished (model {run_dir / 'model.json'}); nothing to resume")

    lock = RunLock(run_dir)
    # torchrun starts every worker at once: only rank 0 probes (and then holds) the lock.
    if env_is_main():
        if not lock.acquire():
            raise ConfigError(f"run {run_dir} is still running (pid {lock.holder()}); stop it first (Ctrl+C or kill -TERM)")
        lock.release()
    checkpoint = run_dir / f"{LAST}.safetensors"
    if not checkpoint.is_file():
        raise ConfigError(f"run {run_dir} has no checkpoint yet (it ended before the first was written); start it again")
    meta, tensors = read_checkpoint(checkpoint)
    position = Position.from_dict(meta.get("position"))
    config = load_run_config(run_dir, meta.get("cwd") if isinstance(meta.get("cwd"), str) else None)
    unknown = set(overrides or {}) - set(RESUME_OVERRIDES)
    if unknown:
        names = ", ".join("--" + n.replace("_", "-") for n in sorted(unknown))
        raise ConfigError(f"--resume takes the run's own settings; {names} cannot change (start a new run instead)")
    config = dataclasses.replace(config, **(overrides or {}))
    config.validate()
    return config, ResumePoint(run_dir, checkpoint.with_suffix(".json"), meta, tensors, position)


def check_same_data(meta: dict[str, Any], class_names: list[str], train_size: int, batch_size: int) -> None:
    """Refuse to resume on a dataset (or batch size) other than the one the checkpoint saw."""
    then = (meta.get("class_names"), meta.get("train_size"), meta.get("batch_size"))
    if then != (list(class_names), train_size, batch_size):
        raise ConfigError(
            f"the data changed since this run's checkpoint ({then[1]} training images in {len(then[0] or [])} "
            f"classes then, {train_size} in {len(class_names)} now); resume needs the same data, or start a new run"
        )


def saved_preprocessing(meta: dict[str, Any]) -> Preprocessing:
    """The checkpoint's preprocessing, so a resumed run normalises exactly as before."""
    try:
        return Preprocessing.from_dict(meta["preprocessing"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError("checkpoint preprocessing is missing or damaged; the run cannot be resumed") from None
