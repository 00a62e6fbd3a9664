"""Whole-process benchmark: ``tlwork run`` / ``tlwork eval`` against the notebook script, as a user times them.

Where bench/compare.py times both pipelines inside one Python process, this one starts
each side as its own process (``python bench/notebook.py ...`` and ``tlwork run ...``) on
the same split of the same real images and takes the wall time of the whole process:
interpreter start, imports, data loading, model building, training, evaluation and (for
tlwork) its run directory, checkpoints and bundle. Tasks:

  (a) linear probe, 5 epochs    (b) fine-tune, 1 epoch    (c) evaluation of the test split

The notebook side keeps the frozen backbone's BatchNorm in eval mode while probing
(``--bn-eval``) so both sides train the same probe and their accuracies are comparable;
``--literal`` runs it exactly as the notebook does (statistics drift under ``model.train()``).

  python bench/wholeprocess.py                    # about 2 minutes on 2 CPU cores
  python bench/wholeprocess.py --per-class 500 --image-size 224 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import SHARED_DATA, SHARED_WEIGHTS, flops_per_image, make_folder, write_section  # noqa: E402

DEMO_TRAIN = ROOT / "core" / "demo_data" / "train"


def timed(cmd: list[str]) -> tuple[float, str]:
    """Run ``cmd`` to the end; its wall time and stdout. A failure stops the benchmark with its output."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout


def last_json(stdout: str, key: str) -> dict:
    """The last JSON line of ``stdout`` that has ``key``."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            data = json.loads(line)
            if key in data:
                return data
    raise SystemExit(f"no JSON line with {key!r} in:\n{stdout[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=250, help="images per class from the source folder; a tenth is the test split")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256, help="the notebook's batch size")
    parser.add_argument("--probe-epochs", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--source", default=str(SHARED_DATA if SHARED_DATA.is_dir() else DEMO_TRAIN))
    parser.add_argument("--backbone", default=None, help="default: timm:tf_efficientnet_lite0 with ../shared weights, else resnet18 (random)")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--literal", action="store_true", help="notebook probe with BatchNorm statistics drifting, as written")
    parser.add_argument("--repeat", type=int, default=1, help="link each training image this many times (full-size epochs from a small source)")
    parser.add_argument("--tasks", default="probe,finetune,eval", help="comma-separated subset of probe, finetune, eval (eval needs finetune)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    args = parser.parse_args()
    if args.backbone is None:
        args.backbone, args.weights = ("timm:tf_efficientnet_lite0", str(SHARED_WEIGHTS)) if SHARED_WEIGHTS.is_file() else ("resnet18", "none")
    args.weights = args.weights or "none"
    tmp = Path(tempfile.mkdtemp(prefix="tlwork-whole-"))
    try:
        folder = make_folder(Path(args.source), args.per_class, 0.1, tmp / "data", args.repeat)
        n_train = sum(1 for _ in (folder / "train").rglob("*.jpg"))
        n_test = sum(1 for _ in (folder / "test").rglob("*.jpg"))
        common = ["--image-size", str(args.image_size), "--batch-size", str(args.batch_size), "--backbone", args.backbone,
                  "--weights", args.weights, "--device", args.device]
        notebook = [sys.executable, str(ROOT / "bench" / "notebook.py"), "--data", str(folder), *common]
        tlwork = [sys.executable, "-m", "tui.cli"]
        rows = []
        run_dir = ""
        train_rate = 0.0
        tasks = {t.strip() for t in args.tasks.split(",")}
        plan = [(f"linear probe x{args.probe_epochs}", "linear-probe", args.probe_epochs), ("fine-tune x1", "finetune", 1)]
        for label, mode, epochs in [p for p in plan if ("probe" if p[1] == "linear-probe" else "finetune") in tasks]:
            extra = [] if (mode == "finetune" or args.literal) else ["--bn-eval"]
            base_s, out = timed([*notebook, "--mode", mode, "--epochs", str(epochs), *extra])
            base_acc = last_json(out, "accuracy")["accuracy"]
            fast_s, out = timed([*tlwork, "run", "--mode", mode, "--epochs", str(epochs), "--dataset", f"imagefolder:{folder}",
                                 "--runs-dir", str(tmp / "runs"), "--json", *common])
            finished = last_json(out, "val_accuracy")
            if mode == "finetune":
                train_rate = last_json(out, "images_per_sec")["images_per_sec"]
            run_dir = finished["run_dir"]
            rows.append((label, n_train * epochs, base_s, fast_s, base_acc, finished["val_accuracy"]))
            print(f"{label}: notebook {base_s:.1f}s, tlwork {fast_s:.1f}s, ratio {base_s / fast_s:.2f}x", flush=True)
        if "eval" in tasks and run_dir:
            # (c) the notebook's test loop over a freshly built model, against `tlwork eval` of the last run's bundle
            base_s, _ = timed([*notebook, "--mode", "finetune", "--epochs", "0"])
            fast_s, out = timed([*tlwork, "eval", run_dir, "--device", args.device, "--json"])
            rows.append(("evaluation", n_test, base_s, fast_s, float("nan"), float("nan")))
            print(f"evaluation: notebook {base_s:.1f}s, tlwork {fast_s:.1f}s, ratio {base_s / fast_s:.2f}x", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    import torch  # only for the machine line

    machine = f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    if args.device.startswith("cuda"):
        machine += f", {torch.cuda.get_device_name(0)}"
    fmt = lambda a: "-" if a != a else f"{100 * a:.1f}%"  # noqa: E731
    lines = [
        f"## {'GPU' if args.device.startswith('cuda') else 'CPU'}, whole processes, {args.image_size} px\n",
        f"Machine: {machine}; torch {torch.__version__}; device {args.device}.  ",
        f"Data: {args.per_class} images/class from {args.source} ({n_train} train"
        f"{f', each image {args.repeat} times' if args.repeat > 1 else ''}, {n_test} test) at {args.image_size}px, "
        f"batch {args.batch_size}; backbone {args.backbone} (weights {Path(args.weights).name}).\n",
        "| task | notebook s | tlwork s | speed-up | notebook acc | tlwork acc |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, _images, base_s, fast_s, base_acc, fast_acc in rows:
        lines.append(f"| {label} | {base_s:.1f} | {fast_s:.1f} | {base_s / fast_s:.2f}x | {fmt(base_acc)} | {fmt(fast_acc)} |")
    lines.append("")
    fine = [r for r in rows if r[0] == "fine-tune x1"]
    if args.device.startswith("cuda") and fine:
        from core.models.build import build_model

        model, _ = build_model(args.backbone, 10, args.weights)
        flops = 3 * flops_per_image(model.to(args.device), args.image_size, torch.device(args.device))  # forward + backward
        peak = float(os.environ.get("TLWORK_PEAK_TFLOPS", "989")) * 1e12
        whole = flops * fine[0][1] / fine[0][3]
        lines.append(
            f"Fine-tune model FLOP utilisation (3x forward = {flops / 1e9:.2f} GFLOP/image, peak {peak / 1e12:.0f} TFLOP/s bf16 dense; "
            f"TLWORK_PEAK_TFLOPS sets it): {100 * flops * train_rate / peak:.2f}% in tlwork's training loop ({train_rate:.0f} img/s), "
            f"{100 * whole / peak:.2f}% over its whole process ({fine[0][1] / fine[0][3]:.0f} img/s).\n"
        )
    probe = "as written (BatchNorm statistics drift)" if args.literal else "with the frozen backbone's BatchNorm in eval mode (--bn-eval)"
    lines.append(
        f"Command: `python bench/wholeprocess.py {' '.join(sys.argv[1:])}`; wall time of each whole process, start to exit. "
        f"Notebook side: `bench/notebook.py`, probe {probe}; tlwork side: `tlwork run ... --json` and `tlwork eval RUN` "
        "with default settings (per-epoch validation, checkpoints, bundle included)."
    )
    table = "\n".join(lines) + "\n"
    print(table)
    key = re.sub(r"\W", "", args.device.split(":")[0]) + f"-whole-{args.image_size:03d}px"
    write_section(Path(args.out), key, table)


if __name__ == "__main__":
    main()
