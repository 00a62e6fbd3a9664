"""Data-parallel training on the CPU: two gloo workers started by ``tlwork run --nproc-per-node 2``.

The workers are real processes started through torchrun (``tui.launch``); nothing is mocked.
The model is timm's ``test_convnext`` (LayerNorm, no BatchNorm, no dropout) on the shipped
demo set at 32 px, in ``probe-then-finetune``: one epoch of cached-feature linear probing
(features extracted by both workers and gathered) and one epoch of fine-tuning with
crop-flip augmentation on device-resident batches. Two workers with a per-device batch of 16
then compute exactly what one process with a batch of 32 computes, up to float rounding:
each optimiser step sees the same 32 samples with the same augmentation draws, DDP averages
the two halves' gradients, and no layer's output depends on which other samples share its
batch. Measured: 6.4e-7 largest weight difference, so ``WEIGHT_TOLERANCE`` is 1e-5 (the
weights themselves move by ~1e-1). BatchNorm models differ more (each worker normalises its
own half; ``--sync-bn`` fixes that on CUDA, where SyncBatchNorm runs): see docs/distributed.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from core import events as ev
from core.config import RunConfig
from core.data.sampler import Shard
from core.errors import ConfigError
from core.runs.store import read_metrics
from core.training.resume import resume
from core.training.train import train
from tui.cli import app

pytestmark = pytest.mark.slow

PER_DEVICE, WORKERS = 16, 2
WEIGHT_TOLERANCE = 1e-5
BOUND = 60.0  # seconds a failing job may take, start-up included (measured: 10-17 s on 2 busy cores)
SETTINGS: dict[str, Any] = {
    "mode": "probe-then-finetune", "backbone": "timm:test_convnext", "weights": "none", "dataset": "demo",
    "image_size": 32, "probe_epochs": 1, "epochs": 1, "lr": 0.05, "probe_lr": 0.05, "seed": 3, "device": "cpu",
}


def cli_args(runs_dir: Path, name: str) -> list[str]:
    """``run`` options for ``SETTINGS`` with the per-device batch."""
    args = ["run", "--runs-dir", str(runs_dir), "--name", name, "--batch-size", str(PER_DEVICE)]
    for key, value in SETTINGS.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    return args


def launch(args: list[str], cwd: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run a command to completion with a hard timeout; (result, seconds)."""
    start = time.monotonic()
    result = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=180,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )
    return result, time.monotonic() - start


def tlwork_parallel(runs_dir: Path, name: str, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """``tlwork run ... --nproc-per-node 2`` (as ``python -m tui.cli``, the console script's module)."""
    args = [sys.executable, "-m", "tui.cli", *cli_args(runs_dir, name), "--nproc-per-node", str(WORKERS), "--dist-timeout", "30"]
    return launch(args, runs_dir.parent, **env)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel())


def epochs(run_dir: Path) -> list[dict[str, Any]]:
    return [m for m in read_metrics(run_dir) if m["event"] == "epoch_ended"]


@pytest.fixture(scope="session")
def single_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: one process, the global batch (16 x 2 = 32), same seed. Trained once per session."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the xdist workers, who take turns
    runs_dir = root / "distributed-reference"
    with FileLock(str(root / "distributed-reference.lock")):
        if not (runs_dir / "single" / "model.json").is_file():
            config = RunConfig(**SETTINGS, batch_size=PER_DEVICE * WORKERS, runs_dir=str(runs_dir), name="single")
            assert isinstance(list(train(config))[-1], ev.RunFinished)
    return runs_dir / "single"


def test_two_workers_train_like_one_process_with_the_global_batch(tmp_path: Path, single_run: Path) -> None:
    runs_dir = tmp_path / "runs"
    result, _ = tlwork_parallel(runs_dir, "parallel")
    assert result.returncode == 0, result.stderr[-3000:]

    # One run directory, written by rank 0 alone, with the settings as given (per-device batch).
    assert [p.name for p in runs_dir.iterdir()] == ["parallel"]
    run_dir = runs_dir / "parallel"
    config = json.loads((run_dir / "config.json").read_text())
    assert config == RunConfig(**SETTINGS, batch_size=PER_DEVICE, runs_dir=str(runs_dir), name="parallel").resolved().to_dict()
    status = json.loads((run_dir / "status.json").read_text())
    assert (status["status"], status["workers"]) == ("finished", WORKERS)
    assert result.stdout.count("finished ") == 1  # rank 1 printed nothing
    assert "data-parallel on 2 workers (gloo): global batch 32, 16 per worker" in result.stdout

    # The weights of one process with batch 32 (the probe's head and every fine-tuned layer).
    reference = weights(single_run)
    assert largest_difference(weights(run_dir), reference) < WEIGHT_TOLERANCE
    initial = RunConfig(**SETTINGS, batch_size=32, runs_dir=str(tmp_path / "init"))
    from core.models.build import build_model

    torch.manual_seed(initial.seed)
    model, _ = build_model(initial.backbone, 10, "none")
    moved = largest_difference({k: v.detach() for k, v in model.state_dict().items()}, reference)
    assert moved > 1000 * WEIGHT_TOLERANCE  # the comparison could fail: training moved them far more

    # Figures over both workers' shares (training totals over all 720 images, the same count
    # images/s is computed from; validation over all 80 held out), equal to the single process's.
    for mine, theirs in zip(epochs(run_dir), epochs(single_run), strict=True):
        assert mine["train_accuracy"] == theirs["train_accuracy"] and mine["val_accuracy"] == theirs["val_accuracy"]
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], abs=1e-5)
        assert mine["val_loss"] == pytest.approx(theirs["val_loss"], abs=1e-5)
    finished = [m for m in read_metrics(run_dir) if m["event"] == "run_finished"][-1]

    # One process evaluating the bundle scores exactly what the workers reported.
    scored = CliRunner().invoke(app, ["eval", str(run_dir), "--json", "--device", "cpu"])
    assert scored.exit_code == 0, scored.output
    record = json.loads(scored.stdout)
    assert record["images"] == 80
    kept = epochs(single_run)[finished["kept_epoch"] - 1]
    assert record["top1"] == finished["val_accuracy"] == kept["val_accuracy"]


