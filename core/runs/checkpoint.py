"""Resumable training checkpoints, with no pickle: one safetensors file that carries its own state.

A checkpoint ``<stem>.safetensors`` holds the model, the optimiser's state tensors and the
RNG states as tensors, and everything else as JSON in the safetensors header: the position
in the run (stage, epoch, batches done, step, running epoch totals), the optimiser's
hyper-parameters, the scheduler and grad-scaler state, Python's and NumPy's RNG states, and
a SHA-256 over the tensors. Because one file holds it all, one atomic replace (temporary
file, fsync, ``os.replace``, fsync of the folder) moves a checkpoint from old to new: a
crash at any moment leaves the previous checkpoint loadable. ``<stem>.json`` beside it is a
readable copy of the header for people and tools; readers trust the safetensors file. A
write that fails (disk full, file-size limit) raises ``CheckpointWriteFailed`` and leaves
the previous checkpoint in place. Nothing here unpickles: a pickle is rejected as "not a
safetensors file".
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import ConfigError, write_failed
from core.runs.store import atomic_write

FORMAT = "tlwork-checkpoint"
VERSION = 2
MAX_HEADER = 64 * 1024 * 1024  # a safetensors header larger than this is not one of ours
GRAD_PREFIX = "grad."
"""Tensors of gradients accumulated toward an optimiser update not yet taken (``--accumulate``): ``grad.<parameter>``."""


@dataclass
class Position:
    """Where a run is: stage index, epoch (1-based over the run), batches done in it, global step.

    ``epoch_done`` is true once the epoch's validation has run (the checkpoint written at the
    epoch's end); ``loss_sum``, ``correct`` and ``seen`` are the epoch's running training
    totals, so a resumed epoch reports the same figures as an uninterrupted one.
    """

    stage: int
    epoch: int
    batch: int
    step: int
    best_val_accuracy: float = -1.0
    epoch_done: bool = False
    nonfinite_skipped: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0

    @classmethod
    def from_dict(cls, data: Any) -> Position:
        """Rebuild from a checkpoint's JSON, checking every field's type."""
        if not isinstance(data, dict):
            raise ConfigError("checkpoint position is missing; the checkpoint is damaged")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            kind = {"int": int, "float": (int, float), "bool": bool}[str(f.type)]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ConfigError(f"checkpoint position field {f.name!r} has a bad value {value!r}; the checkpoint is damaged")
            values[f.name] = value
        try:
            return cls(**values)
        except TypeError:
            raise ConfigError("checkpoint position is incomplete; the checkpoint is damaged") from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        pairs = ((str(k), _jsonable(v)) for k, v in value.items())
        return {k: v for k, v in pairs if v is not _SKIP}
    if isinstance(value, (list, tuple)):
        return [v for v in map(_jsonable, value) if v is not _SKIP]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return _SKIP


_SKIP = object()


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of CPU tensors, in name order."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key]
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    version, state, gauss = random.getstate()
    meta: dict[str, Any] = {"python": [version, list(state), gauss]}
    try:
        import numpy as np

        name, keys, pos, has_gauss, cached = np.random.get_state()
        tensors["rng.numpy"] = torch.from_numpy(keys.astype("int64"))
        meta["numpy"] = [name, int(pos), int(has_gauss), float(cached)]
    except ImportError:  # numpy is optional to torch; nothing to save without it
        pass
    return tensors, meta


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    position: Position,
    extra: dict[str, Any] | None = None,
    scaler: Any = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``path.safetensors`` atomically (and its readable ``path.json``); returns the json path.

    Raises:
        CheckpointWriteFailed: the file could not be written; the previous one is intact.
    """
    model = getattr(model, "_orig_mod", model)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for idx, slots in opt["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value
    rng_tensors, rng_meta = _rng_state()
    tensors.update(rng_tensors)
    tensors.update(extra_tensors or {})  # e.g. the weights' EMA, gradients accumulated so far
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "sha256": tensor_digest(plain),
        "position": asdict(position),
        "optimizer": {
            "param_groups": _jsonable(opt["param_groups"]),
            "scalars": {
                str(i): {k: v for k, v in s.items() if not isinstance(v, torch.Tensor)} for i, s in opt["state"].items()
            },
        },
        "scheduler": _jsonable(scheduler.state_dict()) if scheduler is not None else None,
        "scaler": _jsonable(scaler.state_dict()) if scaler is not None else None,
        "rng": rng_meta,
        **(extra or {}),
    }
    from safetensors.torch import save

    blob = save(plain, metadata={"format": FORMAT, "tlwork": json.dumps(meta)})
    tensor_path, json_path = path.with_suffix(".safetensors"), path.with_suffix(".json")
    kept = str(json_path) if tensor_path.exists() else None
    try:
        atomic_write(tensor_path, blob)
        _fsync_dir(tensor_path.parent)
        readable = {k: v for k, v in meta.items() if k != "rng"}
        readable["file_sha256"] = hashlib.sha256(blob).hexdigest()
        atomic_write(json_path, (json.dumps(readable, indent=1) + "\n").encode())
    except OSError as exc:
        raise write_failed(tensor_path, exc, kept) from None
    return json_path


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable: fsync the folder that holds it (not possible everywhere)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def copy_checkpoint(source: Path, target: Path) -> Path:
    """Atomically copy checkpoint ``source`` to ``target`` (e.g. last -> best); returns the json path."""
    files = [(source.with_suffix(s), target.with_suffix(s)) for s in (".safetensors", ".json")]
    kept = str(target.with_suffix(".json")) if target.with_suffix(".safetensors").exists() else None
    try:
        for src, dst in files:
            atomic_write(dst, src.read_bytes())
        _fsync_dir(target.parent)
    except OSError as exc:
        raise write_failed(target.with_suffix(".safetensors"), exc, kept) from None
    return target.with_suffix(".json")


