"""Hugging Face image classifiers: as ready-made models and as backbones with a new head.

``load_hf_classifier("nateraw/vit-base-patch16-224-cifar10")`` loads a hub id or a local
``save_pretrained`` folder through ``AutoImageProcessor`` and
``AutoModelForImageClassification`` and returns a ``Classifier`` that preprocesses with the
model's own image processor, so tlwork's top-k equals ``pipeline("image-classification")``.
``build_hf_classifier`` gives ``core.models.build_model`` an ``hf:`` backbone with a fresh
head for the dataset's classes and correct ``id2label``/``label2id``. The model is wrapped so
``model(x)`` returns the logits tensor, and a trained run's bundle stores the model's config
in model.json (``arch["config"]``), so ``model_from_arch`` rebuilds it with no network.

Loading is cache-first: a cached hub model never touches the network. A model that is not
cached while the Hub is unreachable (or ``HF_HUB_OFFLINE=1``) raises ``WeightsUnavailable``
saying how to fix it; ``trust_remote_code`` is never enabled. transformers is imported only
inside these functions, so nothing else pays its start-up cost.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Callable, Iterator

import torch
from torch import nn

from core.errors import ConfigError, WeightsUnavailable
from core.models.hub import fetch, hub_reachable, local_folder, unavailable
from core.models.info import ModelInfo
from core.models.weights import find_head, load_into, read_state_dict

# PIL resampling codes (what image processors store) -> torchvision interpolation names.
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


class HFImageClassifier(nn.Module):
    """A transformers image classifier whose ``forward(pixel_values)`` returns the logits tensor.

    The training loop, ``Tally`` and evaluation all expect ``model(x) -> logits``; the wrapped
    model lives at ``.model`` (so parameter names start with ``model.``).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def activation(self) -> str:
        """``sigmoid`` for multi-label or single-output models, as the pipeline decides; else ``softmax``."""
        config = self.model.config
        if config.problem_type == "multi_label_classification" or config.num_labels == 1:
            return "sigmoid"
        return "softmax"

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


# --- where a model comes from -------------------------------------------------------------
















@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No progress bars and no 'newly initialised weights' warnings while tlwork loads a model."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _load(id_or_path: str, what: Callable[..., Any], **kwargs: Any) -> Any:
    """``what.from_pretrained`` from a local folder or (cache first) the Hub; remote code never runs."""
    folder = local_folder(id_or_path)
    kwargs["trust_remote_code"] = False
    if folder is not None:
        try:
            return what(str(folder), **kwargs)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"{id_or_path}: cannot load this Hugging Face model ({first})") from None
    return fetch(id_or_path, lambda local_files_only: what(id_or_path, local_files_only=local_files_only, **kwargs))


def _safetensors_kwargs(id_or_path: str) -> dict[str, Any]:
    """Prefer safetensors: required for a local folder that has them; first choice on the Hub.

    A repo with only a PyTorch .bin still loads (transformers reads it with weights_only=True).
    """
    folder = local_folder(id_or_path)
    if folder is not None and any(folder.glob("*.safetensors*")):
        return {"use_safetensors": True}
    return {}


def _precheck(id_or_path: str) -> None:
    """Fail fast, before importing transformers, for a hub model that is not cached and cannot be fetched."""
    if local_folder(id_or_path) is not None:
        return
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(id_or_path, "config.json"), str):
        return
    if constants.is_offline_mode():
        raise unavailable(id_or_path, "HF_HUB_OFFLINE=1 forbids downloading it (unset it to download)")
    if not hub_reachable():
        raise unavailable(id_or_path, f"{constants.ENDPOINT} cannot be reached (no network?)")


def load_config(id_or_path: str) -> Any:
    """The model's ``PreTrainedConfig``; a model that is not an image classifier is a ConfigError."""
    _precheck(id_or_path)
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING

    try:
        config = _load(id_or_path, AutoConfig.from_pretrained)
    except ValueError as exc:  # an unknown model_type (custom code), a broken config.json
        raise ConfigError(f"hf:{id_or_path}: unsupported configuration ({exc}); tlwork never runs remote code") from None
    if type(config) not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING:
        raise ConfigError(
            f"hf:{id_or_path} is a {config.model_type!r} model, which has no image-classification head in "
            "transformers; pick an image-classification model (e.g. google/vit-base-patch16-224)"
        )
    return config


