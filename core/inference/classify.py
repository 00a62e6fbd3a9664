"""Classify image files with any model tlwork knows: a generator of classification events.

``classify(model_ref, inputs)`` takes files and folders (a folder is searched recursively for
image files), loads the model once and classifies the images in batches, yielding
``ClassificationStarted``, one ``ImageClassified`` (top-k labels with probabilities) or
``ImageFailed`` (a one-line reason naming the file) per image in input order, and
``ClassificationEnded``. A bad file never stops the others.

``model_ref`` is a run directory or name, a bundle (folder or model.json), ``last``, an
ONNX file that ``tlwork export`` wrote (``*.onnx``), a Hugging Face hub id with or without
the ``hf:`` prefix (``owner/name``; a bare name without a slash is looked up as a run, so
single-word hub ids need ``hf:``), or a local Hugging Face folder (one whose config.json
describes a transformers model). A bundle decodes and preprocesses a file exactly as
evaluation does (``core.data.open_rgb`` then ``eval_transform``), so it predicts what
evaluation scored. An ONNX export decodes the same way, preprocesses with Pillow and NumPy
(``core.data.preprocessing.to_array``) and runs in onnxruntime: neither torch nor
torchvision is imported. A Hugging Face model decodes and preprocesses as
``pipeline("image-classification")`` does (EXIF orientation applied, the model's own image
processor), so its top-k matches the pipeline's.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from core.data.images import image_error, one_line
from core.errors import ConfigError
from core.events import ClassificationEnded, ClassificationStarted, ClassificationStopped, Event, ImageClassified, ImageFailed

DEFAULT_MODEL = "hf:nateraw/vit-base-patch16-224-cifar10"
"""The notebook's fine-tuned CIFAR-10 ViT."""


# --- inputs -------------------------------------------------------------------------------


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files as given (even missing ones, which fail later) and each folder's image files, sorted."""
    from core.data.images import IMAGE_EXTENSIONS

    if not inputs:
        raise ConfigError("no images given; pass image files or folders, e.g. tlwork classify photo.jpg")
    files: list[str] = []
    empty: list[str] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(
                str(f) for f in p.rglob("*")
                if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file() and not f.name.startswith(".")
            )
            files += found
            if not found:
                empty.append(item)
        else:
            files.append(item)
    if not files:
        raise ConfigError(f"no image files in {', '.join(empty)}; extensions looked for: {', '.join(IMAGE_EXTENSIONS)}")
    return files


def read_image(path: str, exif_orientation: bool = False) -> Any:
    """The file as an RGB PIL image; a possible decompression bomb is refused, never decoded.

    ``exif_orientation=False`` decodes as training and evaluation do (``core.data.open_rgb``);
    True also applies the EXIF orientation, as transformers' ``load_image`` does.
    """
    from PIL import Image, ImageOps

    from core.data.images import open_rgb, refuse_bomb  # core.data also makes Pillow's bomb warning an error

    if not exif_orientation:
        return open_rgb(path)
    with Image.open(path) as img:
        refuse_bomb(img)
        img.load()
        return ImageOps.exif_transpose(img).convert("RGB")


class _Files:
    """(index, tensor or None, error or None) for each file: a Dataset that never raises."""

    def __init__(self, paths: list[str], transform: Callable[[Any], Any], exif_orientation: bool) -> None:
        self.paths = paths
        self.transform = transform
        self.exif_orientation = exif_orientation

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, Any, str | None]:
        path = self.paths[index]
        try:
            image = read_image(path, self.exif_orientation)
        except Exception as exc:  # every decoding failure becomes an ImageFailed, never a crash
            return index, None, image_error(path, exc)
        try:
            return index, self.transform(image), None
        except Exception as exc:
            return index, None, f"{path}: cannot be preprocessed ({type(exc).__name__}: {one_line(exc)})"


def _as_list(batch: list[Any]) -> list[Any]:
    return batch


def _workers(asked: int | None, device: Any, files: int, batch_size: int) -> int:
    """Decoding processes: as asked, else none for a single batch (starting a pool costs more than it saves)."""
    from core.data.loaders import default_workers

    if asked is not None:
        return asked
    return 0 if files <= batch_size else default_workers(device)


# --- models -------------------------------------------------------------------------------


