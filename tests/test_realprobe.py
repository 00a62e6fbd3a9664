"""A real linear probe: the ImageNet EfficientNet-Lite0 that ships with tlwork, on the shipped demo images.

This is the end-to-end check that loading, normalisation, freezing and the head all work:
random weights, a wrong normalisation or BatchNorm statistics drifting while "frozen" score
far lower. It is README's quick start (720 real CIFAR-10 training images, 80 held out for validation,
200 test images, 64 px, ten epochs at lr 1e-2 on features extracted once), so it needs nothing beyond the package and
takes seconds. Then the bundle it wrote is evaluated and classified, image by image, with the
same answers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.config import RunConfig
from core.data.datasets import DEMO_DIR
from core.events import EvaluationEnded, ImageClassified, MessageLogged, RunFinished
from core.inference.classify import classify
from core.inference.evaluate import evaluate
from core.models.shipped import shipped_weights
from core.training.train import train

pytestmark = pytest.mark.slow


def test_the_shipped_backbone_probes_demo_images_like_a_real_probe(tmp_path: Path) -> None:
    # One test, not three: xdist would run a module-scoped training fixture once per worker.
    config = RunConfig(
        mode="linear-probe", backbone="timm:tf_efficientnet_lite0", weights="imagenet", dataset="demo",
        image_size=64, normalize="backbone", epochs=10, lr=0.01, device="cpu", runs_dir=str(tmp_path / "runs"),
    )
    events = list(train(config))
    finished = events[-1]
    assert isinstance(finished, RunFinished), finished
    # 61.25% measured on the 80 held-out images; random weights stay near 10-20%, a drifting "frozen" BN lower still.
    assert finished.val_accuracy >= 0.5, finished.val_accuracy

    shipped = shipped_weights("timm:tf_efficientnet_lite0")
    assert shipped is not None
    bundle = load_file(f"{finished.run_dir}/model.safetensors")
    for key, value in load_file(str(shipped.path)).items():
        if not key.startswith("classifier."):  # the frozen backbone is the file's, upcast to float32
            assert bundle[key].dtype == (torch.float32 if value.is_floating_point() else value.dtype), key
            assert torch.equal(bundle[key], value.to(bundle[key].dtype)), key

    # config.json and the run log name the file --weights imagenet stood for.
    assert json.loads((Path(finished.run_dir) / "config.json").read_text())["weights"] == str(shipped.path)
    logged = [e.message for e in events if isinstance(e, MessageLogged)]
    assert f"weights: {shipped.description}: {shipped.path}" in logged

    # The bundle evaluates to the run's own figure and classifies each image as evaluation scored it.
    scored = next(e for e in evaluate(finished.run_dir, device="cpu") if isinstance(e, EvaluationEnded))
    assert scored.top1 == finished.val_accuracy and scored.images == 80  # the 80 held-out training images
    scored = next(e for e in evaluate(finished.run_dir, "demo", device="cpu") if isinstance(e, EvaluationEnded))
    assert scored.images == 200 and scored.top1 >= 0.45, scored.top1  # the test split: 53.5% measured
    names = list(scored.class_names)
    confusion = [[0] * len(names) for _ in names]
    for e in classify(finished.run_dir, [str(DEMO_DIR / "test")], top_k=1, device="cpu"):
        if isinstance(e, ImageClassified):
            confusion[names.index(Path(e.path).parent.name)][names.index(e.predictions[0][0])] += 1
    assert tuple(tuple(r) for r in confusion) == scored.confusion
