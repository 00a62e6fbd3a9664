"""Pretrained weights that ship inside the package, so one real backbone always works offline.

``--weights imagenet`` for a backbone listed in ``SHIPPED`` loads the file under
``core/models/pretrained/`` before any download is tried; every other backbone downloads its
own weights as before, and no backbone is ever given another one's weights. The files are
stored in float16 (half the size, the same probe accuracy: bench/RESULTS.md) and upcast to
the model's dtype when loaded. ``core/models/pretrained/NOTICE.md`` says where each file
came from, its licence and its sha256. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


@dataclass(frozen=True, slots=True)
class ShippedWeights:
    """One weights file in ``PRETRAINED_DIR`` and what it is, for the run log."""

    filename: str
    description: str

    @property
    def path(self) -> Path:
        return PRETRAINED_DIR / self.filename


SHIPPED: dict[str, ShippedWeights] = {
    "timm:tf_efficientnet_lite0": ShippedWeights(
        "tf_efficientnet_lite0.in1k.fp16.safetensors",
        "ImageNet-1k EfficientNet-Lite0 (TensorFlow TPU weights, Apache-2.0) shipped with tlwork, float16 on disk",
    ),
}
"""Backbone (as ``--backbone`` spells it) -> the ImageNet weights that ship with tlwork."""


def shipped_weights(backbone: str) -> ShippedWeights | None:
    """The shipped ImageNet weights of exactly this backbone, or None (then they are downloaded)."""
    found = SHIPPED.get(backbone)
    return found if found is not None and found.path.is_file() else None


def resolve_weights(backbone: str, weights: str) -> str:
    """``imagenet`` -> the shipped file's path for a backbone that has one; anything else unchanged."""
    found = shipped_weights(backbone) if weights == "imagenet" else None
    return str(found.path) if found is not None else weights


def describe_weights(weights: str) -> str | None:
    """The run-log line for a shipped file passed as ``weights`` (resolved or by hand), else None."""
    for shipped in SHIPPED.values():
        if Path(weights).expanduser().resolve() == shipped.path:
            return f"weights: {shipped.description}: {shipped.path}"
    return None
