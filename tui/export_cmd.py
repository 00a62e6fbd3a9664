"""``tlwork export``: a trained model as an ONNX file, checked against PyTorch before it is written.

A thin front over ``core.inference.export.export_onnx``: two plain lines (what was written,
and how closely onnxruntime agrees with PyTorch), or one JSON object with ``--json``. Torch
is imported only once the command runs, so ``tlwork --help`` stays fast.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Optional

import typer

from core.inference.onnxformat import DEFAULT_PARITY_IMAGES, DEFAULT_TOLERANCE


def export(
    model: str = typer.Argument(..., metavar="MODEL", help="a run directory or name, a bundle (model.json) or 'last'"),
    fmt: str = typer.Option("onnx", "--format", help="the file format; onnx is the one there is"),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="the .onnx file to write, or a folder for model.onnx (default: model.onnx beside the bundle)"),
    opset: Optional[int] = typer.Option(None, help="ONNX opset, 7-23 (default: the exporter's own, 20 with torch 2.14); below 18 the TorchScript exporter writes it"),
    tolerance: float = typer.Option(DEFAULT_TOLERANCE, help="the largest logit difference from PyTorch that passes the parity check"),
    parity_images: int = typer.Option(DEFAULT_PARITY_IMAGES, help="validation images run through both PyTorch and onnxruntime"),
    runs_dir: str = typer.Option("runs", help="where run names and 'last' are looked up"),
    as_json: bool = typer.Option(False, "--json", help="print the result as one JSON object"),
) -> None:
    """Export a trained model to ONNX, for onnxruntime and `tlwork classify --model FILE.onnx`.

    The file has a dynamic batch dimension and carries the class names and preprocessing
    (size, mean, std, interpolation) in its ONNX metadata. Before it is written, images from
    the run's validation split (random inputs when the run's data is gone) go through PyTorch
    and onnxruntime; the largest logit difference and the top-1 agreement are printed, and a
    difference above --tolerance writes nothing. Needs the export extra: pip install 'tlwork[export]'.

    Exit codes: 0 exported; 2 a usage error, an unknown or unfinished run, a model the
    exporters cannot handle, or the extra missing; 10 the parity check failed (no file was written).
    """
    from tui.cli import fail, user_errors

    if fmt.lower() != "onnx":
        raise fail(f"--format {fmt} is not supported; pass --format onnx")
    with user_errors():
        from core.inference.export import export_onnx

        result = export_onnx(model, output, opset=opset, tolerance=tolerance, parity_images=parity_images, runs_dir=runs_dir)
    if as_json:
        typer.echo(json.dumps(asdict(result)))
        return
    typer.echo(
        f"exported {result.path} ({result.size_bytes / 1e6:.1f} MB, opset {result.opset}, {result.exporter} exporter) "
        f"from {result.source} in {result.seconds:.1f}s"
    )
    typer.echo(
        f"parity on {result.checked_on}: largest logit difference {result.max_logit_diff:.2g} "
        f"(tolerance {result.tolerance:g}), top-1 agreement {result.top1_agreement:.1%}"
    )