def _is_hf_folder(folder: Path) -> bool:
    """A folder whose config.json describes a transformers model (a run's config.json does not)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and ("model_type" in config or "architectures" in config)


def resolve_ref(ref: str, runs_dir: str = "runs") -> str:
    """``ref`` as ``core.inference.load_classifier`` takes it: Hugging Face models get ``hf:``."""
    if ref.startswith("hf:") or ref == "last":
        return ref
    p = Path(ref).expanduser()
    if p.is_dir() and not (p / "model.json").is_file() and _is_hf_folder(p):
        return "hf:" + ref
    if p.exists() or (Path(runs_dir).expanduser() / ref).exists():
        return ref  # a run or bundle; load_classifier explains what is wrong with it
    if "/" in ref and not ref.startswith((".", "/", "~")) and ref.count("/") == 1:
        return "hf:" + ref
    raise ConfigError(
        f"unknown model {ref!r}: no such run under {runs_dir}/, bundle or folder; pass a run directory, a bundle "
        "(model.json), 'last', a Hugging Face hub id (owner/name or hf:ID) or a local Hugging Face folder"
    )


def load_model(model_ref: str, device: Any, runs_dir: str = "runs") -> Any:
    """The ``Classifier`` for ``model_ref`` (see the module docstring for what it may be)."""
    from core.errors import WeightsUnavailable
    from core.inference.classifier import load_classifier

    ref = resolve_ref(model_ref, runs_dir)
    try:
        return load_classifier(ref, device, runs_dir=runs_dir)
    except (ConfigError, WeightsUnavailable) as exc:
        if ref == model_ref:
            raise
        # A bare owner/name was taken for a hub id: say so, in case a local path was meant.
        raise type(exc)(f"{exc} (no local run, bundle or folder is named {model_ref!r})") from None


# --- classification -----------------------------------------------------------------------


@dataclass
class _Backend:
    """What the classification loop needs from a model: batches of decoded files, and their ranking."""

    name: str
    classes: int
    batches: Iterable[list[tuple[int, Any, str | None]]]
    rank: Callable[[list[Any], int], list[tuple[tuple[str, float], ...]]]  # inputs, k -> top-k per input


def classify(
    model_ref: str | None,
    inputs: list[str],
    *,
    top_k: int = 5,
    batch_size: int = 32,
    device: str = "auto",
    runs_dir: str = "runs",
    workers: int | None = None,
    stop: threading.Event | None = None,
) -> Iterator[Event]:
    """Classify ``inputs`` (files and folders) with ``model_ref``, yielding events (see module docstring)."""
    from core.inference.onnxformat import is_onnx

    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1 (got {top_k})")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1 (got {batch_size})")
    files = expand_inputs(list(inputs))
    ref = model_ref or DEFAULT_MODEL
    if is_onnx(ref):
        backend = _onnx_backend(ref, files, batch_size, device)
    else:
        backend = _torch_backend(ref, files, batch_size, device, runs_dir, workers)
    k = min(top_k, backend.classes)
    start = time.perf_counter()
    classified = failed = 0
    yield ClassificationStarted(backend.name, len(files), k)
    for batch in backend.batches:
        if stop is not None and stop.is_set():
            yield ClassificationStopped(backend.name, classified, failed, time.perf_counter() - start)
            return
        good = [(i, x) for i, x, err in batch if err is None]
        ranked = dict(zip((i for i, _ in good), backend.rank([x for _, x in good], k))) if good else {}
        for i, _, err in batch:
            if err is None:
                classified += 1
                yield ImageClassified(files[i], ranked[i])
            else:
                failed += 1
                yield ImageFailed(files[i], err)
    yield ClassificationEnded(backend.name, classified, failed, time.perf_counter() - start)


def _torch_backend(ref: str, files: list[str], batch_size: int, device: str, runs_dir: str, workers: int | None) -> _Backend:
    """A run, bundle or Hugging Face model on the device, its files decoded by a DataLoader."""
    import torch
    from torch.utils.data import DataLoader

    from core.data.loaders import to_device
    from core.data.safedata import worker_options
    from core.data.transforms import eval_transform
    from core.device import autocast, configure, pick_device

    dev = pick_device(device)
    configure(dev)
    clf = load_model(ref, dev, runs_dir)
    hf_model = clf.transform is not None
    transform = clf.transform or eval_transform(clf.preprocessing)
    activation = getattr(clf.model, "activation", "softmax")
    processes = _workers(workers, dev, len(files), batch_size)
    loader = DataLoader(
        _Files(files, transform, exif_orientation=hf_model),  # type: ignore[arg-type]
        batch_size=batch_size,
        shuffle=False,
        num_workers=processes,
        collate_fn=_as_list,
        **worker_options(processes),  # a stop signal to the process group is the main process's to handle
    )

    def rank(inputs: list[Any], k: int) -> list[tuple[tuple[str, float], ...]]:
        # Inside the block only: the consumer's code between yields must not run in inference mode.
        with torch.inference_mode(), autocast(dev, clf.amp):
            logits = clf.logits(to_device(torch.stack(inputs), dev, True)).float()
            probs = logits.sigmoid() if activation == "sigmoid" else logits.softmax(dim=1)
            # A stable sort breaks ties by class index, as the pipeline's sorted() does.
            scores, order = probs.sort(dim=1, descending=True, stable=True)
            top_scores, top_order = scores[:, :k].cpu().tolist(), order[:, :k].cpu().tolist()
        return [tuple((clf.class_names[c], float(s)) for c, s in zip(row_o, row_s)) for row_s, row_o in zip(top_scores, top_order)]

    return _Backend(clf.name, len(clf.class_names), loader, rank)


def _onnx_backend(ref: str, files: list[str], batch_size: int, device: str) -> _Backend:
    """An ONNX export in onnxruntime, its files decoded in this process: no torch anywhere."""
    from core.inference.onnxmodel import load_onnx

    model = load_onnx(ref, device)
    items = _Files(files, model.transform, exif_orientation=False)  # decoded as its bundle decodes
    batches = ([items[i] for i in range(s, min(s + batch_size, len(items)))] for s in range(0, len(items), batch_size))
    return _Backend(model.name, len(model.class_names), batches, model.rank)