def read_header(blob: bytes, where: Path) -> dict[str, Any]:
    """The JSON header of a safetensors blob, read without any deserialiser but ``json``."""
    if len(blob) < 8:
        raise ConfigError(f"{where}: not a safetensors file (too short); the checkpoint is damaged")
    (size,) = struct.unpack("<Q", blob[:8])
    if size > min(MAX_HEADER, len(blob) - 8):
        raise ConfigError(f"{where}: not a safetensors file (bad header); tlwork reads only safetensors checkpoints")
    try:
        header = json.loads(blob[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ConfigError(f"{where}: not a safetensors file (bad header); tlwork reads only safetensors checkpoints") from None
    if not isinstance(header, dict):
        raise ConfigError(f"{where}: not a safetensors file (bad header)")
    return header


def read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(meta, tensors) of a checkpoint (``path`` may name either file), verified against its hash."""
    from safetensors.torch import load

    tensor_path = path.with_suffix(".safetensors")
    try:
        blob = tensor_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{tensor_path}: checkpoint unreadable ({exc.strerror or exc})") from None
    header = read_header(blob, tensor_path)
    extra = header.get("__metadata__") or {}
    if not isinstance(extra, dict) or extra.get("format") != FORMAT or not isinstance(extra.get("tlwork"), str):
        raise ConfigError(f"{tensor_path}: not a tlwork checkpoint")
    try:
        meta = json.loads(extra["tlwork"])
    except json.JSONDecodeError:
        raise ConfigError(f"{tensor_path}: checkpoint state unreadable; the checkpoint is damaged") from None
    if not isinstance(meta, dict) or meta.get("version") != VERSION:
        version = meta.get("version") if isinstance(meta, dict) else None
        raise ConfigError(f"{tensor_path}: checkpoint format version {version!r} is not {VERSION}; this tlwork cannot resume it")
    try:
        tensors = load(blob)
    except Exception as exc:  # safetensors raises its own error type for a damaged body
        raise ConfigError(f"{tensor_path}: checkpoint tensors unreadable ({exc}); the checkpoint is damaged") from None
    if tensor_digest(tensors) != meta.get("sha256"):
        raise ConfigError(f"{tensor_path}: checkpoint tensors do not match their hash; the checkpoint is damaged")
    return meta, tensors


def load_model_state(model: nn.Module, tensors: dict[str, torch.Tensor], prefix: str = "model.") -> None:
    """Load the model part of a checkpoint strictly (``prefix`` ``ema.``: the weights' moving average)."""
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        getattr(model, "_orig_mod", model).load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"checkpoint does not fit this model ({first}); was the run's backbone changed?") from None


def load_optimizer_state(optimizer: torch.optim.Optimizer, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Rebuild an optimiser's state dict from a checkpoint's JSON and tensors."""
    try:
        state: dict[int, dict[str, Any]] = {}
        for idx, scalars in meta["optimizer"]["scalars"].items():
            state[int(idx)] = dict(scalars)
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, slot = key.split(".", 2)
                state.setdefault(int(idx), {})[slot] = value
        optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(f"checkpoint optimiser state does not fit this run ({type(exc).__name__}: {exc})") from None


def load_scheduler_state(scheduler: Any, meta: dict[str, Any]) -> None:
    """Restore a learning-rate scheduler saved by ``save_checkpoint``."""
    state = meta.get("scheduler")
    if scheduler is None or state is None:
        return
    try:
        # LambdaLR saves a None per plain-function lambda; load_state_dict expects the list back.
        scheduler.load_state_dict(dict(state))
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(f"checkpoint scheduler state does not fit this run ({type(exc).__name__}: {exc})") from None


def load_scaler_state(scaler: Any, meta: dict[str, Any]) -> None:
    """Restore a grad scaler's scale and growth tracker, when both sides have one."""
    state = meta.get("scaler")
    if scaler is not None and state:
        scaler.load_state_dict(dict(state))


def restore_rng(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Put torch's (CPU and CUDA), Python's and NumPy's RNGs back where the checkpoint left them."""
    try:
        torch.set_rng_state(tensors["rng.cpu"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
        rng = meta.get("rng") or {}
        if "python" in rng:
            version, state, gauss = rng["python"]
            random.setstate((int(version), tuple(int(x) for x in state), gauss))
        if "numpy" in rng and "rng.numpy" in tensors:
            import numpy as np

            name, pos, has_gauss, cached = rng["numpy"]
            keys = tensors["rng.numpy"].numpy().astype(np.uint32)
            np.random.set_state((str(name), keys, int(pos), int(has_gauss), float(cached)))
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"checkpoint RNG state unreadable ({type(exc).__name__}); the checkpoint is damaged") from None
