"""Cold-start cost of ``tlwork classify``: a bundle against its ONNX export and a Hugging Face model, as wall time.

Each command runs as a fresh subprocess (nothing warm but the OS file cache; one untimed
warm-up run first) ``--repeat`` times; the table gives the median and the fastest run, and
each row's ratio to ``classify (bundle)``. Baselines show where the time goes: the Python
interpreter, ``import torch``, ``import transformers``, ``import onnxruntime`` and ``tlwork
--help`` (which must not import torch). The models are made locally, so nothing downloads: a
ResNet-18 bundle (random weights, 224 px, CIFAR-10 labels), the same bundle exported with
``tlwork export --format onnx`` (classified through onnxruntime, without torch), and a
ViT-Base/16 folder written with ``save_pretrained`` (the notebook's
``nateraw/vit-base-patch16-224-cifar10`` architecture, random weights, ~340 MB of
safetensors; ``--tiny`` uses a 32 px two-layer ViT instead, ``--skip-hf`` leaves it out).
Writes bench/COLDSTART.md (``--out``) and the bundle-against-ONNX section of bench/RESULTS.md.

    python bench/coldstart.py [--repeat 5] [--tiny | --skip-hf] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from compare import write_section  # noqa: E402 - RESULTS.md's one section writer (bench/compare.py)

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_bundle(folder: Path) -> Path:
    """A ResNet-18 bundle with CIFAR-10 labels (random weights: start-up cost does not depend on them)."""
    from core.data.transforms import Preprocessing
    from core.models.build import build_model
    from core.runs.bundle import save_bundle

    model, info = build_model("resnet18", 10, "none")
    save_bundle(folder, model, info.arch(), CIFAR10, Preprocessing(224, info.mean, info.std), {"amp": True})
    return folder


def make_onnx(bundle: Path, path: Path) -> Path:
    """The bundle exported as ``tlwork export`` does it (parity-checked on random inputs: no run beside it)."""
    from core.inference.export import export_onnx

    export_onnx(str(bundle), str(path))
    return path


def make_hf_model(folder: Path, tiny: bool) -> Path:
    """A ViT-Base/16 (or a tiny ViT) and its image processor, written with save_pretrained."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    labels = {"id2label": dict(enumerate(CIFAR10)), "label2id": {n: i for i, n in enumerate(CIFAR10)}}
    if tiny:
        config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, **labels)
    else:
        config = ViTConfig(**labels)  # the defaults are ViT-Base/16 at 224 px
    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": config.image_size, "width": config.image_size}).save_pretrained(folder)
    return folder


def tlwork_command() -> list[str]:
    """The installed console script beside this interpreter, else the same entry point via python."""
    script = Path(sys.executable).with_name("tlwork")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from tui.cli import main; main()"]


def timed(cmd: list[str], repeat: int, env: dict[str, str]) -> tuple[float, float]:
    """(median, min) wall seconds of ``cmd`` over ``repeat`` fresh processes, after one warm-up."""
    subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, check=True)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def machine() -> str:
    """CPU model, core count, memory and library versions."""
    import onnxruntime
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"{platform.system()} {platform.release()}, {cpu}, {cores} cores available, GPU: {gpu}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"onnxruntime {onnxruntime.__version__}"
    )


def commands(tl: list[str], image: Path, bundle: Path, onnx: Path, hf_model: Path | None, vit: str, device: str) -> list[tuple[str, list[str]]]:
    """(label, command line) of every row, baselines first."""
    classify = [*tl, "classify", str(image), "--device", device, "--model"]
    rows = [
        ("python -c pass", [sys.executable, "-c", "pass"]),
        ("python -c 'import torch'", [sys.executable, "-c", "import torch"]),
        ("python -c 'import onnxruntime, numpy, PIL.Image'", [sys.executable, "-c", "import onnxruntime, numpy, PIL.Image"]),
        ("tlwork --help", [*tl, "--help"]),
        (BUNDLE_ROW, [*classify, str(bundle)]),
        (ONNX_ROW, [*classify, str(onnx)]),
    ]
    if hf_model is not None:
        rows.insert(2, ("python -c 'import torch, transformers'", [sys.executable, "-c", "import torch, transformers"]))
        rows.append((f"tlwork classify (local HF folder, {vit})", [*classify, str(hf_model)]))
    return rows


