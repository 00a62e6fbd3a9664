"""What a tlwork ONNX export holds and how ``tlwork export`` checks it, with nothing heavy imported.

The metadata key and format, the graph's input and output names, the parity check's
defaults, the install hint of the ``export`` extra, and ``require`` (an optional package, or
a one-line error naming that hint). Both ``core.inference.export`` (torch) and
``core.inference.onnxmodel`` (onnxruntime and NumPy) read these, and the CLI shows the
defaults in ``--help`` without importing either.
"""

from __future__ import annotations

import importlib
from typing import Any

from core.errors import ConfigError

FORMAT = "tlwork-onnx"
VERSION = 1
METADATA_KEY = "tlwork"
"""The ``metadata_props`` entry holding the export's description, one JSON object."""
INPUT = "pixels"
OUTPUT = "logits"
INSTALL_HINT = "pip install 'tlwork[export]'"
DEFAULT_TOLERANCE = 1e-3
"""Largest logit difference ``tlwork export`` allows between PyTorch and onnxruntime (fp32 on a CPU: ~1e-6)."""
DEFAULT_PARITY_IMAGES = 64


def require(module: str, needed_for: str) -> Any:
    """``import module``, or a one-line error naming the extra that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{needed_for} needs the {module} package, which is not installed; install it with {INSTALL_HINT}") from None


def is_onnx(ref: str) -> bool:
    """Whether a model reference names an ONNX file (by its suffix, as users name them)."""
    return ref.lower().endswith(".onnx")
