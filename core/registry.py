"""Choice registries: every menu and every ``--help`` list in tlwork reads from here.

Each choice has a machine name (what the CLI takes and config.json stores), a short label
(what a menu shows) and a one-line description, after timm's
``list_optimizers(with_description=True)``. The Textual set-up screen and the typer CLI both
read these tuples, so the two front ends cannot drift apart. This module imports nothing
heavy: ``tlwork --help`` must not pull in torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Choice:
    """One selectable option: ``name`` is stored, ``label`` is shown, ``description`` explains."""

    name: str
    label: str
    description: str


BACKBONES: tuple[Choice, ...] = (
    Choice("resnet18", "ResNet-18", "torchvision ResNet-18, 11.7M params; the notebook's backbone"),
    Choice("resnet34", "ResNet-34", "torchvision ResNet-34, 21.8M params"),
    Choice("resnet50", "ResNet-50", "torchvision ResNet-50, 25.6M params, bottleneck blocks"),
    Choice("efficientnet_b0", "EfficientNet-B0", "torchvision EfficientNet-B0, 5.3M params, efficient CNN"),
    Choice("mobilenet_v3_large", "MobileNetV3-L", "torchvision MobileNetV3-Large, 5.5M params, fast on CPU"),
    Choice("vit_b_16", "ViT-B/16", "torchvision ViT-Base/16, 86M params; needs --image-size 224"),
    Choice(
        "timm:tf_efficientnet_lite0",
        "EfficientNet-Lite0",
        "timm EfficientNet-Lite0, 4.7M params; ImageNet weights included",
    ),
)
"""Built-in backbones. Any timm model is also accepted as ``timm:NAME``."""

BACKBONE_PREFIXES: tuple[Choice, ...] = (
    Choice("timm:", "timm:NAME", "any timm model, e.g. timm:convnext_tiny or timm:tf_efficientnet_lite0"),
    Choice("hf:", "hf:ID_OR_PATH", "a Hugging Face image-classification model (hub id or local folder)"),
)

MODES: tuple[Choice, ...] = (
    Choice("linear-probe", "Linear probe", "freeze the backbone (BatchNorm in eval), train only the new head"),
    Choice("finetune", "Fine-tune", "train every layer at a low learning rate"),
    Choice("partial", "Partial", "train the last K stages (--unfreeze-stages) plus the head"),
    Choice(
        "probe-then-finetune",
        "Probe, then fine-tune",
        "the notebook's curriculum in one run: --probe-epochs probing, then fine-tuning",
    ),
)

AUGMENTATIONS: tuple[Choice, ...] = (
    Choice("none", "None", "resize and normalise only"),
    Choice("crop-flip", "Crop + flip", "the notebook's RandomCrop(32, pad 4) + horizontal flip, then resize"),
    Choice("randaugment", "RandAugment", "crop + flip + RandAugment(2, 9) from torchvision.transforms.v2"),
    Choice("trivialaugment", "TrivialAugment", "crop + flip + TrivialAugmentWide + random erasing"),
)

SCHEDULERS: tuple[Choice, ...] = (
    Choice("none", "Constant", "keep the learning rate fixed"),
    Choice("step", "Step", "multiply by --step-gamma every --step-size epochs (the notebook's StepLR(5, 0.1))"),
    Choice("cosine", "Cosine", "linear warm-up for --warmup-epochs, then cosine decay to zero, per batch"),
    Choice("onecycle", "One-cycle", "OneCycleLR: ramp up to --lr, then anneal, per batch"),
)

BN_POLICIES: tuple[Choice, ...] = (
    Choice("auto", "Auto", "frozen with pretrained weights, train with --weights none"),
    Choice("frozen", "Frozen", "BatchNorm keeps its pretrained statistics (inference mode); its scale and shift still train"),
    Choice("train", "Train", "BatchNorm normalises with batch statistics and updates its running ones"),
)
"""BatchNorm while the backbone trains (finetune, partial, and the second stage of probe-then-finetune)."""

KEEP: tuple[Choice, ...] = (
    Choice("best", "Best epoch", "the epoch with the best held-out validation accuracy"),
    Choice("last", "Last epoch", "the model as the last epoch left it"),
)
"""Which model the bundle keeps."""

CLASS_WEIGHTS: tuple[Choice, ...] = (
    Choice("none", "None", "every image counts the same in the loss"),
    Choice("balanced", "Balanced", "the loss weighs each class by its inverse frequency in the training split"),
)
"""``--class-weights``: the loss's answer to class imbalance."""

