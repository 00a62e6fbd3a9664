"""fastai's `fine_tune` on the same images, backbone, size and held-out split as bench/recipes.py.

What a user would pick instead of tlwork for probe-then-finetune: fastai's
``vision_learner(...).fine_tune(epochs, freeze_epochs=probe_epochs)`` (its own defaults:
base_lr 2e-3, Adam, one-cycle, BatchNorm trained in the frozen stage, batch size 64), on the
real CIFAR-10 JPEGs and the real ImageNet EfficientNet-Lite0 weights in ../shared, validated
on exactly the 500 images tlwork holds out (tlwork's own stratified split, seed 0).

fastai is not a tlwork dependency: run this with an interpreter that has fastai and timm,
with this repository on the path, e.g.::

    python3 -m venv /tmp/fai && /tmp/fai/bin/pip install torch torchvision fastai timm
    PYTHONPATH=. /tmp/fai/bin/python bench/fastai_baseline.py --probe-epochs 3 --epochs 2

or let bench/recipes.py run it beside tlwork's recipes: ``python bench/recipes.py --fastai /tmp/fai/bin/python``.

It prints a JSON line (each epoch's validation accuracy, the final one) and a last line
``fastai fine_tune: val acc X% in T s (whole process)``; time counts from interpreter start.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

START = time.time()
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data" / "cifar10-jpg"
WEIGHTS = SHARED / "models" / "tf_efficientnet_lite0.in1k.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe-epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    if not DATA.is_dir() or not WEIGHTS.is_file():
        raise SystemExit(f"needs {DATA} and {WEIGHTS} (../shared beside the repository)")

    import torch
    from fastai.vision.all import (
        Callback,
        CategoryBlock,
        DataBlock,
        ImageBlock,
        IndexSplitter,
        Recorder,
        Resize,
        accuracy,
        parent_label,
        vision_learner,
    )

    accs: list[float] = []

    class EpochAccuracy(Callback):
        """Each epoch's validation accuracy, across both of fine_tune's fits (the recorder resets per fit)."""

        order = Recorder.order + 1

        def after_epoch(self) -> None:
            accs.append(float(self.recorder.values[-1][-1]))

    from core.data.datasets import load_splits, sample_paths

    torch.set_num_threads(os.cpu_count() or 1)
    splits = load_splits(f"imagefolder:{DATA}", val_split=0.1, seed=0)
    train_paths, val_paths = sample_paths(splits.train), sample_paths(splits.val)
    assert train_paths and val_paths
    items = [Path(p) for p in train_paths + val_paths]
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock), get_y=parent_label,
        splitter=IndexSplitter(range(len(train_paths), len(items))), item_tfms=Resize(args.size),
    )
    dls = block.dataloaders(items, bs=64, num_workers=0)
    # The timm model with the real ImageNet weights from ../shared (timm loads a local file
    # through pretrained_cfg_overlay; there is no network here).
    learn = vision_learner(
        dls, "tf_efficientnet_lite0", metrics=accuracy, pretrained=True,
        pretrained_cfg_overlay={"file": str(WEIGHTS)}, cbs=EpochAccuracy(),
    )
    with learn.no_bar():  # fastai's epoch table still prints, one line per epoch
        learn.fine_tune(args.epochs, freeze_epochs=args.probe_epochs)
    # The last epoch's validation is the model fine_tune hands back. (learn.validate() would
    # score it again, and its context manager fires after_epoch once more.)
    acc = accs[-1]
    print(json.dumps({"event": "fastai_finished", "epochs": accs, "val_accuracy": float(acc)}))
    print(f"fastai fine_tune({args.epochs}, freeze_epochs={args.probe_epochs}) on {len(val_paths)} held-out images: "
          f"val acc {100 * float(acc):.1f}% in {time.time() - START:.0f} s (whole process)")


if __name__ == "__main__":
    main()