BUNDLE_ROW = "tlwork classify (bundle, ResNet-18)"
ONNX_ROW = "tlwork classify (ONNX export of that bundle)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per command (after one warm-up)")
    parser.add_argument("--tiny", action="store_true", help="a 32 px two-layer ViT instead of ViT-Base/16")
    parser.add_argument("--skip-hf", action="store_true", help="leave the Hugging Face model out")
    parser.add_argument("--device", default="cpu", help="--device for tlwork classify")
    parser.add_argument("--out", default=str(ROOT / "bench" / "COLDSTART.md"), help="where to write the report")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tlwork-coldstart-"))
    try:
        print("making the models ...", flush=True)
        bundle = make_bundle(work / "bundle")
        onnx = make_onnx(bundle, work / "resnet18.onnx")
        hf_model = None if args.skip_hf else make_hf_model(work / "vit", args.tiny)
        image = min((ROOT / "core" / "data" / "demo_data" / "test" / "cat").glob("*.jpg"))
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        vit = "tiny ViT" if args.tiny else "ViT-B/16"
        results = []
        for label, cmd in commands(tlwork_command(), image, bundle, onnx, hf_model, vit, args.device):
            median, fastest = timed(cmd, args.repeat, env)
            results.append((label, median, fastest))
            print(f"  {label:<52} {median:6.2f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    times = {label: m for label, m, _ in results}
    base, onnx_time = times[BUNDLE_ROW], times[ONNX_ROW]
    lines = [
        "| command | median (s) | fastest (s) | vs classify (bundle) |",
        "| --- | ---: | ---: | ---: |",
        *[f"| {label} | {m:.2f} | {f:.2f} | {m / base:.2f}x |" for label, m, f in results],
    ]
    table = "\n".join(lines)
    print()
    print(table)
    print(f"\nclassify one photo: bundle {base:.2f} s, ONNX {onnx_time:.2f} s: the ONNX export starts {base / onnx_time:.1f}x faster")
    how = (
        f"Wall time of one fresh process per run, median and fastest of {args.repeat} after one warm-up, "
        f"one 32x32 JPEG, `--device {args.device}`, `HF_HUB_OFFLINE=1`. Written by `python bench/coldstart.py"
        f"{' --tiny' if args.tiny else ''}{' --skip-hf' if args.skip_hf else ''}` on {time.strftime('%Y-%m-%d')}.\n\n"
        f"Machine: {machine()}.\n\n{table}\n\n"
    )
    report = (
        "# tlwork classify: cold start\n\n" + how
        + "A bundle never imports transformers; a Hugging Face model pays for `import transformers` plus "
        "reading its safetensors and building the model; an ONNX export imports neither torch nor torchvision. "
        "Other processes on a shared machine inflate every row alike.\n"
    )
    Path(args.out).write_text(report)
    print(f"\nwrote {args.out}")
    results_md = ROOT / "bench" / "RESULTS.md"
    write_section(results_md, f"{args.device.split(':')[0]}-coldstart-onnx", (
        f"## {'GPU' if args.device.startswith('cuda') else 'CPU'}, cold start: classify with a bundle against its ONNX export\n\n"
        + how + f"One photo, whole process: the bundle takes {base:.2f} s, its ONNX export {onnx_time:.2f} s "
        f"({base / onnx_time:.1f}x faster), nearly all of the difference being torch's import, which the ONNX path "
        "(onnxruntime, Pillow and NumPy) never pays. Other processes on a shared machine inflate every row alike.\n"
    ))
    print(f"wrote the coldstart-onnx section of {results_md}")


if __name__ == "__main__":
    main()