def load_processor(id_or_path: str, config: Any) -> Any:
    """The model's image processor, or None when it has no preprocessor_config.json."""
    from transformers import AutoImageProcessor

    try:
        return _load(id_or_path, AutoImageProcessor.from_pretrained)
    except ConfigError:
        return None
    except WeightsUnavailable:
        raise
    except (OSError, ValueError):
        return None


# --- preprocessing ------------------------------------------------------------------------


def _get(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def processor_preprocessing(processor: Any, config: Any) -> tuple[int, tuple[float, ...], tuple[float, ...], str]:
    """(size, mean, std, interpolation) that best describe ``processor`` as a square resize.

    Exact for ViT-style processors (resize to HxW, rescale, normalise); for resize-then-crop
    processors the size is the crop size. Without a processor: the config's image size and
    ImageNet statistics.
    """
    from core.models.info import IMAGENET_MEAN, IMAGENET_STD

    default_size = config.image_size if isinstance(getattr(config, "image_size", None), int) else 224
    if processor is None:
        return default_size, IMAGENET_MEAN, IMAGENET_STD, "bilinear"
    size = None
    if _get(processor, "do_center_crop"):
        crop = _get(processor, "crop_size")
        size = _get(crop, "height") or _get(crop, "shortest_edge")
    if size is None:
        resize = _get(processor, "size")
        size = _get(resize, "height") or _get(resize, "shortest_edge") or _get(resize, "longest_edge")
    if _get(processor, "do_normalize") is False:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    else:
        mean = tuple(float(x) for x in (_get(processor, "image_mean") or IMAGENET_MEAN))
        std = tuple(float(x) for x in (_get(processor, "image_std") or IMAGENET_STD))
    resample = _get(processor, "resample")
    try:
        interpolation = _RESAMPLE.get(int(resample), "bilinear")
    except (TypeError, ValueError):
        interpolation = str(getattr(resample, "value", "bilinear"))
    return int(size or default_size), mean, std, interpolation  # type: ignore[return-value]


def processor_transform(processor: Any) -> Callable[[Any], torch.Tensor]:
    """PIL image -> the model's input tensor (C, H, W), exactly as the pipeline prepares it."""

    def transform(image: Any) -> torch.Tensor:
        return processor(images=image, return_tensors="pt")["pixel_values"][0]

    return transform


# --- building and loading -----------------------------------------------------------------


def head_path(model: nn.Module) -> str:
    """The dotted path (inside the transformers model) of its classification head."""
    for name in ("classifier", "head", "fc"):
        module = getattr(model, name, None)
        if isinstance(module, nn.Module) and any(True for _ in module.parameters()):
            return name
    return find_head(model)


def hf_stages(model: HFImageClassifier, head: str) -> list[list[str]]:
    """Parameter groups for ``partial`` mode: one per encoder layer, input side first.

    The encoder layers are the ``ModuleList`` holding the most parameters (ViT's ``layers``,
    ConvNeXt's and Swin's ``stages``/``layers``); parameters before it (embeddings) join the
    first layer, those after it (the final norm) join the last.
    """
    names = [n for n, _ in model.named_parameters() if not n.startswith(head + ".")]
    best, best_count = None, 0
    for prefix, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1 and not (prefix + ".").startswith(head + "."):
            count = sum(p.numel() for p in module.parameters())
            if count > best_count:
                best, best_count = prefix, count
    if best is None:
        return [names] if names else []
    layers = getattr(model.get_submodule(best), "_modules")
    groups: list[list[str]] = [[] for _ in layers]
    index = {f"{best}.{key}.": i for i, key in enumerate(layers)}
    before, after, seen_layers = [], [], False
    for name in names:
        hit = next((i for prefix, i in index.items() if name.startswith(prefix)), None)
        if hit is not None:
            groups[hit].append(name)
            seen_layers = True
        elif seen_layers:
            after.append(name)
        else:
            before.append(name)
    groups = [g for g in groups if g]
    if not groups:
        return [names]
    groups[0] = before + groups[0]
    groups[-1] += after
    return groups


def _labels(class_names: list[str]) -> dict[str, Any]:
    return {
        "num_labels": len(class_names),
        "id2label": dict(enumerate(class_names)),
        "label2id": {n: i for i, n in enumerate(class_names)},
    }


def _reset_head(model: nn.Module, head: str, config: Any) -> None:
    """A freshly initialised head, as transformers initialises Linear layers (truncated normal)."""
    std = float(getattr(config, "initializer_range", 0.02) or 0.02)
    for module in model.get_submodule(head).modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def _info(name: str, wrapper: HFImageClassifier, config: Any, processor: Any) -> ModelInfo:
    head = head_path(wrapper.model)
    size, mean, std, interpolation = processor_preprocessing(processor, config)
    info = ModelInfo(
        "hf", name, f"model.{head}", hf_stages(wrapper, f"model.{head}"), mean, std, interpolation,  # type: ignore[arg-type]
        extra={"config": json.loads(config.to_json_string(use_diff=False))},
    )
    info.size = size
    return info


def build_hf_classifier(
    name: str, num_classes: int, weights: str = "imagenet", class_names: list[str] | None = None
) -> tuple[nn.Module, ModelInfo]:
    """A Hugging Face backbone with a new ``num_classes`` head, wrapped to return logits.

    ``weights``: ``imagenet`` loads the model's pretrained weights (whatever it was trained
    on; the head is reset unless the model already predicts exactly ``class_names``), ``none``
    keeps the random initialisation, a PATH loads a state dict (HF or tlwork key layout).
    """
    names = list(class_names) if class_names is not None else [f"LABEL_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")
    _precheck(name)
    from transformers import AutoModelForImageClassification

    with quiet_transformers():
        config = load_config(name)
        processor = load_processor(name, config)
        pretrained_labels = [config.id2label.get(i) for i in range(config.num_labels)] if config.id2label else []
        for key, value in _labels(names).items():
            setattr(config, key, value)
        if weights == "imagenet":
            model = _load(
                name, AutoModelForImageClassification.from_pretrained, config=config,
                ignore_mismatched_sizes=True, dtype=torch.float32, **_safetensors_kwargs(name),
            )
        else:
            model = AutoModelForImageClassification.from_config(config, trust_remote_code=False, dtype=torch.float32)
    wrapper = HFImageClassifier(model)
    info = _info(name, wrapper, model.config, processor)
    # A model that already predicts exactly these classes keeps its head; build_model
    # re-initialises a fresh Linear head, and a fresh head of another shape is reset here.
    info.fresh_head = weights != "imagenet" or pretrained_labels != names
    if weights not in ("imagenet", "none"):
        state = read_state_dict(weights)
        if not any(k.startswith("model.") for k in state):
            state = {f"model.{k}": v for k, v in state.items()}
        info.fresh_head = not load_into(wrapper, state, info.head, source=weights)
    if info.fresh_head and not isinstance(wrapper.get_submodule(info.head), nn.Linear):
        _reset_head(wrapper, info.head, model.config)
    return wrapper, info


def model_from_arch(arch: dict[str, Any], class_names: list[str]) -> nn.Module:
    """Rebuild a bundle's wrapped model (random weights) from model.json alone, offline."""
    from transformers import CONFIG_MAPPING, AutoModelForImageClassification

    saved = dict(arch.get("config") or {})
    model_type = saved.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise ConfigError(f"model.json: unknown Hugging Face model type {model_type!r}; the bundle is damaged or from a newer transformers")
    config = CONFIG_MAPPING[model_type].from_dict(saved)
    for key, value in _labels(list(class_names)).items():
        setattr(config, key, value)
    with quiet_transformers():
        model = AutoModelForImageClassification.from_config(config, trust_remote_code=False, dtype=torch.float32)
    return HFImageClassifier(model)


def load_pretrained(id_or_path: str) -> tuple[HFImageClassifier, list[str], Any]:
    """A pretrained classifier as it is: (the wrapped fp32 model, its class names, its image processor)."""
    _precheck(id_or_path)  # before importing transformers: an unavailable model fails in a second
    from transformers import AutoModelForImageClassification

    with quiet_transformers():
        config = load_config(id_or_path)
        processor = load_processor(id_or_path, config)
        model = _load(
            id_or_path, AutoModelForImageClassification.from_pretrained, config=config,
            dtype=torch.float32, **_safetensors_kwargs(id_or_path),
        )
    labels = model.config.id2label or {}
    class_names = [str(labels.get(i, f"LABEL_{i}")) for i in range(model.config.num_labels)]
    return HFImageClassifier(model), class_names, processor
