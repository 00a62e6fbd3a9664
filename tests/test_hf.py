"""Hugging Face models in tlwork: backbones with a new head, evaluation by class name, offline bundles.

Everything runs on a tiny ViT written with ``save_pretrained`` (the ``tiny_vit`` fixture);
nothing downloads. The offline message for an uncached hub id is checked in a subprocess,
because huggingface_hub reads ``HF_HUB_OFFLINE`` once, at import.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tinydata import CIFAR10_CLASSES, REPO_ROOT, make_image_folder, save_tiny_vit

from core.config import RunConfig
from core.errors import ConfigError
from core.events import BatchEnded, EvaluationEnded, RunFinished
from core.inference.evaluate import evaluate
from core.models.build import build_model
from core.models.freeze import freeze


def _pretrained(folder: Path) -> dict[str, torch.Tensor]:
    """The saved model's tensors under its module names (transformers 5 renames keys on load)."""
    from transformers import AutoModelForImageClassification

    return AutoModelForImageClassification.from_pretrained(folder).state_dict()


def test_backbone_gets_a_new_head_with_the_datasets_labels(tiny_vit: Path) -> None:
    names = ["circle", "stripes", "checks"]
    model, info = build_model(f"hf:{tiny_vit}", 3, "imagenet", names)
    logits = model(torch.randn(2, 3, 32, 32))
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 3)
    config = model.model.config
    assert config.id2label == {0: "circle", 1: "stripes", 2: "checks"}
    assert config.label2id == {"circle": 0, "stripes": 1, "checks": 2}
    # Pretrained trunk loaded, head new: the patch embedding equals the saved one.
    saved = _pretrained(tiny_vit)
    key = "vit.embeddings.patch_embeddings.projection.weight"
    assert torch.equal(model.state_dict()["model." + key], saved[key])
    assert info.head == "model.classifier" and info.fresh_head
    assert (info.size, info.mean, info.std) == (32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_a_model_that_already_predicts_the_classes_keeps_its_head(tiny_vit: Path) -> None:
    model, info = build_model(f"hf:{tiny_vit}", 10, "imagenet", list(CIFAR10_CLASSES))
    assert not info.fresh_head
    assert torch.equal(model.state_dict()["model.classifier.weight"], _pretrained(tiny_vit)["classifier.weight"])


def test_stages_are_the_encoder_layers_and_freezing_follows_them(tiny_vit: Path) -> None:
    model, info = build_model(f"hf:{tiny_vit}", 3, "none", ["a", "b", "c"])
    assert len(info.stages) == 2  # two ViT layers; embeddings join the first, the final norm the last
    assert info.stages[0][0].startswith("model.vit.embeddings.")
    assert any(n.startswith("model.vit.layers.1.") for n in info.stages[1])
    assert info.stages[1][-1].startswith("model.vit.layernorm.")
    everything = {n for n, _ in model.named_parameters()}
    staged = [n for g in info.stages for n in g]
    assert len(staged) == len(set(staged))
    assert set(staged) | {n for n in everything if n.startswith("model.classifier.")} == everything
    freeze(model, info, "linear-probe")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"model.classifier.weight", "model.classifier.bias"}
    freeze(model, info, "partial", unfreeze_stages=1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(info.stages[1]) | {"model.classifier.weight", "model.classifier.bias"}


def test_two_batches_of_finetuning_and_the_bundle_reloads_offline(tmp_path: Path) -> None:
    source = save_tiny_vit(tmp_path / "vit")
    pretrained = _pretrained(source)
    data = make_image_folder(tmp_path / "data", train=8, test=4, size=32)
    config = RunConfig(
        mode="finetune", backbone=f"hf:{source}", dataset=f"imagefolder:{data}", batch_size=12, epochs=1,
        device="cpu", workers=0, runs_dir=str(tmp_path / "runs"), lr=0.05, image_size=224, val_split=0.0,
    )
    events = list(train_events(config))
    batches = [e for e in events if isinstance(e, BatchEnded)]
    assert batches[-1].step == batches[-1].total_steps == 2
    finished = events[-1]
    assert isinstance(finished, RunFinished)
    run_dir = Path(finished.run_dir)
    meta = json.loads((run_dir / "model.json").read_text())
    assert meta["arch"]["kind"] == "hf" and meta["class_names"] == ["checks", "circle", "stripes"]
    assert meta["arch"]["config"]["id2label"] == {"0": "checks", "1": "circle", "2": "stripes"}
    assert meta["arch"]["config"]["label2id"] == {"checks": 0, "circle": 1, "stripes": 2}
    # The model's own preprocessing, not --image-size 224 or the dataset's statistics.
    assert meta["preprocessing"] == {"size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear"}
    from safetensors.torch import load_file

    trained = load_file(str(run_dir / "model.safetensors"))
    key = "vit.layers.0.mlp.fc1.weight"
    assert not torch.equal(trained["model." + key], pretrained[key])  # fine-tuning moved the trunk

    shutil.rmtree(source)  # the bundle must not need the folder (or the Hub) it was trained from
    from core.runs.bundle import load_bundle

    bundle = load_bundle(run_dir)
    assert bundle.model.model.config.id2label == {0: "checks", 1: "circle", 2: "stripes"}
    result = list(evaluate(str(run_dir), device="cpu"))[-1]
    assert isinstance(result, EvaluationEnded)
    assert result.top1 == pytest.approx(finished.val_accuracy, abs=1e-9)
    assert result.images == 12


def train_events(config: RunConfig) -> list:
    from core.training.train import train

    return list(train(config))


def _manual_top1(folder: Path, labels: list[str]) -> tuple[float, int]:
    """Accuracy of the raw transformers model on the demo test split, by class name."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from core.data.datasets import DEMO_DIR
    from core.data.images import open_rgb

    processor = AutoImageProcessor.from_pretrained(folder)
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    files = sorted((DEMO_DIR / "test").glob("*/*.jpg"))
    images = [open_rgb(f) for f in files]
    with torch.inference_mode():
        pred = model(**processor(images=images, return_tensors="pt")).logits.argmax(1).tolist()
    hits = sum(labels[p].lower() == f.parent.name for p, f in zip(pred, files))
    return hits / len(files), len(files)


def test_evaluate_a_hf_model_matches_its_labels_by_name(tmp_path: Path) -> None:
    # Labels in another order and spelling than the dataset's folders: matched by name.
    shuffled = tuple(n.title() for n in reversed(CIFAR10_CLASSES))
    folder = save_tiny_vit(tmp_path / "vit-shuffled", shuffled, seed=3)
    result = list(evaluate(f"hf:{folder}", "demo", device="cpu"))[-1]
    assert isinstance(result, EvaluationEnded)
    assert result.class_names == tuple(n.title() for n in CIFAR10_CLASSES)
    top1, images = _manual_top1(folder, list(shuffled))
    assert result.images == images == 200
    assert result.top1 == pytest.approx(top1, abs=1e-9)


def test_a_model_that_is_not_an_image_classifier_is_refused(tmp_path: Path) -> None:
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(tmp_path / "bert")
    with pytest.raises(ConfigError, match="image-classification"):
        build_model(f"hf:{tmp_path / 'bert'}", 3, "none")


def test_bad_hf_references_are_config_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        build_model(f"hf:{tmp_path / 'empty'}", 3, "none")
    with pytest.raises(ConfigError, match="not a Hugging Face hub id"):
        build_model("hf:./no/such/folder", 3, "none")


def test_an_uncached_hub_model_offline_says_how_to_fix_it(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    code = (
        "from core.models.build import build_model\nfrom core.errors import WeightsUnavailable\n"
        "try:\n    build_model('hf:someone/not-cached-vit', 3, 'imagenet')\n"
        "except WeightsUnavailable as exc:\n    print('UNAVAILABLE', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert line.startswith("UNAVAILABLE hf:someone/not-cached-vit is not in the Hugging Face cache")
    assert "HF_HUB_OFFLINE=1" in line and "hf download someone/not-cached-vit" in line and "save_pretrained" in line
    assert "\n" not in line
