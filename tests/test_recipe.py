"""The fine-tuning recipe (issue 12): BatchNorm policy, the kept model, early stopping,
layer-wise learning rates and feature-extraction progress.

Every test trains the real tiny timm ResNet (it has BatchNorm) on generated images through
the engine; hooks passed to ``train(hooks=...)`` look at the real model and optimiser at the
moments the loop offers them.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from tinydata import TINY_BACKBONE, make_image_folder
from torch import nn

from core import events as ev
from core.config import RunConfig
from core.errors import ConfigError
from core.inference.evaluate import evaluate
from core.runs.store import list_runs
from core.training.hooks import Hook, Run
from core.training.state import EpochState, StageRun
from core.training.train import train


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three classes of 12 generated training images (and 4 test images) each."""
    return make_image_folder(tmp_path_factory.mktemp("recipe-data"))


def config(folder: Path, runs: Path, **overrides: Any) -> RunConfig:
    values: dict[str, Any] = dict(
        mode="probe-then-finetune", backbone=TINY_BACKBONE, weights="none", dataset=f"imagefolder:{folder}",
        image_size=32, batch_size=8, probe_epochs=1, epochs=1, device="cpu", workers=0, runs_dir=str(runs), seed=3,
    )  # fmt: skip
    values.update(overrides)
    return RunConfig(**values)


def bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{n}.{b}": getattr(m, b).clone() for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) for b in ("running_mean", "running_var")}


class FirstFinetuneStep(Hook):
    """Keeps the BatchNorm statistics at the fine-tune stage's start and after its first batch."""

    def __init__(self) -> None:
        self.before: dict[str, torch.Tensor] = {}
        self.after: dict[str, torch.Tensor] = {}
        self.bn_weight_moved = False

    def on_stage_start(self, run: Run, stage: StageRun) -> Iterator[ev.Event]:
        if stage.stage.name == "finetune":
            self.before = bn_buffers(run.setup.model)
            self.weights = {n: p.detach().clone() for n, p in run.setup.model.named_parameters() if "bn" in n}
        return iter(())

    def after_batch(self, run: Run, epoch: EpochState) -> Iterator[ev.Event]:
        if epoch.stage.name == "finetune" and not self.after:
            self.after = bn_buffers(run.setup.model)
            params = dict(run.setup.model.named_parameters())
            self.bn_weight_moved = any(not torch.equal(params[n], w) for n, w in self.weights.items())
        return iter(())


@pytest.mark.parametrize("bn", ["frozen", "train"])
def test_first_finetune_step_after_a_probe_keeps_or_moves_batchnorm_statistics(folder: Path, tmp_path: Path, bn: str) -> None:
    hook = FirstFinetuneStep()
    events = list(train(config(folder, tmp_path / "runs", bn=bn), hooks=[hook]))
    assert isinstance(events[-1], ev.RunFinished)
    assert hook.before and hook.after.keys() == hook.before.keys()
    moved = [k for k in hook.before if not torch.equal(hook.before[k], hook.after[k])]
    if bn == "frozen":
        assert moved == [], f"frozen BatchNorm statistics moved: {moved[:3]}"
    else:
        assert len(moved) == len(hook.before), "train-mode BatchNorm must update every running statistic"
    assert hook.bn_weight_moved, "BatchNorm's scale and shift still train under either policy"
    finetune = next(e for e in events if isinstance(e, ev.StageStarted) and e.stage == "finetune")
    assert finetune.bn == bn


def test_bn_auto_is_frozen_for_pretrained_weights_and_train_for_random_ones(folder: Path, tmp_path: Path) -> None:
    assert config(folder, tmp_path).resolved().bn == "train"  # --weights none: statistics must be learnt
    assert RunConfig(weights="imagenet").resolved().bn == "frozen"
    assert RunConfig(weights="/some/file.safetensors").resolved().bn == "frozen"
    assert "--bn frozen" in RunConfig(weights="imagenet").resolved().command_line()
    with pytest.raises(ConfigError, match="unknown --bn 'off'; choose one of: auto, frozen, train"):
        RunConfig(bn="off").validate()  # type: ignore[arg-type]


