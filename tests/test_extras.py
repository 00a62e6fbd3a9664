"""What timm and fastai users expect in a fine-tune (issue 13): EMA of the weights, MixUp and
CutMix, class weights and a balanced sampler, gradient accumulation and clipping.

Real tiny timm models train on generated images and on the shipped demo set, in-process
through the engine and through the ``tlwork`` command line; resume is checked bit for bit,
and a SIGKILLed run through a real subprocess.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from tinydata import TINY_BACKBONE, make_image_folder, sigkill_after_checkpoint
from typer.testing import CliRunner

from core import events as ev
from core.config import RunConfig
from core.data.sampler import BalancedSampler, Shard
from core.errors import ConfigError
from core.inference.evaluate import evaluate
from core.training.mixing import Mixer, class_weights
from core.training.resume import resume as resume_run
from core.training.train import train as run_training
from tui.cli import app

PY = [sys.executable, "-c", "from tui.cli import main; main()"]
KILL_SEED = 20261203  # the SIGKILL test's kill step comes from it: a red run reproduces


def train(config: RunConfig, **kwargs: Any) -> list[Any]:
    """Every event of a run, one ``BatchEnded`` per batch."""
    return list(run_training(config, emit_interval=0.0, **kwargs))


def finished(events: list[Any]) -> ev.RunFinished:
    assert isinstance(events[-1], ev.RunFinished), events[-1]
    return events[-1]


def weights(run_dir: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(run_dir) / "model.safetensors"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three classes of 12 generated training images (and 4 test images) each."""
    return make_image_folder(tmp_path_factory.mktemp("extras-data"))


def tiny(folder: Path, runs: Path, **overrides: Any) -> RunConfig:
    """Fine-tune the tiny timm ResNet (it has BatchNorm) on the generated folder: 27 train, 9 held out."""
    values: dict[str, Any] = dict(
        mode="finetune", backbone=TINY_BACKBONE, weights="none", dataset=f"imagefolder:{folder}", image_size=32,
        batch_size=8, epochs=2, lr=0.05, device="cpu", workers=0, runs_dir=str(runs), seed=5, val_split=0.25,
    )  # fmt: skip
    values.update(overrides)
    return RunConfig(**values)


# -- each option finishes a fine-tune on the demo set ------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"ema": 0.9},
        {"ema": 0.9, "ema_warmup": True},
        {"mixup": 0.2},
        {"cutmix": 1.0},
        {"mixup": 0.2, "cutmix": 1.0, "mix_prob": 0.5, "label_smoothing": 0.1},
        {"class_weights": "balanced"},
        {"sampler": "balanced"},
        {"accumulate": 3},
        {"clip_grad": 0.5},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_each_option_finishes_a_finetune_on_the_demo_set(tmp_path: Path, options: dict[str, Any]) -> None:
    config = RunConfig(
        mode="finetune", backbone="timm:test_efficientnet", weights="none", dataset="demo", image_size=32,
        batch_size=64, epochs=1, device="cpu", workers=0, runs_dir=str(tmp_path), **options,
    )  # fmt: skip
    events = train(config)
    done = finished(events)
    meta = json.loads((Path(done.run_dir) / "model.json").read_text())
    assert meta["kept_weights"] == done.kept_weights
    saved = json.loads((Path(done.run_dir) / "config.json").read_text())
    assert all(saved[k] == v for k, v in options.items()), saved
    assert all(f"--{k.replace('_', '-')}" in config.command_line() for k in options)
    # The bundle scores on its validation split what the run said it kept, whichever weights those are.
    scored = [e for e in evaluate(done.run_dir, device="cpu") if isinstance(e, ev.EvaluationEnded)][0]
    assert scored.top1 == done.val_accuracy
    logged = [e.message for e in events if isinstance(e, ev.MessageLogged)]
    assert any(m.startswith("stage finetune: ") and "data path" not in m for m in logged), logged


def test_bad_values_are_one_line_usage_errors() -> None:
    runner = CliRunner()
    for args, words in [
        (["--ema", "1.5"], "--ema must be a decay in (0, 1)"),
        (["--ema-warmup"], "--ema-warmup warms up"),
        (["--mixup", "-1"], "--mixup is a Beta(alpha, alpha) parameter"),
        (["--mix-prob", "0", "--mixup", "0.2"], "--mix-prob must be in (0, 1]"),
        (["--accumulate", "0"], "--accumulate must be at least 1"),
        (["--clip-grad", "-1"], "--clip-grad must not be negative"),
        (["--class-weights", "inverse"], "unknown --class-weights 'inverse'; choose one of: none, balanced"),
        (["--sampler", "even"], "unknown --sampler 'even'; choose one of: shuffle, balanced"),
        (["--mode", "linear-probe", "--mixup", "0.2"], "add --no-cache-features"),
    ]:
        result = runner.invoke(app, ["run", "--dataset", "demo", "--device", "cpu", *args])
        assert result.exit_code == 2, (args, result.output)
        assert words in result.output and len(result.output.strip().splitlines()) == 1, (args, result.output)


