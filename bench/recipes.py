"""Recipe benchmark: which training recipe makes the best model on real data, and in what time.

Runs a small table of recipes on the real CIFAR-10 JPEGs and ImageNet EfficientNet-Lite0
weights in ../shared, each as a whole `tlwork run` process (interpreter start-up, imports,
feature extraction, checkpoints and bundle included), and prints validation accuracy per
epoch, the probe's best, the first fine-tune epoch, the kept model's accuracy and the wall
time side by side, with each recipe's time as a ratio of the first. The table goes into
bench/RESULTS.md (its own section, replaced when this runs again).

    python bench/recipes.py                       # the default table
    python bench/recipes.py --only ptf-default    # one recipe
    python bench/recipes.py --size 64 --probe-epochs 3 --epochs 2
    python bench/recipes.py --fastai /tmp/fai/bin/python   # and fastai's fine_tune beside them

``--fastai PYTHON`` adds a row for what a user would pick instead: fastai's
``fine_tune(epochs, freeze_epochs=probe_epochs)`` run by bench/fastai_baseline.py with an
interpreter that has fastai and timm (not tlwork dependencies), on the same split.

Every recipe shares: --dataset imagefolder:../shared/data/cifar10-jpg --val-split 0.1 (500
held-out images, stratified, seed 0), --image-size 64, the real weights, --device cpu.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from compare import write_section  # noqa: E402  (the one writer of RESULTS.md's sections)

SHARED = ROOT.parent / "shared"
DATA = SHARED / "data" / "cifar10-jpg"
WEIGHTS = SHARED / "models" / "tf_efficientnet_lite0.in1k.safetensors"

# name -> (what it is, the options that differ from the shared ones)
NOTEBOOK_RATES = ["--probe-lr", "1e-3", "--lr", "5e-4", "--scheduler", "step"]  # the defaults before #9
RECIPES: dict[str, tuple[str, list[str]]] = {
    "probe": ("linear probe, probe epochs + epochs", ["--mode", "linear-probe", "--epochs", "{total}"]),
    "ptf-notebook-train": ("probe-then-finetune as before #9: notebook rates, --bn train, --keep last",
                           ["--mode", "probe-then-finetune", "--bn", "train", "--keep", "last", *NOTEBOOK_RATES]),
    "ptf-notebook-frozen": ("probe-then-finetune, notebook rates, --bn frozen",
                            ["--mode", "probe-then-finetune", "--bn", "frozen", *NOTEBOOK_RATES]),
    "ptf-default-train": ("probe-then-finetune, default rates, --bn train", ["--mode", "probe-then-finetune", "--bn", "train"]),
    "ptf-default": ("probe-then-finetune, all defaults (--bn auto = frozen, probe 1e-2, cosine 2e-3)",
                    ["--mode", "probe-then-finetune"]),
    "ptf-default-ld": ("probe-then-finetune, defaults + --layer-decay 0.7", ["--mode", "probe-then-finetune", "--layer-decay", "0.7"]),
    "finetune-frozen": ("finetune only, --bn frozen", ["--mode", "finetune", "--bn", "frozen", "--epochs", "{total}"]),
    # Issue 13's options, each on top of the defaults (per-epoch cells read live/EMA accuracy under --ema).
    "ptf-ema": ("probe-then-finetune, defaults + --ema 0.99 --ema-warmup", ["--mode", "probe-then-finetune", "--ema", "0.99",
                                                                          "--ema-warmup"]),
    "ptf-mixup": ("probe-then-finetune, defaults + --mixup 0.2", ["--mode", "probe-then-finetune", "--mixup", "0.2"]),
    "ptf-cutmix": ("probe-then-finetune, defaults + --mixup 0.2 --cutmix 1 (one per batch)",
                   ["--mode", "probe-then-finetune", "--mixup", "0.2", "--cutmix", "1.0"]),
}
DEFAULT = ["probe", "ptf-notebook-train", "ptf-notebook-frozen", "ptf-default-train", "ptf-default", "ptf-default-ld"]


def run_recipe(name: str, args: argparse.Namespace, runs: Path) -> dict:
    """One whole `tlwork run` process: its epochs' validation accuracy, the kept model and the wall time."""
    _, extra = RECIPES[name]
    total = str(args.probe_epochs + args.epochs)
    extra = [total if x == "{total}" else x for x in extra]
    cmd = [
        sys.executable, "-m", "tui.cli", "run", "--backbone", "timm:tf_efficientnet_lite0", "--weights", str(WEIGHTS),
        "--dataset", f"imagefolder:{DATA}", "--val-split", "0.1", "--image-size", str(args.size),
        "--probe-epochs", str(args.probe_epochs), "--epochs", str(args.epochs), "--device", "cpu",
        "--runs-dir", str(runs), "--name", name, "--json", *extra, *args.extra,
    ]
    started = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"recipe {name} failed ({out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
    events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    epochs = [(e["stage"], e["val_accuracy"], e.get("ema_val_accuracy")) for e in events if e["event"] == "epoch_ended"]
    finished = next(e for e in events if e["event"] == "run_finished")
    probe = [max(acc, ema or 0) for stage, acc, ema in epochs if stage == "probe"]
    tuned = [max(acc, ema or 0) for stage, acc, ema in epochs if stage != "probe"]
    return {
        "name": name, "seconds": seconds, "epochs": epochs, "probe_best": max(probe) if probe else float("nan"),
        "first_tune": tuned[0] if tuned and probe else float("nan"), "kept": finished["val_accuracy"],
        "kept_epoch": finished.get("kept_epoch", finished["epochs"]), "last": epochs[-1][1],
        "kept_weights": finished.get("kept_weights", "live"),
    }


