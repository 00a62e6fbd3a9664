"""Grad-CAM overlays (issue 14): ``tlwork classify IMAGES --model RUN --explain DIR``.

The tiny trained run (timm's test_resnet) explains real PNGs through pytorch-grad-cam; a
vision transformer and a Hugging Face model are refused with one line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tinydata import REPO_ROOT, FinishedRun

from core.errors import ConfigError
from core.events import ImageExplained, ImageFailed
from core.inference.explain import explain, target_layer
from core.models.build import build_model


def tlwork(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "tui.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_classify_explain_writes_a_heatmap_png_per_image(finished_run: FinishedRun, tmp_path: Path) -> None:
    folder = Path(finished_run.config.dataset.removeprefix("imagefolder:"))
    images = sorted((folder / "test").rglob("*.png"))[:2]
    out = tmp_path / "cam"
    result = tlwork("classify", *map(str, images), "--model", str(finished_run.run_dir), "--explain", str(out), "--device", "cpu",
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"wrote 2 Grad-CAM overlay(s) to {out}" in result.stdout
    for image in images:
        png = Image.open(out / f"{image.stem}.png")
        assert png.format == "PNG" and min(png.size) >= 64
        plain = np.asarray(Image.open(image).convert("RGB").resize(png.size, Image.Resampling.BICUBIC), dtype=np.float32)
        assert np.abs(np.asarray(png.convert("RGB"), dtype=np.float32) - plain).mean() > 10  # a heatmap is over it


def test_the_target_layer_is_the_last_stages_feature_map() -> None:
    model, info = build_model("timm:test_resnet", 3, "none")
    assert target_layer(model.eval(), info, 32) is model.get_submodule("layer4")


def test_a_bad_file_is_named_and_the_others_are_explained(finished_run: FinishedRun, tmp_path: Path) -> None:
    folder = Path(finished_run.config.dataset.removeprefix("imagefolder:"))
    good = str(sorted((folder / "test").rglob("*.png"))[0])
    events = list(explain(str(finished_run.run_dir), [str(tmp_path / "missing.jpg"), good], tmp_path / "cam", device="cpu"))
    assert [type(e) for e in events] == [ImageFailed, ImageExplained]
    assert "missing.jpg" in events[0].error and Path(events[1].png).is_file()


def test_a_vision_transformer_is_refused_naming_what_can_be_explained() -> None:
    model, info = build_model("timm:test_vit", 3, "none")
    with pytest.raises(ConfigError, match="no spatial feature map .*convolutional backbones"):
        target_layer(model.eval(), info, 32)


def test_a_hugging_face_model_is_a_one_line_usage_error(tiny_vit: Path, finished_run: FinishedRun, tmp_path: Path) -> None:
    folder = Path(finished_run.config.dataset.removeprefix("imagefolder:"))
    image = str(sorted((folder / "test").rglob("*.png"))[0])
    result = tlwork("classify", image, "--model", str(tiny_vit), "--explain", str(tmp_path / "cam"), "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("tlwork: error: ")]
    assert len(errors) == 1 and "is not a tlwork run or bundle" in errors[0]
    assert not (tmp_path / "cam").exists()