def test_a_killed_worker_ends_the_job_and_its_checkpoint_resumes_on_one_worker(tmp_path: Path, single_run: Path) -> None:
    runs_dir = tmp_path / "runs"
    # Rank 1 SIGKILLs itself at the first batch of epoch 2, after rank 0 saved epoch 1's checkpoint.
    result, seconds = tlwork_parallel(runs_dir, "killed", TLWORK_FAIL_RANK="1", TLWORK_FAIL_AT="2:1", TLWORK_FAIL_MODE="kill")
    assert result.returncode == 128 + 9, result.stderr[-3000:]
    assert seconds < BOUND
    assert "worker rank 1 failed (killed by signal 9)" in result.stderr
    assert "[rank 0] another worker failed, left or stopped answering" in result.stderr
    run_dir = runs_dir / "killed"
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and status["error"].startswith("WorkerLost")
    assert not (run_dir / "model.json").exists()

    # Written by 2 workers, resumed by 1: the global batch (32) is kept, so the end is the same.
    events = list(resume(str(run_dir), runs_dir=runs_dir))
    assert isinstance(events[-1], ev.RunFinished), events[-1]
    assert any(isinstance(e, ev.MessageLogged) and "continuing at epoch 2" in e.message for e in events)
    assert largest_difference(weights(run_dir), weights(single_run)) < WEIGHT_TOLERANCE


def test_two_workers_accumulating_gradients_train_like_one_process(tmp_path: Path) -> None:
    """--accumulate 2: each worker skips the gradient all-reduce on the inner batch (DDP's no_sync) and the
    update's gradient is still the global one: the weights one process gets accumulating the same batches."""
    runs_dir = tmp_path / "runs"
    config = RunConfig(**SETTINGS, batch_size=PER_DEVICE * WORKERS, accumulate=2, runs_dir=str(runs_dir), name="one")
    assert isinstance(list(train(config))[-1], ev.RunFinished)
    args = [sys.executable, "-m", "tui.cli", *cli_args(runs_dir, "two"), "--accumulate", "2", "--nproc-per-node", str(WORKERS),
            "--dist-timeout", "30"]
    result, _ = launch(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "one update per 2 batches (64 images)" in result.stdout
    assert largest_difference(weights(runs_dir / "two"), weights(runs_dir / "one")) < WEIGHT_TOLERANCE


def test_a_raising_worker_under_plain_torchrun_ends_the_job_with_its_error(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    # Started the documented other way: torch's own launcher running the CLI module.
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "tui.cli", *cli_args(runs_dir, "raised"),
            "--dist-timeout", "30"]
    result, seconds = launch(args, tmp_path, TLWORK_FAIL_RANK="1", TLWORK_FAIL_AT="1:3")
    assert result.returncode != 0
    assert seconds < BOUND
    assert "RuntimeError: injected failure on rank 1 at epoch 1, batch 3 (TLWORK_FAIL_RANK)" in result.stderr
    assert [p.name for p in runs_dir.iterdir()] == ["raised"]  # rank 0 made it; rank 1 made none
    status = json.loads((runs_dir / "raised" / "status.json").read_text())
    assert status["status"] == "failed" and status["step"] == 2


@pytest.mark.parametrize(("size", "batch", "world"), [(800, 32, 2), (100, 10, 3), (7, 4, 3), (5, 8, 4)])
def test_shards_deal_out_each_global_batch_exactly_once(size: int, batch: int, world: int) -> None:
    order = list(torch.randperm(size, generator=torch.Generator().manual_seed(0)).tolist())
    shards = [Shard(rank, world) for rank in range(world)]
    local = [s.split(order, batch) for s in shards]
    width = shards[0].local_batch(batch)
    steps = -(-size // batch)
    for step in range(steps):
        wanted = order[step * batch:(step + 1) * batch]
        got: list[int] = []
        for shard, mine in zip(shards, local):
            rows = mine[step * width:(step + 1) * width]
            real, total = shard.counts(size, batch, step)
            assert total == len(wanted)
            got += rows[:real]  # the rest is padding, weighted zero
        assert sorted(got) == sorted(wanted)
    assert len({-(-len(mine) // width) for mine in local}) == 1  # every rank takes the same number of steps
    assert sorted(i for s in shards for i in s.of(list(range(size)))) == list(range(size))


def test_sync_bn_is_refused_on_the_cpu_with_the_reason(tmp_path: Path) -> None:
    config = RunConfig(**{**SETTINGS, "mode": "finetune"}, sync_bn=True, batch_size=16, runs_dir=str(tmp_path / "runs"))
    with pytest.raises(ConfigError, match="--sync-bn needs CUDA GPUs"):
        list(train(config))
    assert not (tmp_path / "runs").exists()


def test_nproc_per_node_below_one_is_a_usage_error() -> None:
    result = CliRunner().invoke(app, ["run", "--dataset", "demo", "--weights", "none", "--nproc-per-node", "0"])
    assert result.exit_code == 2
    assert "--nproc-per-node must be at least 1" in result.stderr
