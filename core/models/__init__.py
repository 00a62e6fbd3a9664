"""Models: backbones built from torchvision, timm or Hugging Face with a new head, their
weights, stages and freezing.

``build.build_model`` dispatches to a backend (``build`` for torchvision and timm, ``hf`` for
Hugging Face); ``weights`` and ``hub`` hold what the backends share; ``shipped`` maps
``--weights imagenet`` to the files in ``pretrained/`` for the backbones whose weights ship
with tlwork. Imports the base and ``core.data`` only.
"""
