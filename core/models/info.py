"""What the engine knows about a built model besides its modules (ModelInfo), and ImageNet's normalisation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelInfo:
    """What the engine needs to know about a built model besides its modules."""

    kind: str  # torchvision | timm | hf
    name: str
    head: str  # dotted path of the classifier module
    stages: list[list[str]]  # parameter-name groups, input side first, head excluded
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    extra: dict[str, Any] = field(default_factory=dict)
    size: int | None = None  # the input size the backbone requires (hf: its image processor's), else None
    fresh_head: bool = True  # False when the head's weights came from the weights file

    def arch(self) -> dict[str, Any]:
        """The part of model.json that rebuilds this architecture."""
        return {"kind": self.kind, "name": self.name, "head": self.head, **self.extra}


