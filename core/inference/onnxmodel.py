"""ONNX models that ``tlwork export`` wrote, run through onnxruntime without torch.

An export is self-describing like a bundle: its ONNX metadata (``metadata_props``, key
``tlwork``) holds the class names, the preprocessing, the output activation and how the file
was made and checked. ``load_onnx`` reads it with onnxruntime alone and returns an
``OnnxModel`` whose ``transform`` prepares a PIL image with Pillow and NumPy
(``core.data.preprocessing.to_array``) and whose ``rank`` turns a batch into top-k labels
the way ``core.inference.classify`` does for a PyTorch model. Nothing here imports torch,
torchvision or the ``onnx`` package, so ``tlwork classify --model model.onnx`` answers in
about a second where a bundle pays seconds for torch's import (bench/coldstart.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.data.preprocessing import Preprocessing, to_array
from core.errors import ConfigError
from core.inference.onnxformat import FORMAT, METADATA_KEY, require


def providers(device: str, available: list[str]) -> list[Any]:
    """onnxruntime execution providers for ``--device``: CUDA where asked (or auto and present), else the CPU."""
    if device in ("auto", "cpu"):
        if device == "auto" and "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]
    if device == "cuda" or device.startswith("cuda:"):
        if "CUDAExecutionProvider" not in available:
            raise ConfigError(f"--device {device}: this onnxruntime has no CUDA support; install onnxruntime-gpu, or pass --device cpu")
        index = device.partition(":")[2] or "0"
        if not index.isdigit():
            raise ConfigError(f"--device {device}: expected cuda or cuda:N")
        return [("CUDAExecutionProvider", {"device_id": int(index)}), "CPUExecutionProvider"]
    raise ConfigError(f"--device {device} is not available for ONNX models; pass --device cpu, cuda or cuda:N")


@dataclass
class OnnxModel:
    """An ONNX export in an onnxruntime session, with the class names and preprocessing it carries."""

    name: str
    session: Any
    class_names: list[str]
    preprocessing: Preprocessing
    activation: str
    meta: dict[str, Any]

    def transform(self, image: Any) -> np.ndarray:
        """An RGB PIL image -> the model's (3, size, size) float32 input."""
        return to_array(image, self.preprocessing)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, size, size) float32 -> (N, classes) float32 logits."""
        inputs = {self.session.get_inputs()[0].name: np.ascontiguousarray(batch, dtype=np.float32)}
        return self.session.run(None, inputs)[0]

    def rank(self, batch: list[np.ndarray], k: int) -> list[tuple[tuple[str, float], ...]]:
        """Top-k (label, probability) for each input, best first."""
        return top_k(self.logits(np.stack(batch)), self.activation, k, self.class_names)


def top_k(logits: np.ndarray, activation: str, k: int, class_names: list[str]) -> list[tuple[tuple[str, float], ...]]:
    """Probabilities (sigmoid or softmax, in float32 as the PyTorch path computes them), ranked.

    A stable sort breaks ties by class index, as ``core.inference.classify`` and the
    pipeline's ``sorted()`` do.
    """
    x = logits.astype(np.float32)
    if activation == "sigmoid":
        with np.errstate(over="ignore"):  # exp overflows to inf for very negative logits: probability 0, as torch gives
            probs = 1 / (1 + np.exp(-x))
    else:
        e = np.exp(x - x.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [tuple((class_names[c], float(p[c])) for c in row) for p, row in zip(probs, order)]


def session(path: str | Path, device: str = "cpu") -> Any:
    """An onnxruntime session on ``path`` (warnings quiet; a damaged file is a one-line error)."""
    ort = require("onnxruntime", "running an ONNX model")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its provider notes are not the user's business
    chosen = providers(device, ort.get_available_providers())
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=chosen)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300]
        raise ConfigError(f"{path}: not a readable ONNX model ({reason}); export it again with `tlwork export`") from None


def read_metadata(sess: Any, path: str | Path) -> dict[str, Any]:
    """The ``tlwork`` metadata of an export, checked for format."""
    raw = sess.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    try:
        meta = json.loads(raw) if raw else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ConfigError(
            f"{path}: an ONNX model without tlwork's metadata (class names, preprocessing); "
            "make it with `tlwork export RUN --format onnx`"
        )
    return meta


def load_onnx(path: str | Path, device: str = "cpu") -> OnnxModel:
    """The export at ``path`` in an onnxruntime session on ``device`` (auto, cpu, cuda, cuda:N)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{path}: no such ONNX file; pass the path `tlwork export` wrote")
    sess = session(p, device)
    meta = read_metadata(sess, p)
    pre = Preprocessing.from_dict(meta["preprocessing"])
    return OnnxModel(str(p), sess, list(meta["class_names"]), pre, str(meta.get("activation", "softmax")), meta)
