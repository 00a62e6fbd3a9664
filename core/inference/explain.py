"""Grad-CAM: where in an image a trained model looked for the class it predicted.

``Explainer(clf)`` wraps pytorch-grad-cam's ``GradCAM`` (the ``grad-cam`` package; no
hand-written hooks) around a bundle's model, with the target layer picked from the
backbone's last stage (``ModelInfo.stages``): the module of that stage whose output is the
last spatial feature map of the forward pass (ResNet's ``layer4``, EfficientNet's final
conv block). ``overlay(path)`` classifies the image as evaluation does and returns it with
the predicted class's heatmap laid over it, at least ``MIN_SIDE`` pixels a side.
``explain(ref, paths, out_dir)`` writes one PNG per image and yields ``ImageExplained``.

Vision transformers (timm, torchvision and ``hf:`` ViTs) give token sequences, not feature
maps: their Grad-CAM needs a reshape transform per architecture, which tlwork does not
carry, so they are refused with a one-line ``ConfigError`` naming what is explainable.
ONNX exports and Hugging Face hub models are refused the same way.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator

import torch
from PIL import Image
from torch import nn

from core.data.images import image_error, open_rgb
from core.data.transforms import eval_transform
from core.device import pick_device
from core.errors import ConfigError
from core.events import Event, ImageExplained, ImageFailed
from core.inference.classifier import Classifier, load_classifier

MIN_SIDE = 128
"""The overlay's shorter side in pixels (CIFAR's 32 px images are scaled up to it)."""

EXPLAINABLE = "convolutional backbones (ResNet, EfficientNet, MobileNet, ConvNeXt...) of a tlwork run or bundle"


def target_layer(model: nn.Module, info: Any, size: int) -> nn.Module:
    """The last module of the backbone's last stage whose output is a spatial (N, C, H, W) feature map."""
    last = set(info.stages[-1]) if info is not None and info.stages else set()
    owned = [(n, m) for n, m in model.named_modules()
             if (names := [f"{n}.{p}" if n else p for p, _ in m.named_parameters()]) and all(p in last for p in names)]
    finished: list[tuple[nn.Module, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda m, a, out: finished.append((m, out))) for _, m in owned]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    maps = [m for m, out in finished if isinstance(out, torch.Tensor) and out.dim() == 4]
    if not maps:
        name = f"{info.kind}:{info.name}" if info is not None else "this model"
        raise ConfigError(f"--explain: {name} gives no spatial feature map (a vision transformer?); Grad-CAM here "
                          f"explains {EXPLAINABLE}")
    return maps[-1]


class Explainer:
    """Grad-CAM overlays for one loaded classifier (a tlwork bundle)."""

    def __init__(self, clf: Classifier) -> None:
        if clf.info is None or clf.transform is not None:
            raise ConfigError(f"--explain: {clf.name} is not a tlwork run or bundle; Grad-CAM here explains {EXPLAINABLE}")
        self.clf = clf
        self.model = clf.model.to(memory_format=torch.contiguous_format)
        self.layer = target_layer(self.model, clf.info, clf.preprocessing.size)
        self.transform = eval_transform(clf.preprocessing)

    def overlay(self, image: Image.Image) -> tuple[Image.Image, str, float]:
        """(the image with the predicted class's heatmap over it, the predicted class, its probability)."""
        import numpy as np
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.image import show_cam_on_image
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        x = self.transform(image).unsqueeze(0).to(next(self.model.parameters()).device)
        with torch.inference_mode():
            probs = self.model(x).float().softmax(1)[0]
        pred = int(probs.argmax())
        with GradCAM(model=self.model, target_layers=[self.layer]) as cam:  # its hooks live for this image only
            heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(pred)])[0]
        scale = max(1.0, MIN_SIDE / min(image.size))
        size = (round(image.width * scale), round(image.height * scale))
        base = np.asarray(image.convert("RGB").resize(size, Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
        mask = np.asarray(Image.fromarray(heat.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR))
        picture = show_cam_on_image(base, np.clip(mask, 0.0, 1.0), use_rgb=True)
        return Image.fromarray(picture), self.clf.class_names[pred], float(probs[pred])


def explain(ref: str, paths: list[str], out_dir: str | Path, *, runs_dir: str = "runs", device: str = "auto",
            stop: threading.Event | None = None) -> Iterator[Event]:
    """Write ``out_dir/<image name>.png`` (the Grad-CAM overlay) for each of ``paths``; a bad file never stops the others."""
    explainer = Explainer(load_classifier(ref, pick_device(device), runs_dir=runs_dir))
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for path in paths:
        if stop is not None and stop.is_set():
            return
        try:
            picture, label, prob = explainer.overlay(open_rgb(path))
        except Exception as exc:  # an unreadable file is named, as classify names it
            yield ImageFailed(path, image_error(path, exc))
            continue
        name, n = Path(path).stem, 1
        while f"{name}.png" in used:  # two folders' cat.jpg: cat.png and cat-2.png
            n += 1
            name = f"{Path(path).stem}-{n}"
        used.add(f"{name}.png")
        target = out / f"{name}.png"
        picture.save(target)
        yield ImageExplained(path, str(target), label, prob)
