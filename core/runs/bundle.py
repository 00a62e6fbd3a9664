"""Self-describing model bundles: ``model.safetensors`` + ``model.json``.

A bundle holds everything needed to use a trained model without the run that made it: the
architecture (backbone kind and name), class names and the exact preprocessing. It is
written atomically (temporary file, fsync, rename) and read without unpickling anything.
``load_bundle`` rebuilds the model with random weights, then loads the tensors strictly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.data.transforms import Preprocessing
from core.errors import ConfigError
from core.runs.store import atomic_write

FORMAT = "tlwork-bundle"
VERSION = 1


@dataclass
class Bundle:
    """A loaded bundle: the model in eval mode plus what it needs to classify."""

    model: nn.Module
    class_names: list[str]
    preprocessing: Preprocessing
    meta: dict[str, Any]
    path: Path
    info: Any = None  # the ModelInfo of the rebuilt architecture (its stages pick Grad-CAM's layer); None for hf:






def state_bytes(state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """safetensors bytes of a state dict (tensors copied to contiguous CPU memory)."""
    from safetensors.torch import save

    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    return save(plain, metadata=metadata)


def save_bundle(
    directory: Path,
    model: nn.Module,
    arch: dict[str, Any],
    class_names: list[str],
    preprocessing: Preprocessing,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``directory/model.safetensors`` and ``directory/model.json``; returns the json path."""
    directory = Path(directory)
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "preprocessing": preprocessing.to_dict(),
        **(extra or {}),
    }
    atomic_write(directory / "model.safetensors", state_bytes(model.state_dict(), {"format": FORMAT}))
    atomic_write(directory / "model.json", (json.dumps(meta, indent=2) + "\n").encode())
    return directory / "model.json"


def bundle_dir(path: str | Path) -> Path:
    """The folder holding model.json for a run directory, a bundle folder or a model.json path."""
    p = Path(path)
    if p.is_file() and p.name in ("model.json", "model.safetensors"):
        return p.parent
    if (p / "model.json").is_file():
        return p
    raise ConfigError(f"{path}: no model.json here; pass a run directory, a bundle folder or 'last'")


def read_meta(path: str | Path) -> dict[str, Any]:
    """model.json of a bundle, checked for format."""
    d = bundle_dir(path)
    try:
        meta = json.loads((d / "model.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{d / 'model.json'}: unreadable ({exc}); the bundle is damaged") from None
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{d / 'model.json'}: not a tlwork bundle")
    return meta


def load_bundle(path: str | Path, device: torch.device | str = "cpu") -> Bundle:
    """Rebuild a bundle's model (eval mode, on ``device``) from its files."""
    from safetensors.torch import load_file

    from core.models.build import build_model

    d = bundle_dir(path)
    meta = read_meta(d)
    arch = meta["arch"]
    backbone = arch["name"] if arch["kind"] == "torchvision" else f"{arch['kind']}:{arch['name']}"
    if arch["kind"] == "hf":  # rebuilt from the config stored in model.json: no hub, no network
        from core.models.hf import model_from_arch

        model = model_from_arch(arch, list(meta["class_names"]))
        info = None
    else:
        model, info = build_model(backbone, int(meta["num_classes"]), weights="none")
    try:
        state = load_file(str(d / "model.safetensors"))
    except Exception as exc:
        raise ConfigError(f"{d / 'model.safetensors'}: unreadable ({exc}); the bundle is damaged") from None
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    return Bundle(model, list(meta["class_names"]), Preprocessing.from_dict(meta["preprocessing"]), meta, d, info)
