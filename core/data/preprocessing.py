"""What a model expects between an RGB image and its input, and a torch-free way to get there.

``Preprocessing`` (size, mean, std, interpolation) is what a bundle and an ONNX export
record. ``to_array`` prepares a PIL image with Pillow and NumPy alone, for ONNX models that
must not pay for importing torch: the same square resize and normalisation as
``core.data.transforms.eval_transform``. Pillow's antialiased filters are the ones torch's
antialiased resize was written to reproduce, so the two agree to within a level or two of
the 0-255 scale (tests/test_export.py measures it). torch's ``nearest`` and
``nearest-exact`` pick their source pixels by a rule Pillow does not share, so those two are
done by indexing here, exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Preprocessing:
    """Everything between an RGB image and the model's input tensor."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values for model.json."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """Inverse of ``to_dict``."""
        return cls(int(data["size"]), tuple(data["mean"]), tuple(data["std"]), data.get("interpolation", "bilinear"))


_PIL_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def _nearest_index(size_in: int, size_out: int, offset: float) -> np.ndarray:
    """torch's source index for each output pixel: floor((i + offset) * in/out) in float32, clipped."""
    scale = np.float32(size_in) / np.float32(size_out)
    index = np.floor((np.arange(size_out, dtype=np.float32) + np.float32(offset)) * scale).astype(np.int64)
    return np.minimum(index, size_in - 1)


def resize(image: Image.Image, pre: Preprocessing) -> np.ndarray:
    """``image`` resized to ``pre.size`` square: uint8 (H, W, 3)."""
    size = pre.size
    if pre.interpolation in ("nearest", "nearest-exact"):
        offset = 0.5 if pre.interpolation == "nearest-exact" else 0.0  # pixel centres, or torch's legacy corners
        pixels = np.asarray(image)
        return pixels[_nearest_index(image.height, size, offset)][:, _nearest_index(image.width, size, offset)]
    # An unknown name resizes bilinearly, as core.data.transforms does.
    return np.asarray(image.resize((size, size), _PIL_FILTERS.get(pre.interpolation, Image.Resampling.BILINEAR)))


def to_array(image: Image.Image, pre: Preprocessing) -> np.ndarray:
    """An RGB PIL image -> the normalised float32 (3, size, size) array the model takes."""
    pixels = resize(image, pre).astype(np.float32) / np.float32(255)
    mean = np.asarray(pre.mean, dtype=np.float32)
    std = np.asarray(pre.std, dtype=np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))
