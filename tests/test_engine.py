"""The training engine as a front end sees it: the event stream, stages, per-batch losses,
cooperative stops, the run directory it leaves behind, and repeatable seeded CPU runs.

Everything trains a real tiny timm ResNet on generated images (see conftest.py).
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

import pytest
import torch
from safetensors.torch import load_file
from tinydata import FinishedRun

from core import events as ev
from core.config import RunConfig
from core.models.build import build_model, count_params
from core.runs.checkpoint import load_model_state, read_checkpoint
from core.runs.store import read_metrics
from core.training.train import train


def shape(events: Iterable[Any]) -> list[str]:
    """Event type names, runs of BatchEnded collapsed to one ``BatchEnded...``.

    ``MessageLogged`` lines (which data path a stage takes, fallbacks) may come anywhere and
    are left out.
    """
    out: list[str] = []
    for event in events:
        name = type(event).__name__
        if name == "MessageLogged":
            continue
        if name in ("BatchEnded", "ExtractionProgressed"):
            name += "..."
            if out and out[-1] == name:
                continue
        out.append(name)
    return out


EPOCH = ["EpochStarted", "BatchEnded...", "EpochEnded", "CheckpointSaved"]


def test_a_run_yields_the_documented_event_sequence(finished_run: FinishedRun) -> None:
    assert shape(finished_run.events) == [
        "RunStarted", "StageStarted", *EPOCH, *EPOCH, "CheckpointSaved", "RunFinished",
    ]  # fmt: skip
    saved = [e for e in finished_run.events if isinstance(e, ev.CheckpointSaved)]
    assert [s.kind for s in saved] == ["epoch", "epoch", "bundle"]
    started = finished_run.events[0]
    assert isinstance(started, ev.RunStarted)
    assert (started.train_size, started.val_size) == (36, 12)
    assert started.class_names == ("checks", "circle", "stripes")  # folder names, sorted
    assert started.total_epochs == 2 and started.total_steps == 2 * 3


def test_batch_events_report_every_batch_loss(finished_run: FinishedRun) -> None:
    epoch_batches = {e.epoch: e.batches for e in finished_run.events if isinstance(e, ev.EpochStarted)}
    batch_events = [e for e in finished_run.events if isinstance(e, ev.BatchEnded)]
    for epoch, batches in epoch_batches.items():
        mine = [e for e in batch_events if e.epoch == epoch]
        assert sum(len(e.losses) for e in mine) == batches == 3
        assert mine[-1].batch == batches
    assert [e.step for e in batch_events] == sorted({e.step for e in batch_events})
    assert batch_events[-1].step == batch_events[-1].total_steps
    assert all(math.isfinite(x) and x > 0 for e in batch_events for x in e.losses)
    assert all(e.lr > 0 and e.images_per_sec > 0 for e in batch_events)


def test_every_batch_can_be_its_own_event(
    tiny_config: Callable[..., RunConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    # With no coalescing window each batch is reported alone, in order.
    batches = [e for e in train(tiny_config(batch_size=8), emit_interval=0.0) if isinstance(e, ev.BatchEnded)]
    assert [(e.batch, len(e.losses)) for e in batches] == [(i, 1) for i in range(1, 6)]
    assert [e.step for e in batches] == [1, 2, 3, 4, 5]


def test_reported_learning_rate_is_the_one_each_batch_trained_at(
    tiny_config: Callable[..., RunConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    # StepLR(1, 0.1): epoch 1 trains at 1e-2, epoch 2 at 1e-3. The last batch of epoch 1 and
    # the epoch's summary must say 1e-2, not the rate the schedule has already moved on to.
    config = tiny_config(epochs=2, lr=1e-2, scheduler="step", step_size=1, step_gamma=0.1)
    events = list(train(config, emit_interval=0.0))
    by_epoch = {(e.epoch, e.batch): round(e.lr, 12) for e in events if isinstance(e, ev.BatchEnded)}
    assert by_epoch == {(1, 1): 1e-2, (1, 2): 1e-2, (1, 3): 1e-2, (2, 1): 1e-3, (2, 2): 1e-3, (2, 3): 1e-3}
    assert [round(e.lr, 12) for e in events if isinstance(e, ev.EpochEnded)] == [1e-2, 1e-3]


def test_run_directory_records_the_run(finished_run: FinishedRun) -> None:
    run_dir = finished_run.run_dir
    assert run_dir == finished_run.runs_dir / "tiny"
    assert RunConfig.from_json((run_dir / "config.json").read_text()) == finished_run.config.resolved()
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
    logged = [m["event"] for m in read_metrics(run_dir)]
    expected = [ev.event_name(e) for e in finished_run.events if not isinstance(e, ev.BatchEnded)]
    assert logged == expected
    for name in ("model.json", "model.safetensors", "checkpoint-last.json", "checkpoint-last.safetensors"):
        assert (run_dir / name).is_file(), name
    finished = finished_run.finished
    epochs = [e for e in finished_run.events if isinstance(e, ev.EpochEnded)]
    assert finished.val_accuracy == epochs[-1].val_accuracy
    assert finished.best_val_accuracy == max(e.val_accuracy for e in epochs)


def test_probe_then_finetune_runs_two_stages(tiny_config: Callable[..., RunConfig]) -> None:
    events = list(train(tiny_config(mode="probe-then-finetune", probe_epochs=1, epochs=1, probe_lr=1e-3, lr=5e-4, scheduler="none")))
    # The probe extracts its features first (a train and a val pass), then each stage trains.
    assert shape(events) == [
        "RunStarted", "ExtractionProgressed...", "StageStarted", *EPOCH, "StageStarted", *EPOCH, "CheckpointSaved", "RunFinished",
    ]  # fmt: skip
    probe, finetune = [e for e in events if isinstance(e, ev.StageStarted)]
    model, info = build_model("timm:test_resnet", 3, "none")
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith(info.head + "."))
    assert (probe.stage, probe.first_epoch, probe.lr, probe.trainable_params) == ("probe", 1, 1e-3, head)
    assert (finetune.stage, finetune.first_epoch, finetune.lr, finetune.trainable_params, finetune.bn) == (
        "finetune", 2, 5e-4, count_params(model), "train",  # --bn auto with random weights
    )  # fmt: skip
    started = events[0]
    assert isinstance(started, ev.RunStarted) and started.trainable_params == head
    stages = [(e.epoch, e.stage) for e in events if isinstance(e, ev.EpochEnded)]
    assert stages == [(1, "probe"), (2, "finetune")]
    lrs: dict[str, set[float]] = {}
    for e in events:
        if isinstance(e, ev.BatchEnded):
            lrs.setdefault(e.stage, set()).add(round(e.lr, 12))
    assert lrs == {"probe": {1e-3}, "finetune": {5e-4}}


def test_stop_saves_a_loadable_checkpoint_and_returns(
    tiny_config: Callable[..., RunConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    stop = threading.Event()
    events: list[Any] = []
    config = tiny_config(epochs=2, batch_size=8)
    for event in train(config, stop=stop, emit_interval=0.0):
        events.append(event)
        if isinstance(event, ev.BatchEnded):
            stop.set()
    assert shape(events) == ["RunStarted", "StageStarted", "EpochStarted", "BatchEnded...", "CheckpointSaved", "RunStopped"]
    saved, stopped = events[-2:]
    assert saved.kind == "stop" and stopped.checkpoint == saved.path
    assert (stopped.epoch, stopped.step) == (1, 1)
    run_dir = Path(stopped.run_dir)
    assert json.loads((run_dir / "status.json").read_text())["status"] == "stopped"
    assert not (run_dir / "model.json").exists()

    meta, tensors = read_checkpoint(Path(saved.path))
    assert meta["position"]["step"] == 1 and meta["position"]["batch"] == 1
    model, _ = build_model(config.backbone, 3, "none")
    load_model_state(model, tensors)
    state = model.state_dict()
    assert set(state) == {k[len("model."):] for k in tensors if k.startswith("model.")}
    for name, value in state.items():
        assert torch.equal(value, tensors[f"model.{name}"]), name


def test_stop_after_epoch_ends_at_the_epoch_boundary(tiny_config: Callable[..., RunConfig]) -> None:
    after_epoch = threading.Event()
    after_epoch.set()
    events = list(train(tiny_config(epochs=3), stop_after_epoch=after_epoch))
    assert shape(events) == ["RunStarted", "StageStarted", *EPOCH, "RunStopped"]
    stopped = events[-1]
    assert (stopped.epoch, stopped.step, stopped.reason) == (1, 3, "stopped after epoch")
    assert json.loads((Path(stopped.run_dir) / "status.json").read_text())["status"] == "stopped"


def test_stop_after_the_last_epoch_still_finishes(tiny_config: Callable[..., RunConfig]) -> None:
    after_epoch = threading.Event()
    after_epoch.set()
    assert isinstance(list(train(tiny_config(epochs=1), stop_after_epoch=after_epoch))[-1], ev.RunFinished)


def test_abandoning_the_generator_marks_the_run_interrupted(tiny_config: Callable[..., RunConfig]) -> None:
    events = train(tiny_config(epochs=2))
    started = next(events)
    assert isinstance(started, ev.RunStarted)
    assert json.loads((Path(started.run_dir) / "status.json").read_text())["status"] == "running"
    events.close()  # a front end that goes away without a stop request
    assert json.loads((Path(started.run_dir) / "status.json").read_text())["status"] == "interrupted"


def test_a_seed_makes_cpu_runs_repeatable(tiny_config: Callable[..., RunConfig]) -> None:
    def weights(**overrides: Any) -> dict[str, torch.Tensor]:
        finished = list(train(tiny_config(augment="trivialaugment", **overrides)))[-1]
        return load_file(str(Path(finished.run_dir) / "model.safetensors"))

    first, second, other = weights(seed=3), weights(seed=3), weights(seed=4)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_two_runs_with_one_name_get_two_directories(tiny_config: Callable[..., RunConfig]) -> None:
    first = list(train(tiny_config(name="same")))[-1]
    second = list(train(tiny_config(name="same")))[-1]
    assert Path(first.run_dir).name == "same" and Path(second.run_dir).name == "same-2"


def test_a_bad_config_raises_before_writing_anything(tiny_config: Callable[..., RunConfig]) -> None:
    from core.errors import ConfigError

    config = tiny_config(lr=-1.0)
    with pytest.raises(ConfigError, match="--lr"):
        next(train(config))
    assert not Path(config.runs_dir).exists()