SAMPLERS: tuple[Choice, ...] = (
    Choice("shuffle", "Shuffle", "every training image once per epoch, in a seeded order"),
    Choice("balanced", "Balanced", "each epoch draws as many images, every class equally often (with replacement)"),
)
"""``--sampler``: the sampler's answer to class imbalance."""

OPTIMIZERS: tuple[Choice, ...] = (
    Choice("sgd", "SGD", "SGD with momentum (--momentum), as in the notebook"),
    Choice("adamw", "AdamW", "AdamW with decoupled weight decay"),
)

DATASETS: tuple[Choice, ...] = (
    Choice("cifar10", "CIFAR-10", "60,000 32x32 images in 10 classes; downloaded into --data-dir"),
    Choice("cifar100", "CIFAR-100", "60,000 32x32 images in 100 classes; downloaded into --data-dir"),
    Choice("demo", "Demo (offline)", "1,000 real CIFAR-10 images shipped with tlwork: 80 train + 20 test per class"),
    Choice("imagefolder:", "Image folder", "imagefolder:PATH with PATH/train (+ test or val), or class folders"),
)

WEIGHTS: tuple[Choice, ...] = (
    Choice("imagenet", "ImageNet", "ImageNet weights: shipped for EfficientNet-Lite0, else downloaded"),
    Choice("none", "Random", "random initialisation (for tests and from-scratch baselines)"),
)
"""Besides these names, ``--weights`` takes a PATH to a .safetensors file or a state dict."""

NORMALIZATIONS: tuple[Choice, ...] = (
    Choice("dataset", "Dataset", "the dataset's own mean/std (CIFAR-10's, as in the notebook)"),
    Choice("backbone", "Backbone", "the mean/std the backbone was pretrained with"),
)

DATA_PATHS: tuple[Choice, ...] = (
    Choice("auto", "Auto", "device-resident when the dataset fits the memory budget, else streamed"),
    Choice("device", "Device", "decode once into a uint8 tensor on the device; crop, flip and resize there in batches"),
    Choice("stream", "Stream", "multi-worker DataLoader, per-image transforms, pinned memory (the notebook's path)"),
)

DEVICES: tuple[Choice, ...] = (
    Choice("auto", "Auto", "cuda, then mps, then cpu"),
    Choice("cuda", "CUDA", "the first NVIDIA GPU (cuda:N for another)"),
    Choice("mps", "Apple MPS", "Apple-silicon GPU"),
    Choice("cpu", "CPU", "the processor; slow but always there"),
)

TRACKERS: tuple[Choice, ...] = (
    Choice("tensorboard", "TensorBoard", "event files under the run's tensorboard/ folder (pip install 'tlwork[tensorboard]')"),
    Choice("mlflow", "MLflow", "params, metrics and the bundle in an MLflow run (--mlflow-uri; pip install 'tlwork[mlflow]')"),
)
"""Experiment trackers for ``--log`` (repeatable); each is an optional extra, imported only when used."""


def names(choices: tuple[Choice, ...]) -> list[str]:
    """The machine names of a registry, in menu order."""
    return [c.name for c in choices]


def find(choices: tuple[Choice, ...], name: str) -> Choice | None:
    """The choice called ``name``, or None."""
    return next((c for c in choices if c.name == name), None)


def describe(choices: tuple[Choice, ...]) -> str:
    """A compact ``name: description`` listing for ``--help`` texts."""
    return "; ".join(f"{c.name}: {c.description}" for c in choices)
