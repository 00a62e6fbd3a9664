"""Export a run's model to ONNX, checked against PyTorch before anything is written.

``export_onnx(ref)`` loads a run, bundle or ``last`` on the CPU, exports it with
``timm.utils.onnx.onnx_export`` (``torch.onnx.export`` with a dynamic batch dimension, then
the ONNX checker), and runs images from the run's validation split through both PyTorch and
onnxruntime, as timm's ``onnx_validate.py`` does. It reports the largest logit difference
and how often the top-1 classes agree; beyond ``tolerance`` it raises ``ExportMismatch``
and writes nothing. Otherwise the model, with tlwork's metadata (class names,
preprocessing, activation, how it was made and checked: ``core.inference.onnxmodel``), is
written atomically.

The exporter: torch's dynamo exporter (``torch.export`` + onnxscript; the default since
torch 2.9, opsets 18 and up) first, then the TorchScript exporter, which torch deprecates
but which still covers opsets 7-20 and models the dynamo exporter cannot trace. An
``--opset`` below 18 goes straight to the TorchScript exporter: the dynamo exporter would
quietly keep 18.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.data.images import one_line
from core.data.loaders import make_loader
from core.errors import ConfigError, ExportMismatch, TlworkError
from core.inference.classifier import Classifier, load_classifier
from core.inference.evaluate import scored_set
from core.inference.onnxformat import (
    DEFAULT_PARITY_IMAGES,
    DEFAULT_TOLERANCE,
    FORMAT,
    INPUT,
    METADATA_KEY,
    OUTPUT,
    VERSION,
    is_onnx,
    require,
)
from core.inference.onnxmodel import session
from core.runs.bundle import read_meta
from core.runs.store import atomic_write, read_config

PARITY_BATCH = 16  # several batches, the last one partial: the dynamic batch dimension is exercised too
OPSETS = {"dynamo": (18, 23), "torchscript": (7, 20)}
"""Opsets each exporter writes in torch 2.14 (torch.onnx._constants), in the order they are tried."""


@dataclass(frozen=True)
class Exported:
    """What ``export_onnx`` wrote and how well it agrees with PyTorch."""

    path: str
    source: str
    exporter: str
    opset: int
    checked_on: str  # "64 images of the validation split of imagefolder:...", or random inputs and why
    images: int
    max_logit_diff: float
    top1_agreement: float
    tolerance: float
    size_bytes: int
    seconds: float


def export_onnx(
    model_ref: str,
    output: str | None = None,
    *,
    opset: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    parity_images: int = DEFAULT_PARITY_IMAGES,
    runs_dir: str = "runs",
) -> Exported:
    """Export ``model_ref`` (a run directory or name, a bundle or ``last``) to ONNX at ``output``.

    ``output`` defaults to ``model.onnx`` beside the bundle. Raises ``ExportMismatch`` (and
    leaves no file) when onnxruntime's logits differ from PyTorch's by more than ``tolerance``.
    """
    start = time.perf_counter()
    _check_options(model_ref, output, opset, tolerance, parity_images)
    for module in ("onnx", "onnxscript", "onnxruntime"):
        require(module, "tlwork export")
    clf = load_classifier(model_ref, torch.device("cpu"), runs_dir=runs_dir)
    assert clf.path is not None  # a run or bundle, never hf: (refused above)
    target = _target(output, clf.path)
    inputs, checked_on = parity_inputs(clf, parity_images)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        exporter = export_graph(clf.model, inputs[:2], Path(tmp), opset)
        diff, agreement = compare(clf, Path(tmp), inputs)
        if not diff <= tolerance:  # a NaN fails too
            raise ExportMismatch(
                f"{target}: onnxruntime's logits differ from PyTorch's by up to {diff:.3g} (tolerance {tolerance:g}) "
                f"on {checked_on}, top-1 agreeing on {agreement:.1%}; nothing was written. "
                f"Try another --opset, or --tolerance if the difference is acceptable"
            )
        parity = {"on": checked_on, "images": len(inputs), "max_logit_diff": diff, "top1_agreement": agreement, "tolerance": tolerance}
        data, written_opset = with_metadata(Path(tmp), _metadata(clf, exporter, parity))
        if opset is not None and written_opset != opset:
            raise ConfigError(f"the {exporter} exporter wrote opset {written_opset}, not {opset}; pass --opset {written_opset}")
        atomic_write(target, data)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return Exported(
        str(target), str(clf.path), exporter, written_opset, checked_on, len(inputs), diff, agreement, tolerance,
        len(data), time.perf_counter() - start,
    )


def _check_options(model_ref: str, output: str | None, opset: int | None, tolerance: float, parity_images: int) -> None:
    """One-line errors for what cannot be exported as asked, before anything is loaded."""
    if model_ref.startswith("hf:") or is_onnx(model_ref):
        raise ConfigError(f"{model_ref}: tlwork export takes a run directory or name, a bundle (model.json) or 'last'")
    low, high = min(lo for lo, _ in OPSETS.values()), max(hi for _, hi in OPSETS.values())
    if opset is not None and not low <= opset <= high:
        raise ConfigError(f"--opset must be between {low} and {high} (got {opset}); leave it out for the exporter's default")
    if math.isnan(tolerance) or tolerance < 0:
        raise ConfigError(f"--tolerance must be a number >= 0 (got {tolerance})")
    if parity_images < 1:
        raise ConfigError(f"--parity-images must be at least 1 (got {parity_images})")
    if output is not None and not Path(output).is_dir() and Path(output).suffix.lower() != ".onnx":
        raise ConfigError(f"--output {output}: name the file *.onnx (that is how tlwork classify --model recognises it)")


def _target(output: str | None, bundle: Path) -> Path:
    """Where the export goes: ``output`` (a file, or a folder to hold model.onnx), else beside the bundle."""
    if output is None:
        return bundle / "model.onnx"
    p = Path(output).expanduser()
    return p / "model.onnx" if p.is_dir() else p


def parity_inputs(clf: Classifier, count: int, data_dir: str = "data") -> tuple[torch.Tensor, str]:
    """Up to ``count`` preprocessed images of the run's validation split, as the bundle sees them.

    Without a run beside the bundle, or when its data is gone, seeded random inputs of the
    model's input size stand in (the description says so): they still compare the two graphs.
    """
    config = read_config(clf.path)
    reason = "no run config beside the bundle"
    if config is not None:
        try:
            data, split, dataset, _, _ = scored_set(clf.name, None, data_dir, config)
            n = min(count, len(data))
            if n:
                subset = torch.utils.data.Subset(data, range(n))
                loader = make_loader(subset, clf.preprocessing, PARITY_BATCH, torch.device("cpu"), 0, clf.transform)
                return torch.cat([images for images, _ in loader]), f"{n} images of the {split} split of {dataset}"
            reason = f"the {split} split of {dataset} is empty"
        except TlworkError as exc:
            reason = f"the run's data cannot be read: {exc}"
    size = clf.preprocessing.size
    noise = torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(0))
    return noise, f"{count} random inputs ({reason})"


def export_graph(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int | None) -> str:
    """Write ``model`` to ``path`` as ONNX (dynamic batch, checked by onnx); returns the exporter that did it."""
    from timm.utils.onnx import onnx_export

    tried = []
    for exporter, (low, high) in OPSETS.items():
        if opset is not None and not low <= opset <= high:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, tracer warnings
                onnx_export(
                    model, str(path), example_input=example, opset=opset, use_dynamo=exporter == "dynamo",
                    input_names=[INPUT], output_names=[OUTPUT], external_data=False, check=True,
                )
            return exporter
        except Exception as exc:  # any failure of one exporter is a reason to try the other
            tried.append(f"{exporter}: {type(exc).__name__}: {one_line(exc)[:300]}")
    raise ConfigError(f"torch.onnx could not export this model ({'; '.join(tried)}); try another --opset")


def compare(clf: Classifier, path: Path, inputs: torch.Tensor) -> tuple[float, float]:
    """(largest |logit difference|, share of inputs whose top-1 class agrees) of PyTorch and onnxruntime."""
    sess = session(path, "cpu")
    name = sess.get_inputs()[0].name
    diff, agree = 0.0, 0
    for chunk in inputs.split(PARITY_BATCH):
        with torch.inference_mode():
            expected = clf.logits(chunk).float().numpy()
        got = sess.run(None, {name: chunk.numpy()})[0]
        if got.shape != expected.shape or not np.isfinite(got).all():
            return math.inf, 0.0
        diff = max(diff, float(np.abs(got - expected).max()))
        agree += int((got.argmax(axis=1) == expected.argmax(axis=1)).sum())
    return diff, agree / len(inputs)


def _metadata(clf: Classifier, exporter: str, parity: dict[str, Any]) -> dict[str, Any]:
    """What ``core.inference.onnxmodel`` reads back: the bundle's description plus how the file was made."""
    assert clf.path is not None
    return {
        "format": FORMAT,
        "version": VERSION,
        "class_names": list(clf.class_names),
        "preprocessing": clf.preprocessing.to_dict(),
        "activation": getattr(clf.model, "activation", "softmax"),
        "input": INPUT,
        "output": OUTPUT,
        "arch": read_meta(clf.path).get("arch"),
        "source": str(clf.path),
        "exporter": exporter,
        "torch": torch.__version__,
        "parity": parity,
    }


def with_metadata(path: Path, meta: dict[str, Any]) -> tuple[bytes, int]:
    """The ONNX file at ``path`` with ``meta`` in its metadata_props, as bytes; and its default-domain opset."""
    import onnx

    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return model.SerializeToString(), int(opset)
