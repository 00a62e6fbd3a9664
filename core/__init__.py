"""tlwork's engine: datasets, backbones, freeze modes, training and evaluation, with no UI.

Importing ``core`` is cheap and pulls in neither torch nor any front-end package; the heavy
modules (``core.training.train``, ``core.inference.evaluate``, ``core.models``...) import torch when used.
Front ends consume the engine's generators of typed events (``core.events``).
"""

from __future__ import annotations

__version__ = "0.1.0"
