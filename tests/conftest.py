"""Shared fixtures: tiny generated image folders, fast CPU run configs and one trained run.

``make_image_folder`` writes a small ImageFolder dataset with Pillow whose classes differ in
colour and pattern, so even a few batches learn something. ``tiny_folder`` and
``tiny_config`` give each test its own copy; ``finished_run`` trains one tiny run per test
session (per xdist worker) and hands back its directory and the events it produced, for
tests that need a real bundle without paying for training again. Nothing here downloads
anything, and torch is imported only inside the fixtures that train.

The plain helpers behind these fixtures live in ``tinydata.py``; test modules import them from
there (``from tinydata import make_image_folder``), not from conftest, because tests/tui/ has
a conftest.py of its own and ``import conftest`` may find either.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from tinydata import (  # noqa: F401  (re-exported for tests that still import from conftest)
    CIFAR10_CLASSES,
    REPO_ROOT,
    SHARED_DIR,
    TINY_BACKBONE,
    TINY_CLASSES,
    FinishedRun,
    make_image_folder,
    save_tiny_vit,
)

from core.config import RunConfig

# Tiny models gain nothing from intra-op threads, and two xdist workers (or any other busy
# process) on two cores make torch's spinning thread pool several times slower than one
# thread: measured 31 s against 6 s for test_engine.py on a loaded 2-core machine. Set
# before anything imports torch; an explicit OMP_NUM_THREADS wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "torch" in sys.modules:  # a plugin got there first
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    """A 3-class generated dataset: 12 train + 4 test PNGs per class at 24x24, in PATH/train and PATH/test."""
    return make_image_folder(tmp_path / "tiny-data")


@pytest.fixture
def tiny_config(tiny_folder: Path, tmp_path: Path) -> Callable[..., RunConfig]:
    """A factory: ``tiny_config(mode="finetune", epochs=2, ...)`` -> a fast CPU ``RunConfig``.

    Defaults: the ``tiny_folder`` dataset, ``TINY_BACKBONE`` with random weights, 32 px,
    batch 16 (three batches an epoch), one epoch, no loader processes, runs under
    ``tmp_path/runs``, and ``val_split`` 0: validation on the folder's 12 test images, as
    the notebook does (the default, a held-out slice of the 36 training images, would
    leave one image a class; tests/test_recipe.py covers it). Keyword arguments override
    any field.
    """

    def make(**overrides: Any) -> RunConfig:
        values: dict[str, Any] = {
            "mode": "finetune",
            "backbone": TINY_BACKBONE,
            "weights": "none",
            "dataset": f"imagefolder:{tiny_folder}",
            "image_size": 32,
            "batch_size": 16,
            "epochs": 1,
            "device": "cpu",
            "workers": 0,
            "runs_dir": str(tmp_path / "runs"),
            "val_split": 0.0,
        }
        values.update(overrides)
        return RunConfig(**values)

    return make


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    """One really trained tiny run with a bundle (2 epochs, finetune), shared by the session.

    Treat it as read-only: copy the directory before changing anything in it.
    """
    from core.events import RunFinished
    from core.training.train import train

    root = tmp_path_factory.mktemp("finished-run")
    folder = make_image_folder(root / "data")
    config = RunConfig(
        mode="finetune",
        backbone=TINY_BACKBONE,
        weights="none",
        dataset=f"imagefolder:{folder}",
        image_size=32,
        batch_size=16,
        epochs=2,
        device="cpu",
        workers=0,
        runs_dir=str(root / "runs"),
        name="tiny",
        seed=1,
        val_split=0.0,  # validates on the 12 test images (see tiny_config)
    )
    events = tuple(train(config))
    assert isinstance(events[-1], RunFinished), events[-1]
    return FinishedRun(Path(events[-1].run_dir), root / "runs", config, events)


@pytest.fixture(scope="session")
def exported_onnx(finished_run: FinishedRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``finished_run`` exported by ``tlwork export``'s engine (dynamo exporter, parity-checked). Read-only."""
    from core.inference.export import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(str(finished_run.run_dir), str(path))
    return path


@pytest.fixture
def shared_dir() -> Path:
    """../shared (real CIFAR-10 JPEGs, EfficientNet-Lite0 weights); skips the test when absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"{SHARED_DIR} is absent (real data and weights live there on developer machines)")
    return SHARED_DIR


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local Hugging Face model folder: tiny random ViT whose labels are the CIFAR-10 classes. Read-only."""
    return save_tiny_vit(tmp_path_factory.mktemp("hf") / "tiny-vit")
