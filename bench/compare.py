"""Benchmark: the notebook's data pipeline against tlwork's fast paths, side by side, in one process.

Times, on the same images and the same backbone:
  (a) 5 linear-probe epochs, (b) one fine-tune epoch, (c) evaluation of the test split,
once with a baseline written from the notebook's description (PIL Resize + ToTensor +
Normalize in a DataLoader with num_workers=0, fp32, ``loss.item()`` every batch) and once
through ``core.training.train.train`` / ``core.inference.evaluate.evaluate``. Prints images/s, the ratios and
the accuracies, and writes the table to bench/RESULTS.md with the machine it ran on.

Both sides' times include building the model and loading its weights file. Only deviation
from the notebook: the baseline probe keeps the frozen backbone in eval mode
(the notebook's ``model.train()`` lets BatchNorm statistics drift), so both paths train the
same probe and their accuracies are comparable.

  python bench/compare.py                       # about a minute on 2 CPU cores
  python bench/compare.py --image-size 224 --per-class 500 --device cuda   # a GPU
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision import transforms

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import notebook  # noqa: E402  (bench/notebook.py: the baseline's loop, shared with the whole-process benchmark)

from core.config import RunConfig  # noqa: E402
from core.data.datasets import CIFAR10_MEAN, CIFAR10_STD, DEMO_DIR  # noqa: E402
from core.events import EvaluationEnded, RunFinished  # noqa: E402
from core.inference.evaluate import evaluate  # noqa: E402
from core.models.build import build_model  # noqa: E402
from core.training.train import train  # noqa: E402

SHARED = ROOT.parent / "shared"
SHARED_DATA = SHARED / "data" / "cifar10-jpg" / "train"
SHARED_WEIGHTS = SHARED / "models" / "tf_efficientnet_lite0.in1k.safetensors"


def make_folder(source: Path, per_class: int, test_fraction: float, out: Path, repeat: int = 1) -> Path:
    """An imagefolder (train/ and test/) of symlinks to ``per_class`` images of each class.

    ``repeat`` links every training image that many times (under different names), to time
    full-size epochs from a small source; the test split never repeats nor overlaps it.
    """
    for cls in sorted(d.name for d in source.iterdir() if d.is_dir()):
        files = sorted((source / cls).glob("*.jpg"))[:per_class]
        n_test = max(1, int(len(files) * test_fraction))
        for split, chunk, copies in (("test", files[:n_test], 1), ("train", files[n_test:], repeat)):
            (out / split / cls).mkdir(parents=True, exist_ok=True)
            for k in range(copies):
                for f in chunk:
                    (out / split / cls / (f.name if k == 0 else f"{f.stem}-{k}{f.suffix}")).symlink_to(f.resolve())
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def notebook_loaders(folder: Path, size: int, batch: int) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    train = torchvision.datasets.ImageFolder(str(folder / "train"), transform=tf)
    test = torchvision.datasets.ImageFolder(str(folder / "test"), transform=tf)
    return (
        torch.utils.data.DataLoader(train, batch_size=batch, shuffle=True, num_workers=0),
        torch.utils.data.DataLoader(test, batch_size=batch, shuffle=False, num_workers=0),
    )


def notebook_accuracy(model: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device) -> tuple[float, int]:
    correct, total = notebook.test_accuracy(model, loader, device)
    return correct / max(1, total), total


def notebook_run(model: nn.Module, head: str, train_loader, test_loader, device, epochs: int, probe: bool) -> dict:
    """bench/notebook.py's loop, timed with its test accuracy (see the module docstring for --bn-eval)."""
    sync(device)
    start = time.perf_counter()
    notebook.train_loop(model, head, train_loader, device, epochs, probe, bn_eval=True, log=False)
    acc, _ = notebook_accuracy(model, test_loader, device)
    sync(device)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "images": len(train_loader.dataset) * epochs, "accuracy": acc}


def tlwork_run(folder: Path, args: argparse.Namespace, mode: str, epochs: int, runs: Path) -> dict:
    cfg = RunConfig(
        mode=mode, backbone=args.backbone, weights=args.weights, dataset=f"imagefolder:{folder}", image_size=args.image_size,
        batch_size=args.batch_size, epochs=epochs, augment="none", scheduler="none", lr=1e-3 if mode == "linear-probe" else 5e-4,
        device=args.device, runs_dir=str(runs), seed=0, compile=False,
    )
    start = time.perf_counter()
    images = 0
    finished = None
    train_rate = 0.0
    for event in train(cfg):
        if type(event).__name__ == "EpochEnded":
            train_rate = event.images_per_sec  # training-only throughput of the last epoch
        if isinstance(event, RunFinished):
            finished = event
    seconds = time.perf_counter() - start
    n_train = sum(1 for _ in (folder / "train").rglob("*.jpg"))
    images = n_train * epochs
    assert finished is not None
    return {"seconds": seconds, "images": images, "accuracy": finished.val_accuracy, "run_dir": finished.run_dir, "train_rate": train_rate}


