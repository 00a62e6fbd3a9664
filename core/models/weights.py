"""Weight files shared by every backbone family: reading a state dict without unpickling, loading it with a head of another shape dropped, finding a model's classifier layer, and whether the Hugging Face Hub can be reached."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from core.errors import ConfigError, WeightsUnavailable


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a ``torch.save``d state dict (never unpickles objects)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--weights {path!r}: no such file; pass imagenet, none or a path to .safetensors/.pth")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(p))
        except Exception as exc:
            raise WeightsUnavailable(f"--weights {path}: not a readable safetensors file ({exc})") from None
    else:
        try:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise WeightsUnavailable(
                f"--weights {path}: not a plain state dict ({type(exc).__name__}); "
                "tlwork loads only tensors (weights_only=True); convert it to .safetensors"
            ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailable(f"--weights {path}: expected a mapping of names to tensors")
    return {re.sub(r"^(module\.|_orig_mod\.)", "", k): v for k, v in state.items()}


def load_into(model: nn.Module, state: dict[str, torch.Tensor], head: str, source: str) -> bool:
    """Load ``state`` into ``model``, dropping a head of another shape; other gaps are errors.

    Tensors take the model's dtype: a float16 file (the shipped weights) loads as float32.
    """
    own = model.state_dict()
    kept = {k: v.to(own[k].dtype) for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in kept and not k.startswith(head + ".")]
    if missing:
        unexpected = [k for k in state if k not in own]
        raise WeightsUnavailable(
            f"{source} does not fit this backbone: {len(missing)} tensors missing "
            f"(e.g. {missing[0]}), {len(unexpected)} unexpected; check --backbone"
        )
    model.load_state_dict(kept, strict=False)
    return any(k.startswith(head + ".") for k in kept)


def find_head(model: nn.Module) -> str:
    """The dotted path of the last Linear layer: the classifier of every torchvision CNN and ViT."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError("this backbone has no Linear classifier layer to replace")
    return linears[-1]