# -- EMA --------------------------------------------------------------------------------------------------------


def test_ema_is_validated_beside_the_live_weights_and_the_bundle_keeps_the_better(folder: Path, tmp_path: Path) -> None:
    events = train(tiny(folder, tmp_path, epochs=3, ema=0.5, name="ema"))
    done = finished(events)
    epochs = [e for e in events if isinstance(e, ev.EpochEnded)]
    assert all(e.ema_val_accuracy is not None and e.ema_val_loss is not None for e in epochs)
    assert any(e.ema_val_loss != e.val_loss for e in epochs)  # a different model, not the live one twice
    # Each epoch stands for its better weights (the live ones on a tie); the bundle is the first epoch scoring the most.
    picked = [(max(e.val_accuracy, e.ema_val_accuracy), "ema" if e.ema_val_accuracy > e.val_accuracy else "live") for e in epochs]
    kept = max(range(len(picked)), key=lambda i: (picked[i][0], -i))
    assert (done.kept_epoch, done.val_accuracy, done.kept_weights) == (kept + 1, *picked[kept])
    logged = [e.message for e in events if isinstance(e, ev.MessageLogged)]
    assert done.kept_weights == "live" or any("EMA weights" in m for m in logged), logged
    # The bundle holds what was kept: scoring it reproduces that figure exactly.
    scored = [e for e in evaluate(done.run_dir, device="cpu") if isinstance(e, ev.EvaluationEnded)][0]
    assert scored.top1 == done.val_accuracy
    # Scoring the EMA leaves the live training alone: without --ema the live weights score the same each epoch.
    plain = [e for e in train(tiny(folder, tmp_path, epochs=3, name="plain")) if isinstance(e, ev.EpochEnded)]
    assert [(e.train_loss, e.val_accuracy) for e in plain] == [(e.train_loss, e.val_accuracy) for e in epochs]
    assert all(e.ema_val_accuracy is None for e in plain)