def run_fastai(python: str, args: argparse.Namespace) -> dict:
    """bench/fastai_baseline.py as a whole process under ``python``, timed like a recipe."""
    cmd = [python, str(ROOT / "bench" / "fastai_baseline.py"), "--probe-epochs", str(args.probe_epochs),
           "--epochs", str(args.epochs), "--size", str(args.size)]
    started = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"fastai baseline failed ({out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
    done = next(json.loads(line) for line in out.stdout.splitlines() if line.startswith('{"event": "fastai_finished"'))
    accs = done["epochs"]
    return {
        "name": "fastai", "seconds": seconds, "epochs": [("", a, None) for a in accs],
        "probe_best": max(accs[: args.probe_epochs]), "first_tune": accs[args.probe_epochs],
        "kept": done["val_accuracy"], "kept_epoch": len(accs), "last": accs[-1],
    }


def pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=sorted(RECIPES), help=f"recipes to run (default: {' '.join(DEFAULT)})")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--probe-epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    parser.add_argument("--fastai", metavar="PYTHON", help="also run fastai's fine_tune with this interpreter")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--section", help="the RESULTS.md section to write (default: recipes-cpu-<size>px)")
    parser.add_argument("--title", default="Recipes on real data (CPU)", help="the section's heading")
    parser.add_argument("extra", nargs="*", help="more `tlwork run` options for every recipe (after --)")
    args = parser.parse_args()
    if not DATA.is_dir() or not WEIGHTS.is_file():
        raise SystemExit(f"needs the real data and weights in {SHARED} (see ../shared/README.md)")
    names = args.only or DEFAULT
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            results.append(run_recipe(name, args, Path(tmp)))
            r = results[-1]
            print(f"{name}: kept {pct(r['kept'])} (epoch {r['kept_epoch']}), {r['seconds']:.0f} s", flush=True)
    if args.fastai:
        results.append(run_fastai(args.fastai, args))
        print(f"fastai: {pct(results[-1]['kept'])}, {results[-1]['seconds']:.0f} s", flush=True)
    base = results[0]["seconds"]
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs; device cpu. Data: {DATA} (4,500 train, 500 held-out "
        f"validation, stratified, seed 0) at {args.size} px; backbone timm:tf_efficientnet_lite0 with the real ImageNet "
        f"weights; --probe-epochs {args.probe_epochs} --epochs {args.epochs}, every other setting default.",
        "",
        "| recipe | val acc per epoch | probe best | first fine-tune epoch | kept model | wall time | time ratio |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        per_epoch = " ".join(pct(acc) if ema is None else f"{pct(acc)}/{pct(ema)}" for _, acc, ema in r["epochs"])
        weights = ", EMA" if r.get("kept_weights") == "ema" else ""
        what = RECIPES[r["name"]][0] if r["name"] in RECIPES else (
            f"fastai `fine_tune({args.epochs}, freeze_epochs={args.probe_epochs})`, its defaults (bench/fastai_baseline.py)")
        lines.append(f"| `{r['name']}`: {what} | {per_epoch} | {pct(r['probe_best'])} | {pct(r['first_tune'])} "
                     f"| {pct(r['kept'])} (epoch {r['kept_epoch']}{weights}) | {r['seconds']:.0f} s | {r['seconds'] / base:.2f}x |")
    lines += ["", f"Command: `python bench/recipes.py {' '.join(sys.argv[1:])}`; wall time is the whole `tlwork run` process."]
    table = f"## {args.title}\n\n" + "\n".join(lines) + "\n"
    print(table)
    if not args.no_write:
        write_section(Path(args.out), args.section or f"recipes-cpu-{args.size:03d}px", table)


if __name__ == "__main__":
    main()