class SpoilLastEpoch(Hook):
    """Zeroes the head after every batch of the run's last epoch: that epoch validates at chance."""

    def __init__(self, last: int) -> None:
        self.last = last

    def after_batch(self, run: Run, epoch: EpochState) -> Iterator[ev.Event]:
        if epoch.epoch == self.last:
            with torch.no_grad():
                for p in run.setup.model.get_submodule(run.setup.info.head).parameters():
                    p.zero_()
        return iter(())


def finished(events: list[Any]) -> ev.RunFinished:
    assert isinstance(events[-1], ev.RunFinished), events[-1]
    return events[-1]


@pytest.mark.parametrize("keep", ["best", "last"])
def test_the_bundle_keeps_the_best_held_out_epoch_and_eval_reproduces_it(folder: Path, tmp_path: Path, keep: str) -> None:
    runs = tmp_path / "runs"
    cfg = config(folder, runs, mode="finetune", epochs=3, lr=0.05, keep=keep, val_split=0.25, name=keep)
    events = list(train(cfg, hooks=[SpoilLastEpoch(3)]))
    done = finished(events)
    accs = {e.epoch: e.val_accuracy for e in events if isinstance(e, ev.EpochEnded)}
    assert accs[3] < max(accs[1], accs[2]), accs  # the spoiled epoch is worse than an earlier one
    best = max(accs, key=lambda e: (accs[e], -e))  # the first epoch reaching the highest accuracy
    expected = best if keep == "best" else 3
    assert (done.kept_epoch, done.kept, done.val_accuracy) == (expected, keep, accs[expected])
    assert done.best_val_accuracy == max(accs.values())
    logged = [e.message for e in events if isinstance(e, ev.MessageLogged)]
    assert any(f"keeping epoch {expected}" in m for m in logged), logged
    meta = json.loads((Path(done.run_dir) / "model.json").read_text())
    assert (meta["kept_epoch"], meta["kept"], meta["val_accuracy"]) == (expected, keep, accs[expected])
    # tlwork eval of the bundle, on the run's own validation split, gives the kept epoch's figure exactly.
    scored = [e for e in evaluate(done.run_dir, device="cpu") if isinstance(e, ev.EvaluationEnded)][0]
    assert scored.top1 == accs[expected]
    listed = [r for r in list_runs(runs) if r.name == keep][0]
    assert (listed.kept_epoch, listed.val_accuracy, listed.model) == (expected, accs[expected], f"epoch {expected}")


def test_validating_on_the_test_split_keeps_the_last_epoch_and_says_why(folder: Path, tmp_path: Path) -> None:
    events = list(train(config(folder, tmp_path / "runs", mode="finetune", epochs=2, val_split=0.0)))
    done = finished(events)
    assert (done.kept, done.kept_epoch) == ("last", 2)
    started = events[0]
    assert isinstance(started, ev.RunStarted) and started.val_size == 12  # the test folder: 4 per class
    assert any("would tune to the test set" in e.message for e in events if isinstance(e, ev.MessageLogged))


def test_a_dataset_with_a_test_split_holds_out_validation_from_training(folder: Path, tmp_path: Path) -> None:
    events = list(train(config(folder, tmp_path / "runs", mode="linear-probe", val_split=0.25)))
    started = events[0]
    assert isinstance(started, ev.RunStarted)
    assert (started.train_size, started.val_size) == (27, 9)  # 36 training images; the 12 test images stay for eval
    scored = [e for e in evaluate(finished(events).run_dir, dataset=f"imagefolder:{folder}", device="cpu")
              if isinstance(e, ev.EvaluationEnded)][0]
    assert (scored.split, scored.images) == ("test", 12)


def test_patience_ends_each_stage_after_n_flat_epochs(folder: Path, tmp_path: Path) -> None:
    # A rate too small to change any prediction: validation is flat from the first epoch on.
    cfg = config(folder, tmp_path / "runs", probe_epochs=4, epochs=5, probe_lr=1e-12, lr=1e-12, patience=2)
    events = list(train(cfg))
    done = finished(events)
    epochs = [(e.epoch, e.stage) for e in events if isinstance(e, ev.EpochEnded)]
    # Each stage: one epoch sets its best, two more without improvement end it.
    assert epochs == [(1, "probe"), (2, "probe"), (3, "probe"), (4, "finetune"), (5, "finetune"), (6, "finetune")]
    assert "early stopping: finetune stage ended after epoch 6" in done.reason
    assert done.epochs == 6
    stages = [(e.stage, e.first_epoch) for e in events if isinstance(e, ev.StageStarted)]
    assert stages == [("probe", 1), ("finetune", 4)]
    status = json.loads((Path(done.run_dir) / "status.json").read_text())
    assert status["status"] == "finished"