def test_ema_averages_batchnorm_statistics_as_timm_does(folder: Path, tmp_path: Path) -> None:
    from core.models.build import build_model
    from core.training.ema import WeightsEma

    model, _ = build_model(TINY_BACKBONE, 3, "none", ["a", "b", "c"])
    ema = WeightsEma(model, 0.5, warmup=False)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    ema.update(model)  # the first update copies the weights (timm's step 1)
    with torch.no_grad():
        bn.running_mean.add_(2.0)
        bn.weight.add_(2.0)
    ema.update(model)
    averaged = next(m for m in ema.average.module.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert torch.allclose(averaged.running_mean, bn.running_mean - 1.0)  # halfway, as decay 0.5 says
    assert torch.allclose(averaged.weight, bn.weight - 1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.swapped(model):
        assert torch.equal(bn.running_mean, averaged.running_mean)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# -- MixUp / CutMix ---------------------------------------------------------------------------------------------


def test_mixer_mixes_images_into_soft_targets_with_the_dominant_label() -> None:
    torch.manual_seed(0)
    images = torch.rand(8, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    for mixer in (Mixer(0.4, 0.0, 1.0, 3), Mixer(0.0, 1.0, 1.0, 3)):
        mixed, soft, dominant = mixer(images, labels)
        assert mixed.shape == images.shape and not torch.equal(mixed, images)
        assert soft.shape == (8, 3) and torch.allclose(soft.sum(1), torch.ones(8))
        assert torch.equal(dominant, soft.argmax(1))
        assert (soft.max(1).values < 1).any()  # some image is really a mix of two labels
    never = Mixer(0.4, 1.0, 1e-9, 3)
    same, one_hot, dominant = never(images, labels)
    assert torch.equal(same, images) and torch.equal(one_hot.argmax(1), labels) and torch.equal(dominant, labels)


def test_mixup_on_the_streaming_path_and_the_device_path_trains(folder: Path, tmp_path: Path) -> None:
    for data in ("device", "stream"):
        events = train(tiny(folder, tmp_path, data=data, augment="crop-flip", mixup=0.4, cutmix=1.0, name=data))
        logged = [e.message for e in events if isinstance(e, ev.MessageLogged)]
        assert f"stage finetune: {data} data path" in logged
        assert any("mixup 0.4 or cutmix 1" in m and "dominant label" in m for m in logged), logged
        assert finished(events).val_accuracy >= 0


def test_probe_then_finetune_mixes_only_the_finetune_stage(folder: Path, tmp_path: Path) -> None:
    events = train(tiny(folder, tmp_path, mode="probe-then-finetune", probe_epochs=1, epochs=1, mixup=0.2))
    logged = [e.message for e in events if isinstance(e, ev.MessageLogged)]
    assert "stage probe: no mixing (this stage trains on cached features, not images)" in logged
    assert any(m.startswith("stage finetune: mixup 0.2") for m in logged)
    with pytest.raises(ConfigError, match="--no-cache-features"):
        tiny(folder, tmp_path, mode="linear-probe", mixup=0.2).resolved()
    tiny(folder, tmp_path, mode="linear-probe", mixup=0.2, cache_features=False).resolved()  # mixes the probe's images


# -- class imbalance --------------------------------------------------------------------------------------------


def test_class_weights_are_inverse_frequency() -> None:
    weights_ = class_weights([0] * 6 + [1] * 3 + [2] * 1, 4)
    assert torch.allclose(weights_, torch.tensor([10 / (4 * 6), 10 / (4 * 3), 10 / (4 * 1), 0.0]))


def test_the_balanced_sampler_draws_classes_evenly_repeatably_and_shards(tmp_path: Path) -> None:
    targets = [0] * 80 + [1] * 16 + [2] * 4
    sampler = BalancedSampler(targets, seed=3)
    sampler.set_epoch(1)
    counts = torch.bincount(torch.tensor([targets[i] for e in range(1, 21) for i in _order(sampler, e)]), minlength=3)
    assert counts.min() / counts.max() > 0.85, counts  # a third each over 2,000 draws, not 80/16/4
    assert _order(sampler, 2) == _order(BalancedSampler(targets, seed=3), 2)  # (seed, epoch) decide the draw
    assert _order(sampler, 2) != _order(sampler, 3)
    ranks = [BalancedSampler(targets, seed=3, shard=Shard(r, 2), batch_size=10) for r in range(2)]
    for r in ranks:
        r.set_epoch(2)
    mine = [r.local_order() for r in ranks]
    whole = _order(sampler, 2)
    assert sorted(mine[0] + mine[1]) == sorted(whole) and len(mine[0]) == len(mine[1]) == 50


def _order(sampler: BalancedSampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return sampler.order()


def test_a_skewed_training_set_suggests_the_balance_options(tmp_path: Path) -> None:
    skewed = make_image_folder(tmp_path / "skewed", train=4)
    extra = skewed / "train" / "circle"
    for i, image in enumerate(sorted((skewed / "train" / "stripes").glob("*.png"))):
        (extra / f"x{i}.png").write_bytes(image.read_bytes())  # a few more circles: 8 of them against 4 and 4
    for i in range(4):
        (extra / f"y{i}.png").write_bytes((extra / f"00{i}.png").read_bytes())
    logged = [e.message for e in train(tiny(skewed, tmp_path / "runs", epochs=1, val_split=0.0)) if isinstance(e, ev.MessageLogged)]
    assert any("classes are imbalanced" in m and "--class-weights balanced or --sampler balanced" in m for m in logged), logged
    logged = [e.message for e in train(tiny(skewed, tmp_path / "runs", epochs=1, val_split=0.0, sampler="balanced"))
              if isinstance(e, ev.MessageLogged)]
    assert not any("classes are imbalanced" in m for m in logged)


# -- gradient accumulation and clipping --------------------------------------------------------------------------


def test_accumulating_two_batches_of_16_ends_where_batches_of_32_do(tmp_path: Path) -> None:
    """No BatchNorm (timm's test_efficientnet_gn), no augmentation: the same updates, so the same weights.

    Only float rounding differs (the sums run in another order); at lr 0.01 the two end about
    1e-5 apart after 46 updates (at 0.05 momentum SGD grows that to 3e-4).
    """
    common = dict(
        mode="finetune", backbone="timm:test_efficientnet_gn", weights="none", dataset="demo", image_size=32, epochs=2,
        augment="none", scheduler="step", step_size=1, step_gamma=0.5, lr=0.01, device="cpu", workers=0,
        runs_dir=str(tmp_path), seed=1,
    )  # fmt: skip
    big = finished(train(RunConfig(batch_size=32, name="b32", **common)))
    events = train(RunConfig(batch_size=16, accumulate=2, name="b16x2", **common))
    small = finished(events)
    a, b = weights(big.run_dir), weights(small.run_dir)
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < 1e-4, worst
    # The schedule counts updates: the lr halves after each epoch's 23 updates, at the same images either way.
    lrs = sorted({e.lr for e in events if isinstance(e, ev.BatchEnded)}, reverse=True)
    assert lrs == [0.01, 0.005]


def test_clipping_reports_each_updates_norm_before_clipping(folder: Path, tmp_path: Path) -> None:
    events = train(tiny(folder, tmp_path, epochs=1, clip_grad=1e-3, accumulate=2))
    norms = [n for e in events if isinstance(e, ev.BatchEnded) for n in e.grad_norms]
    assert len(norms) == 2  # 4 batches of the 27 images, one update per 2
    assert all(n > 1e-3 for n in norms)  # the norms before clipping: larger than the clip
    record = json.loads(json.dumps(ev.to_record(next(e for e in events if isinstance(e, ev.BatchEnded) and e.grad_norms))))
    assert record["grad_norms"]
    assert not any(isinstance(e, ev.BatchEnded) and e.grad_norms for e in train(tiny(folder, tmp_path, epochs=1)))


# -- resume -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "steps"),
    [
        ({"ema": 0.8, "accumulate": 2, "mixup": 0.3, "cutmix": 1.0, "mix_prob": 0.7}, (3, 4, 6)),  # mid-update, epoch end
        ({"class_weights": "balanced", "sampler": "balanced", "clip_grad": 0.5, "ema": 0.7, "ema_warmup": True}, (5,)),
    ],
)
def test_resume_is_exact_with_the_extras(folder: Path, tmp_path: Path, options: dict[str, Any], steps: tuple[int, ...]) -> None:
    runs = tmp_path / "runs"
    whole = train(tiny(folder, runs, name="whole", **options))
    done = finished(whole)
    figures = [(e.epoch, e.train_loss, e.val_accuracy, e.ema_val_accuracy) for e in whole if isinstance(e, ev.EpochEnded)]
    for step in steps:
        stopped = _stop_at(tiny(folder, runs, name=f"at-{step}", **options), step)
        assert isinstance(stopped[-1], ev.RunStopped), stopped[-1]
        resumed = list(resume_run(f"at-{step}", runs_dir=runs, emit_interval=0.0))
        again = finished(resumed)
        a, b = weights(done.run_dir), weights(again.run_dir)
        assert all(torch.equal(a[k], b[k]) for k in a), f"stopped at step {step}"
        got = [(e.epoch, e.train_loss, e.val_accuracy, e.ema_val_accuracy) for e in stopped + resumed if isinstance(e, ev.EpochEnded)]
        assert got == figures, f"stopped at step {step}"
        assert (again.kept_epoch, again.kept_weights, again.val_accuracy) == (done.kept_epoch, done.kept_weights, done.val_accuracy)


def _stop_at(config: RunConfig, step: int) -> list[Any]:
    import threading

    stop, events = threading.Event(), []
    for event in run_training(config, stop=stop, emit_interval=0.0):
        events.append(event)
        if isinstance(event, ev.BatchEnded) and event.step >= step:
            stop.set()
    return events


def test_a_sigkilled_run_with_ema_accumulation_and_mixup_resumes_to_the_same_weights(folder: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    options = dict(ema=0.99, accumulate=2, mixup=0.2, augment="crop-flip", batch_size=3, epochs=2, checkpoint_every=3)
    whole = finished(train(tiny(folder, runs, name="whole", **options)))
    args = tiny(folder, runs, **options).command_line().split()[2:]
    target = random.Random(KILL_SEED).randint(4, 15)  # of 18 batches; --checkpoint-every 3 lands mid-update
    where = f"kill step {target}, from KILL_SEED {KILL_SEED}"
    killed = subprocess.Popen([*PY, "run", *args, "--name", "killed"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sigkill_after_checkpoint(killed, runs / "killed" / "checkpoint-last.json", target, f"({where})")
    resumed = CliRunner().invoke(app, ["run", "--resume", "killed", "--runs-dir", str(runs), "--json"])
    assert resumed.exit_code == 0, f"{where}\n{resumed.output}"
    a, b = weights(whole.run_dir), weights(runs / "killed")
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= 1e-6, f"{where}: weights differ by {worst}"