def tlwork_eval(run_dir: str, args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    result = None
    for event in evaluate(run_dir, None, device=args.device, batch_size=args.batch_size):
        if isinstance(event, EvaluationEnded):
            result = event
    seconds = time.perf_counter() - start
    assert result is not None
    return {"seconds": seconds, "images": result.images, "accuracy": result.top1}


def flops_per_image(model: nn.Module, size: int, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, size, size, device=device))
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=150, help="images per class taken from the source folder (about a minute on 2 CPU cores)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--probe-epochs", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--source", default=str(SHARED_DATA if SHARED_DATA.is_dir() else DEMO_DIR / "train"))
    parser.add_argument("--backbone", default=None, help="default: timm:tf_efficientnet_lite0 with ../shared weights, else resnet18")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    args = parser.parse_args()
    if args.backbone is None:
        if SHARED_WEIGHTS.is_file():
            args.backbone, args.weights = "timm:tf_efficientnet_lite0", str(SHARED_WEIGHTS)
        else:
            args.backbone, args.weights = "resnet18", "none"
    args.weights = args.weights or "none"
    device = torch.device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="tlwork-bench-"))
    folder = make_folder(Path(args.source), args.per_class, 0.2, tmp / "data")
    runs = tmp / "runs"
    n_classes = len(list((folder / "train").iterdir()))

    def fresh() -> tuple[nn.Module, str]:
        torch.manual_seed(0)
        model, info = build_model(args.backbone, n_classes, args.weights)
        return model.to(device), info.head

    if device.type == "cuda":  # pay CUDA's start-up before any timing, not inside the first one
        warm, _ = fresh()
        with torch.no_grad():
            warm(torch.randn(8, 3, args.image_size, args.image_size, device=device))
        sync(device)
    rows = []
    for label, mode, epochs, probe in (("linear probe x%d" % args.probe_epochs, "linear-probe", args.probe_epochs, True), ("fine-tune x1", "finetune", 1, False)):
        train_loader, test_loader = notebook_loaders(folder, args.image_size, args.batch_size)
        built = time.perf_counter()
        model, head = fresh()  # counted: tlwork's timing includes building and loading its model too
        built = time.perf_counter() - built
        base = notebook_run(model, head, train_loader, test_loader, device, epochs, probe)
        base["seconds"] += built
        fast = tlwork_run(folder, args, mode, epochs, runs)
        rows.append((label, base, fast))
        print(f"{label}: notebook {base['seconds']:.1f}s, tlwork {fast['seconds']:.1f}s, ratio {base['seconds'] / fast['seconds']:.2f}x", flush=True)
    # (c) evaluation of the fine-tuned run's bundle, both ways
    _, test_loader = notebook_loaders(folder, args.image_size, args.batch_size)
    sync(device)
    start = time.perf_counter()
    model, _ = fresh()  # evaluation starts from the saved model, as `tlwork eval` does
    acc, n = notebook_accuracy(model, test_loader, device)
    sync(device)
    base_eval = {"seconds": time.perf_counter() - start, "images": n, "accuracy": acc}
    fast_eval = tlwork_eval(rows[-1][2]["run_dir"], args)
    fast_eval["accuracy"] = float("nan")  # different weights from the baseline's model; speed only
    base_eval["accuracy"] = float("nan")
    rows.append(("evaluation", base_eval, fast_eval))

    mfu = ""
    if device.type == "cuda":
        model, _ = fresh()
        flops = flops_per_image(model, args.image_size, device) * 3  # forward + backward
        ft = rows[1][2]
        peak = float(os.environ.get("TLWORK_PEAK_TFLOPS", "989")) * 1e12
        whole = flops * ft["images"] / ft["seconds"]
        steady = flops * ft["train_rate"]
        mfu = (
            f"Fine-tune model FLOP utilisation (3x forward FLOPs = {flops / 1e9:.2f} GFLOP/image, bf16 dense peak "
            f"{peak / 1e12:.0f} TFLOP/s): {100 * steady / peak:.1f}% in the training loop ({ft['train_rate']:.0f} img/s), "
            f"{100 * whole / peak:.2f}% over the whole task including start-up, decoding and validation.\n"
        )

    machine = f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    if device.type == "cuda":
        machine += f", {torch.cuda.get_device_name(device)}"
    lines = [
        f"## {'GPU' if device.type == 'cuda' else 'CPU'}\n",
        f"Machine: {machine}; torch {torch.__version__}; device {args.device}.  ",
        f"Data: {args.per_class} images/class from {args.source} at {args.image_size}px, batch {args.batch_size}; backbone {args.backbone} (weights {Path(args.weights).name}).\n",
        "| task | notebook img/s | tlwork img/s | speed-up | notebook acc | tlwork acc |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, base, fast in rows:
        b_rate = base["images"] / base["seconds"]
        f_rate = fast["images"] / fast["seconds"]
        fmt = lambda a: "-" if a != a else f"{100 * a:.1f}%"  # noqa: E731
        lines.append(f"| {label} | {b_rate:.0f} | {f_rate:.0f} | {base['seconds'] / fast['seconds']:.2f}x | {fmt(base['accuracy'])} | {fmt(fast['accuracy'])} |")
    lines.append("")
    if mfu:
        lines.append(mfu)
    lines.append(f"Command: `python bench/compare.py {' '.join(sys.argv[1:])}`; whole-task wall time (tlwork's includes its run directory, per-epoch validation and checkpoints).")
    table = "\n".join(lines) + "\n"
    print(table)
    write_section(Path(args.out), device.type, table)


def write_section(path: Path, key: str, text: str) -> None:
    """Replace this device type's section of RESULTS.md, keeping the others."""
    preamble = "# Benchmarks: the notebook pipeline against tlwork\n\n"
    blocks: dict[str, str] = {}
    current = None
    for line in (path.read_text().splitlines(keepends=True) if path.exists() else []):
        if line.startswith("<!-- device:"):
            current = line.strip()[len("<!-- device:"):-len(" -->")].strip()
            blocks[current] = ""
        elif current is not None:
            blocks[current] += line
    if path.exists():
        preamble = path.read_text().split("<!-- device:")[0]
    blocks[key] = text
    path.write_text(preamble.rstrip() + "\n\n" + "".join(f"<!-- device:{k} -->\n{v.rstrip()}\n\n" for k, v in sorted(blocks.items())))


if __name__ == "__main__":
    main()