def test_layer_decay_gives_each_stage_group_its_own_rate(folder: Path, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    class Groups(Hook):
        def on_stage_start(self, run: Run, stage: StageRun) -> Iterator[ev.Event]:
            seen[stage.stage.name] = [(g["name"], g["lr"], {id(p) for p in g["params"]}) for g in stage.optimizer.param_groups]
            seen["model"] = run.setup.model, run.setup.info
            return iter(())

    events = list(train(config(folder, tmp_path / "runs", lr=0.01, probe_lr=0.003, scheduler="none", layer_decay=0.5), hooks=[Groups()]))
    model, info = seen["model"]
    groups = seen["finetune"]
    assert [lr for _, lr, _ in groups] == pytest.approx([0.01 * 0.5**k for k in range(len(groups))])
    assert groups[0][0] == "head" and len(groups) == len(info.stages) + 1
    head = {id(p) for p in model.get_submodule(info.head).parameters()}
    assert groups[0][2] == head
    for (_, _, params), stage in zip(groups[1:], reversed(info.stages)):  # stage -1 is the last backbone stage
        assert params == {id(p) for n, p in model.named_parameters() if n in stage}
    every = [i for _, _, params in groups for i in params]
    assert len(every) == len(set(every)) == sum(1 for _ in model.parameters())
    assert seen["probe"] == [("head", 0.003, head)]  # the probe trains the head alone, at its own rate
    started = next(e for e in events if isinstance(e, ev.StageStarted) and e.stage == "finetune")
    assert started.lr_groups == tuple((name, lr) for name, lr, _ in groups)
    assert [b.lr for b in events if isinstance(b, ev.BatchEnded) and b.stage == "finetune"][0] == pytest.approx(0.01)


def test_layer_decay_must_be_a_fraction() -> None:
    with pytest.raises(ConfigError, match=r"--layer-decay must be in \(0, 1\]"):
        RunConfig(layer_decay=1.5).validate()
    with pytest.raises(ConfigError, match="--patience must not be negative"):
        RunConfig(patience=-1).validate()


def test_extraction_reports_progress_before_the_first_epoch(folder: Path, tmp_path: Path) -> None:
    events = list(train(config(folder, tmp_path / "runs", mode="linear-probe"), emit_interval=0.0))
    names = [type(e).__name__ for e in events]
    first_epoch = names.index("EpochStarted")
    extraction = [e for e in events[:first_epoch] if isinstance(e, ev.ExtractionProgressed)]
    assert {e.split for e in extraction} == {"train", "val"}
    train_progress = [e.done for e in extraction if e.split == "train"]
    assert train_progress[0] == 0 and train_progress[-1] == extraction[0].total == 33  # 36 minus 3 held out
    assert train_progress == sorted(train_progress)
    assert not any(isinstance(e, ev.ExtractionProgressed) for e in events[first_epoch:])
    assert "extract" in ev.event_name(extraction[0])


def test_a_stop_during_extraction_ends_the_run_cleanly(folder: Path, tmp_path: Path) -> None:
    stop = threading.Event()
    events = []
    for event in train(config(folder, tmp_path / "runs", mode="linear-probe"), stop=stop):
        events.append(event)
        if isinstance(event, ev.ExtractionProgressed) and event.done > 0:
            stop.set()
    assert isinstance(events[-1], ev.RunStopped) and events[-1].reason == "stop requested"
    assert not any(isinstance(e, ev.EpochStarted) for e in events)
    run_dir = Path(events[-1].run_dir)
    assert json.loads((run_dir / "status.json").read_text())["status"] == "stopped"
    assert not (run_dir / "model.safetensors").exists()
    assert [r.status for r in list_runs(tmp_path / "runs")] == ["stopped"]  # the run folder stays readable
