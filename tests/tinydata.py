"""Helpers shared by the test modules: generated image folders, tiny models, constants.

Test modules import these as ``from tinydata import ...``, never ``from conftest import``:
tests/ and tests/tui/ both have a conftest.py, and which one ``import conftest`` finds
depends on collection order. conftest.py turns these helpers into fixtures. Nothing here
downloads anything; torch and transformers are imported only inside the helpers that need them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import RunConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = REPO_ROOT.parent / "shared"

TINY_CLASSES = ("circle", "stripes", "checks")
"""Class names of the generated folders (sorted order differs on purpose: labels follow sorting)."""

TINY_BACKBONE = "timm:test_resnet"
"""A real timm ResNet with BatchNorm, about 0.4M parameters: the fastest BN model on CPU here."""


def _draw(label: int, size: int, rng: Any) -> Any:
    """One RGB image whose colour and pattern depend on ``label``, with per-image noise."""
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:size, 0:size]
    base = np.zeros((size, size, 3), dtype=np.float64)
    colour = [(220, 40, 40), (40, 200, 60), (50, 70, 230), (230, 200, 40), (160, 60, 200)][label % 5]
    if label % 3 == 0:  # a filled disc
        cy, cx = rng.integers(size // 3, 2 * size // 3, size=2)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < (size // 3) ** 2
    elif label % 3 == 1:  # horizontal stripes
        mask = ((yy + rng.integers(0, 4)) // 3) % 2 == 0
    else:  # a checkerboard
        mask = ((yy // 4) + (xx // 4)) % 2 == 0
    base[mask] = colour
    base[~mask] = (30, 30, 30)
    base += rng.normal(0, 20, size=base.shape)
    return Image.fromarray(np.clip(base, 0, 255).astype("uint8"), "RGB")


def make_image_folder(
    root: Path,
    *,
    classes: tuple[str, ...] = TINY_CLASSES,
    train: int = 12,
    test: int = 4,
    size: int = 24,
    layout: str = "train-test",
    seed: int = 0,
) -> Path:
    """Write a generated ImageFolder dataset under ``root`` and return ``root``.

    Args:
        classes: class folder names; label ``i`` (in this order) picks colour and pattern.
        train: images per class in the training part.
        test: images per class in the test part (ignored unless the layout has one).
        size: image side in pixels.
        layout: ``train-test`` (root/train, root/test), ``train-val`` (root/train,
            root/val), ``train-only`` (root/train) or ``flat`` (class folders at root).
        seed: noise and placement seed; the same arguments always write the same pixels.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    parts: dict[str, int]
    if layout == "train-test":
        parts = {"train": train, "test": test}
    elif layout == "train-val":
        parts = {"train": train, "val": test}
    elif layout == "train-only":
        parts = {"train": train}
    elif layout == "flat":
        parts = {"": train}
    else:
        raise ValueError(f"unknown layout {layout!r}")
    for part, count in parts.items():
        for label, name in enumerate(classes):
            folder = root / part / name if part else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                _draw(label, size, rng).save(folder / f"{i:03d}.png")
    return root


def sigkill_after_checkpoint(proc: Any, sidecar: Path, step: int, where: str = "") -> None:
    """SIGKILL ``proc`` (a ``tlwork run`` subprocess) once its checkpoint sidecar shows a mid-epoch position at or past ``step``."""
    import json
    import signal
    import time

    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                position = json.loads(sidecar.read_text())["position"]
            except (OSError, ValueError, KeyError):
                position = None
            if position and position["step"] >= step and not position["epoch_done"]:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before step {step} was checkpointed mid-epoch {where}".rstrip()


@dataclass(frozen=True)
class FinishedRun:
    """A trained run: its directory, the runs folder it sits in, its config and its events."""

    run_dir: Path
    runs_dir: Path
    config: RunConfig
    events: tuple[Any, ...]

    @property
    def finished(self) -> Any:
        """The run's ``RunFinished`` event (val_accuracy, bundle path...)."""
        return self.events[-1]

    @property
    def bundle(self) -> Path:
        """The bundle's model.json."""
        return self.run_dir / "model.json"


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def save_tiny_vit(folder: Path, labels: tuple[str, ...] = CIFAR10_CLASSES, seed: int = 0) -> Path:
    """Write a random 32 px ViT (2 layers, width 32) and its ViTImageProcessor with ``save_pretrained``."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
    )
    torch.manual_seed(seed)
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder
