"""A real linear probe: ImageNet EfficientNet-Lite0 features on real CIFAR-10 JPEGs (../shared).

This is the end-to-end check that loading, normalisation, freezing and the head all work:
random weights, a wrong normalisation or BatchNorm statistics drifting while "frozen" score
far lower. It uses a subset (150 images per class at 64 px) so it stays fast on 2 cores, and
skips when ../shared is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.config import RunConfig
from core.events import EvaluationEnded, RunFinished
from core.inference.evaluate import evaluate
from core.training.train import train

pytestmark = [pytest.mark.shared, pytest.mark.slow]


def _subset(source: Path, per_class: int, out: Path) -> Path:
    for cls in sorted(d.name for d in source.iterdir() if d.is_dir()):
        (out / cls).mkdir(parents=True)
        for f in sorted((source / cls).glob("*.jpg"))[:per_class]:
            (out / cls / f.name).symlink_to(f.resolve())
    return out


def test_linear_probe_of_real_features_scores_like_a_real_probe(shared_dir: Path, tmp_path: Path) -> None:
    weights = shared_dir / "models" / "tf_efficientnet_lite0.in1k.safetensors"
    folder = _subset(shared_dir / "data" / "cifar10-jpg" / "train", 150, tmp_path / "cifar")
    config = RunConfig(
        mode="linear-probe", backbone="timm:tf_efficientnet_lite0", weights=str(weights),
        dataset=f"imagefolder:{folder}", image_size=64, device="cpu", runs_dir=str(tmp_path / "runs"),
        batch_size=128, epochs=10,
    )
    finished = list(train(config))[-1]
    assert isinstance(finished, RunFinished)
    # ~55-60% with all 5,000 images; a broken pipeline (random weights, drifting BN) stays near 20-30%.
    assert finished.val_accuracy >= 0.45, finished.val_accuracy

    bundle = load_file(f"{finished.run_dir}/model.safetensors")
    original = load_file(str(weights))
    for key, value in original.items():
        if not key.startswith("classifier."):
            assert torch.equal(bundle[key], value), key

    result = [e for e in evaluate(finished.run_dir, device="cpu") if isinstance(e, EvaluationEnded)][0]
    assert result.top1 == finished.val_accuracy
