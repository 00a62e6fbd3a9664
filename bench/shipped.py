"""The shipped EfficientNet-Lite0 weights: float16 against float32, and the quick start's choice.

Two tables from one run, each row a whole ``tlwork run`` process as a user starts it:

  (a) the float32 source (``../shared``) against the float16 file shipped in the package, as
      a linear probe on the 5,000 real CIFAR-10 JPEGs in ``../shared`` (10% held out) at 64 px
      for 3 epochs: the float16 file must score the same;
  (b) the candidates for README's quick start on the shipped demo images at 64 px: random
      weights, a linear probe with the dataset's or the backbone's normalisation, and
      probe-then-fine-tune; the accuracy each reaches and the wall time it takes.

Writes its section of bench/RESULTS.md (``<!-- device:shipped-weights -->``), leaving the
others. Needs ``../shared`` for (a); about 5 minutes on 2 CPU cores.

  python bench/shipped.py
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from compare import SHARED_DATA, SHARED_WEIGHTS, write_section

from core.models.shipped import shipped_weights

LITE0 = "timm:tf_efficientnet_lite0"
QUICK = ["--dataset", "demo", "--image-size", "64", "--device", "cpu"]


def tlwork_run(args: list[str], runs_dir: str) -> dict[str, float]:
    """One ``tlwork run --json`` process: its final accuracy, last validation loss and wall time."""
    cmd = [sys.executable, "-m", "tui.cli", "run", *args, "--runs-dir", runs_dir, "--json"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    epochs = [e for e in events if e["event"] == "epoch_ended"]
    finished = next(e for e in events if e["event"] == "run_finished")
    return {"accuracy": finished["val_accuracy"], "loss": epochs[-1]["val_loss"], "seconds": seconds}


def precision_table(runs_dir: str) -> list[str]:
    shipped = shipped_weights(LITE0)
    assert shipped is not None
    probe = ["--mode", "linear-probe", "--backbone", LITE0, "--dataset", f"imagefolder:{SHARED_DATA}", "--val-split", "0.1",
             "--image-size", "64", "--epochs", "3", "--device", "cpu"]
    rows = [(label, path, tlwork_run([*probe, "--weights", str(path)], runs_dir))
            for label, path in (("float32 (../shared)", SHARED_WEIGHTS), ("float16 (shipped)", shipped.path))]
    (_, _, a), (_, _, b) = rows
    lines = [
        f"`tlwork run {' '.join(probe)} --weights FILE`: 4,500 training and 500 held-out images.\n",
        "| weights | file size | val accuracy | val loss | wall time |",
        "|---|---:|---:|---:|---:|",
        *[f"| {label} | {path.stat().st_size / 1e6:.1f} MB | {100 * r['accuracy']:.2f}% | {r['loss']:.4f} | {r['seconds']:.1f} s |"
          for label, path, r in rows],
        "",
        (f"float16 minus float32: accuracy {100 * (b['accuracy'] - a['accuracy']):+.2f} points, "
         f"validation loss {b['loss'] - a['loss']:+.4f}."),
    ]
    return lines


def quick_start_table(runs_dir: str) -> list[str]:
    candidates = (
        ("random weights, linear probe, 10 epochs", ["--mode", "linear-probe", "--weights", "none", "--epochs", "10"]),
        ("linear probe, dataset normalisation, 10 epochs", ["--mode", "linear-probe", "--epochs", "10"]),
        ("linear probe, backbone normalisation, 10 epochs (README)", ["--mode", "linear-probe", "--normalize", "backbone", "--epochs", "10"]),
        ("probe 10 epochs then fine-tune 1, backbone normalisation",
         ["--mode", "probe-then-finetune", "--normalize", "backbone", "--probe-epochs", "10", "--epochs", "1"]),
    )
    lines = [
        (f"`tlwork run --backbone {LITE0} {' '.join(QUICK)} ...`: 800 training and 200 test images "
         "(the weights are the shipped ones unless `--weights none`).\n"),
        "| run | val accuracy | wall time |",
        "|---|---:|---:|",
    ]
    for label, args in candidates:
        r = tlwork_run(["--backbone", LITE0, *QUICK, *args], runs_dir)
        lines.append(f"| {label} | {100 * r['accuracy']:.2f}% | {r['seconds']:.1f} s |")
    return lines


def main() -> None:
    if not SHARED_WEIGHTS.is_file() or not SHARED_DATA.is_dir():
        raise SystemExit(f"needs {SHARED_WEIGHTS} and {SHARED_DATA} (../shared)")
    import torch

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as runs_dir:
        precision = precision_table(runs_dir)
        quick = quick_start_table(runs_dir)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load:.1f} at the start; torch {torch.__version__}"
    text = "\n".join([
        "## Shipped EfficientNet-Lite0 weights: float16 against float32, and the quick start\n",
        (f"Machine: {machine}. Command: `python bench/shipped.py`; every row is one whole `tlwork run` process "
         "(imports, feature extraction, checkpoints and bundle included).\n"),
        "### (a) float16 storage costs no accuracy\n",
        *precision,
        "",
        "### (b) README's quick start: what to run on the demo images at 64 px\n",
        *quick,
        "",
        "README's quick start and the TUI's demo preset are the linear probe with the backbone's own",
        "normalisation (mean = std = 0.5, as it was trained). The probe runs the frozen network once and",
        "trains the head on cached features; a fine-tuning epoch after it runs the whole network forward",
        "and backward on every batch, and on 800 images at a CPU's small batch counts it cost time here",
        "without adding accuracy.",
    ])
    write_section(ROOT / "bench" / "RESULTS.md", "shipped-weights", text)
    print(text)


if __name__ == "__main__":
    main()
