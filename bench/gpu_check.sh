#!/usr/bin/env bash
# The GPU check behind bench/RESULTS.md's cuda section, run on a lent GPU machine from the
# repository root: a CUDA smoke run (bf16 autocast, channels_last, device-resident data),
# its evaluation, bench/compare.py at 224 px, then bench/wholeprocess.py on a full-size
# epoch. DATA holds ../shared's CIFAR-10 JPEGs and EfficientNet-Lite0 weights (copied
# there, since ../shared does not travel).
set -euo pipefail
export PYTHONUNBUFFERED=1
DATA=${DATA:-.gpudata}
OUT=${OUT:-/tmp/tlwork-gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__)"
tlwork() { python3 -c "from tui.cli import main; main()" "$@"; }
tlwork run --mode finetune --dataset demo --weights none --image-size 224 --epochs 2 --batch-size 128 \
  --runs-dir "$OUT/runs" --name cuda-smoke --json > "$OUT/smoke.jsonl"
grep -E '"event": "(run_started|epoch_ended|run_finished)"' "$OUT/smoke.jsonl" | cut -c1-400
tlwork eval "$OUT/runs/cuda-smoke" --json | cut -c1-300
python3 bench/compare.py --device cuda --image-size 224 --per-class 500 --batch-size 256 \
  --source "$DATA/cifar10-jpg/train" --backbone timm:tf_efficientnet_lite0 \
  --weights "$DATA/tf_efficientnet_lite0.in1k.safetensors" --out "$OUT/RESULTS.md"
# Whole processes on a full-size epoch (4,500 training images linked 10 times = 45,000, about
# CIFAR-10's 50,000): `tlwork run --mode finetune` against bench/notebook.py, then evaluation.
python3 bench/wholeprocess.py --device cuda --image-size 224 --per-class 500 --repeat 10 --tasks finetune,eval \
  --source "$DATA/cifar10-jpg/train" --backbone timm:tf_efficientnet_lite0 \
  --weights "$DATA/tf_efficientnet_lite0.in1k.safetensors" --out "$OUT/RESULTS.md"
