"""Resumable training checkpoints, with no pickle: tensors in safetensors, state in JSON.

A checkpoint is two files written atomically, tensors first: ``<stem>.safetensors`` (model,
optimiser state tensors, RNG states) and ``<stem>.json`` (position in the run, scheduler and
optimiser hyper-parameters). The JSON names the tensor file's SHA-256, so a reader never
pairs a new JSON with an old tensor file. A crash at any moment leaves the previous
checkpoint loadable.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.bundle import atomic_write, state_bytes
from core.config import ConfigError


@dataclass
class Position:
    """Where a run is: stage index, epoch (1-based over the run), batches done in it, global step."""

    stage: int
    epoch: int
    batch: int
    step: int
    best_val_accuracy: float = -1.0


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


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    position: Position,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``path.safetensors`` and ``path.json`` atomically; returns the json path."""
    model = getattr(model, "_orig_mod", model)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for idx, slots in opt["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    blob = state_bytes(tensors)
    meta = {
        "format": "tlwork-checkpoint",
        "version": 1,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "position": position.__dict__,
        "optimizer": {
            "param_groups": _jsonable(opt["param_groups"]),
            "scalars": {
                str(i): {k: v for k, v in s.items() if not isinstance(v, torch.Tensor)} for i, s in opt["state"].items()
            },
        },
        "scheduler": _jsonable(scheduler.state_dict()) if scheduler is not None else None,
        **(extra or {}),
    }
    atomic_write(path.with_suffix(".safetensors"), blob)
    atomic_write(path.with_suffix(".json"), (json.dumps(meta, indent=1) + "\n").encode())
    return path.with_suffix(".json")


def read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(meta, tensors) of a checkpoint, verified against its hash."""
    from safetensors.torch import load

    json_path = path.with_suffix(".json")
    try:
        meta = json.loads(json_path.read_text())
        blob = path.with_suffix(".safetensors").read_bytes()
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{json_path}: checkpoint unreadable ({exc})") from None
    if meta.get("format") != "tlwork-checkpoint":
        raise ConfigError(f"{json_path}: not a tlwork checkpoint")
    if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
        raise ConfigError(f"{json_path}: tensor file does not match (torn write?); use the previous checkpoint")
    return meta, load(blob)


def load_model_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load the model part of a checkpoint strictly."""
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    getattr(model, "_orig_mod", model).load_state_dict(state, strict=True)


def load_optimizer_state(optimizer: torch.optim.Optimizer, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Rebuild an optimiser's state dict from a checkpoint's JSON and tensors."""
    state: dict[int, dict[str, Any]] = {}
    for idx, scalars in meta["optimizer"]["scalars"].items():
        state[int(idx)] = dict(scalars)
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, slot = key.split(".", 2)
            state.setdefault(int(idx), {})[slot] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
