"""Data: datasets and their folder layout, image decoding and screening, transforms, the
sample order, device-resident images, streaming loaders and ``check-data``.

Imports only the torch-free base (``core.errors``, ``core.config``, ``core.registry``) and
``core.device``; never models, runs, training or inference.
"""
