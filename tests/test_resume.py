"""Checkpoints and exact resume: a stopped or SIGKILLed run, resumed, ends where an
uninterrupted one does, bit for bit on the CPU, in the right stage with its schedule.

Runs train the real tiny timm ResNet on generated images (see conftest.py), in-process
through the engine and in subprocesses through the ``tlwork`` command line.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from tinydata import TINY_BACKBONE, make_image_folder, sigkill_after_checkpoint
from typer.testing import CliRunner

from core import events as ev
from core.config import RunConfig
from core.errors import ConfigError
from core.runs.checkpoint import Position, read_checkpoint, restore_rng, save_checkpoint
from core.runs.lock import RunLock
from core.runs.resumption import prepare
from core.training.resume import resume as resume_run
from core.training.train import train as run_training
from tui.cli import app

PY = [sys.executable, "-c", "from tui.cli import main; main()"]

KILL_SEED = 20240611
"""Seeds the SIGKILL tests' choice of kill step: the same step on every run, so a red run
reproduces; their assertion messages name the seed and the step. Change it to try other steps."""


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three classes of 12 generated training images (and 4 test images) each."""
    return make_image_folder(tmp_path_factory.mktemp("resume-data"))


def train(config: RunConfig, **kwargs: Any) -> Any:
    """The engine with one BatchEnded per batch, so a test can stop at an exact step."""
    return run_training(config, emit_interval=0.0, **kwargs)


def resume(ref: str, **kwargs: Any) -> Any:
    """``core.training.resume.resume``, reporting every batch too."""
    return resume_run(ref, emit_interval=0.0, **kwargs)


def config_for(folder: Path, runs: Path, **overrides: Any) -> RunConfig:
    """Probe one epoch, fine-tune two, five batches an epoch: every resume case in 15 steps."""
    values: dict[str, Any] = dict(
        mode="probe-then-finetune", backbone=TINY_BACKBONE, weights="none", dataset=f"imagefolder:{folder}",
        image_size=32, batch_size=8, probe_epochs=1, epochs=2, scheduler="step", step_size=1, step_gamma=0.5,
        device="cpu", workers=0, runs_dir=str(runs), seed=7,
        val_split=0.0,  # validate on the 12 test images; all 36 train (see conftest.tiny_config)
    )  # fmt: skip
    values.update(overrides)
    return RunConfig(**values)


def weights(run_dir: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(run_dir) / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], where: str = "") -> None:
    """Bit-identical tensors under the same names; ``where`` goes into the failure message."""
    assert a.keys() == b.keys(), where
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]} {where}".rstrip()


def lrs_by_step(events: list[Any]) -> dict[int, float]:
    return {e.step: e.lr for e in events if isinstance(e, ev.BatchEnded)}


def stop_at(config: RunConfig, step: int) -> list[Any]:
    """Train until the BatchEnded of ``step``, then stop (a checkpoint of that batch is saved)."""
    stop = threading.Event()
    events = []
    for event in train(config, stop=stop):
        events.append(event)
        if isinstance(event, ev.BatchEnded) and event.step >= step:
            stop.set()
    return events


@pytest.mark.parametrize(
    ("augment", "data", "steps"),
    [
        ("crop-flip", "auto", (2, 5, 8, 15)),  # probe mid-epoch, probe end, finetune mid-epoch, the last batch
        ("trivialaugment", "stream", (7,)),  # per-image RNG augmentation through the DataLoader
    ],
)
def test_a_stopped_run_resumes_to_the_same_weights(
    folder: Path, tmp_path: Path, augment: str, data: str, steps: tuple[int, ...]
) -> None:
    runs = tmp_path / "runs"
    whole = list(train(config_for(folder, runs, name="whole", augment=augment, data=data)))
    assert isinstance(whole[-1], ev.RunFinished)
    whole_epochs = [e for e in whole if isinstance(e, ev.EpochEnded)]
    for step in steps:
        stopped = stop_at(config_for(folder, runs, name=f"at-{step}", augment=augment, data=data), step)
        assert isinstance(stopped[-1], ev.RunStopped) and stopped[-1].step == step
        resumed = list(resume(f"at-{step}", runs_dir=runs))
        assert isinstance(resumed[-1], ev.RunFinished), resumed[-1]
        started = resumed[0]
        assert isinstance(started, ev.RunStarted) and started.start_step == step
        # The right stage first (the probe until its epoch is validated), then every remaining batch at the same lr.
        stages = [e.stage for e in resumed if isinstance(e, ev.StageStarted)]
        assert stages == (["probe", "finetune"] if step <= 5 else ["finetune"])
        assert lrs_by_step(resumed) == {s: lr for s, lr in lrs_by_step(whole).items() if s > step}
        # The resumed epoch reports the same figures as the uninterrupted one (its totals were saved).
        again = [e for e in resumed if isinstance(e, ev.EpochEnded)]
        for a, b in zip(again, whole_epochs[-len(again):]):
            assert (a.epoch, a.train_loss, a.train_accuracy, a.val_loss, a.val_accuracy) == (
                b.epoch, b.train_loss, b.train_accuracy, b.val_loss, b.val_accuracy,
            )  # fmt: skip
        assert_same_weights(weights(whole[-1].run_dir), weights(resumed[-1].run_dir))
        assert json.loads((runs / f"at-{step}" / "status.json").read_text())["resumed"] == 1


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(folder: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    args = [
        "run", "--mode", "probe-then-finetune", "--backbone", TINY_BACKBONE, "--weights", "none",
        "--dataset", f"imagefolder:{folder}", "--image-size", "32", "--batch-size", "3", "--probe-epochs", "1",
        "--epochs", "2", "--augment", "crop-flip", "--scheduler", "cosine", "--seed", "11", "--device", "cpu",
        "--workers", "0", "--runs-dir", str(runs), "--checkpoint-every", "3",
    ]  # fmt: skip
    # The uninterrupted run, in this process (same settings, same single torch thread as the CLI's).
    whole = list(train(RunConfig(
        mode="probe-then-finetune", backbone=TINY_BACKBONE, weights="none", dataset=f"imagefolder:{folder}", image_size=32,
        batch_size=3, probe_epochs=1, epochs=2, augment="crop-flip", scheduler="cosine", seed=11, device="cpu", workers=0,
        runs_dir=str(runs), checkpoint_every=3, name="whole",
    )))  # fmt: skip
    assert isinstance(whole[-1], ev.RunFinished)
    # Kill at a random batch: once a mid-epoch checkpoint at or past a random step exists.
    target = random.Random(KILL_SEED).randint(4, 30)
    where = f"kill step {target}, from KILL_SEED {KILL_SEED}"
    killed = subprocess.Popen([*PY, *args, "--name", "killed"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sigkill_after_checkpoint(killed, runs / "killed" / "checkpoint-last.json", target, where)
    assert json.loads((runs / "killed" / "status.json").read_text())["status"] == "running", where  # nobody wrote "stopped"
    from core.runs.store import list_runs

    assert {r.name: r.status for r in list_runs(runs)}["killed"] == "killed", where  # its lock died with it
    resumed = CliRunner().invoke(app, ["run", "--resume", "killed", "--runs-dir", str(runs), "--json"])
    assert resumed.exit_code == 0, f"{where}\n{resumed.output}"
    lines = [json.loads(line) for line in resumed.output.splitlines() if line.startswith("{")]
    assert lines[0]["event"] == "run_started" and lines[0]["start_step"] >= target, where
    assert lines[-1]["event"] == "run_finished", where
    assert_same_weights(weights(runs / "whole"), weights(runs / "killed"), where)


def test_checkpoint_every_n_batches_and_the_best_checkpoint(folder: Path, tmp_path: Path) -> None:
    events = list(train(config_for(folder, tmp_path, mode="finetune", epochs=3, checkpoint_every=2)))
    saved = [e for e in events if isinstance(e, ev.CheckpointSaved)]
    batch_steps = [e.step for e in saved if e.kind == "batch"]
    assert batch_steps == [s for s in range(2, 16, 2) if s % 5 != 0]  # every 2nd step, not at an epoch's end
    assert [e.step for e in saved if e.kind == "epoch"] == [5, 10, 15]
    run_dir = Path(events[-1].run_dir)
    epochs = [e for e in events if isinstance(e, ev.EpochEnded)]
    best_epoch = max(epochs, key=lambda e: (e.val_accuracy, -e.epoch)).epoch
    meta, _ = read_checkpoint(run_dir / "checkpoint-best.json")
    assert meta["position"]["epoch"] == best_epoch and meta["position"]["epoch_done"]
    assert meta["val"]["top1"] == max(e.val_accuracy for e in epochs)


def test_a_run_whose_final_model_could_not_be_written_resumes_to_write_it(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from core.errors import CheckpointWriteFailed

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    runs = tmp_path / "runs"
    monkeypatch.setattr("core.training.session.save_bundle", disk_full)
    events: list[Any] = []
    with pytest.raises(CheckpointWriteFailed, match=r"No space left on device.*checkpoint-last.json \(epoch 1, step 5\) is intact.*--resume .*runs/r`"):
        for event in train(config_for(folder, runs, mode="finetune", epochs=1, name="r")):
            events.append(event)
    assert json.loads((runs / "r" / "status.json").read_text())["status"] == "failed"
    monkeypatch.undo()
    again = list(resume("r", runs_dir=runs))
    assert [type(e).__name__ for e in again if not isinstance(e, ev.MessageLogged)] == [
        "RunStarted", "CheckpointSaved", "RunFinished",
    ]  # fmt: skip
    last_epoch = [e for e in events if isinstance(e, ev.EpochEnded)][-1]
    assert again[-1].val_accuracy == last_epoch.val_accuracy
    assert (runs / "r" / "model.json").is_file()


def test_resume_refuses_what_it_cannot_continue(folder: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    list(train(config_for(folder, runs, mode="finetune", epochs=1, name="done")))
    with pytest.raises(ConfigError, match="already finished"):
        prepare("done", runs)
    with pytest.raises(ConfigError, match="no such run"):
        prepare("nothing-here", runs)
    for hostile in ("../done", "..", "runs/../../etc"):
        with pytest.raises(ConfigError):
            prepare(hostile, runs / "sub")
    # A run that stopped before its first checkpoint.
    empty = runs / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(config_for(folder, runs, name="empty").to_json())
    with pytest.raises(ConfigError, match="no checkpoint yet"):
        prepare("empty", runs)
    # A run another process is training: its lock is held.
    stopped = stop_at(config_for(folder, runs, mode="finetune", epochs=2, name="busy"), 1)
    assert isinstance(stopped[-1], ev.RunStopped)
    lock = RunLock(runs / "busy")
    assert lock.acquire()
    try:
        with pytest.raises(ConfigError, match="still running"):
            prepare("busy", runs)
    finally:
        lock.release()
    assert prepare("busy", runs)[1].position.step == 1


def _sleep_after(started: Any) -> None:
    started.set()
    time.sleep(30)


def test_the_run_lock_ends_with_its_process_not_with_forked_workers(tmp_path: Path) -> None:
    import multiprocessing

    from core.runs.lock import is_running

    lock = RunLock(tmp_path)
    assert lock.acquire() and is_running(tmp_path)
    fork = multiprocessing.get_context("fork")
    started = fork.Event()
    worker = fork.Process(target=_sleep_after, args=(started,))
    worker.start()  # a DataLoader worker, say, forked while the lock is held
    try:
        assert started.wait(60)
        lock.release()  # the training process ends...
        assert not is_running(tmp_path)  # ...and the run can be resumed at once
        assert RunLock(tmp_path).acquire()
    finally:
        worker.kill()
        worker.join()


def test_resume_checks_the_saved_config_and_checkpoint(folder: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    stop_at(config_for(folder, runs, mode="finetune", epochs=2, name="r"), 2)
    config_path = runs / "r" / "config.json"
    good = json.loads(config_path.read_text())
    hostile = [
        ({"epochs": "2; rm -rf ~"}, "epochs has a bad value"),
        ({"name": "../../outside"}, "not a valid run name"),
        ({"dataset": "imagefolder:/no/such/folder"}, "does not exist"),
        ({"lr": float("nan")}, "bad value"),
        ({"amp": "yes"}, "bad value"),
    ]
    for change, message in hostile:
        config_path.write_text(json.dumps({**good, **change}))
        with pytest.raises(ConfigError, match=message):
            prepare("r", runs)
    config_path.write_text("[1, 2")
    with pytest.raises(ConfigError, match="unreadable"):
        prepare("r", runs)
    config_path.write_text(json.dumps(good))
    # A weights path in the config is never read on resume (the checkpoint holds the weights).
    config_path.write_text(json.dumps({**good, "weights": str(tmp_path / "gone.safetensors")}))
    assert prepare("r", runs)[0].weights.endswith("gone.safetensors")
    # One flipped byte in the tensors is caught by the checkpoint's hash.
    tensors = runs / "r" / "checkpoint-last.safetensors"
    blob = bytearray(tensors.read_bytes())
    blob[-10] ^= 0xFF
    tensors.write_bytes(bytes(blob))
    with pytest.raises(ConfigError, match="do not match their hash"):
        prepare("r", runs)


def test_resume_on_changed_data_is_refused(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data")
    runs = tmp_path / "runs"
    stop_at(config_for(data, runs, mode="finetune", epochs=2, name="r"), 2)
    make_image_folder(tmp_path / "data", train=13)  # one more image per class
    with pytest.raises(ConfigError, match="the data changed"):
        list(resume("r", runs_dir=runs))


def test_cli_resume_takes_the_run_settings_and_refuses_others(folder: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    stop_at(config_for(folder, runs, mode="finetune", epochs=2, name="r"), 3)
    runner = CliRunner()
    refused = runner.invoke(app, ["run", "--resume", "r", "--runs-dir", str(runs), "--lr", "0.1", "--epochs", "9"])
    assert refused.exit_code == 2
    assert "drop --epochs, --lr" in refused.output
    done = runner.invoke(app, ["run", "--resume", str(runs / "r"), "--checkpoint-every", "4", "--json"])
    assert done.exit_code == 0, done.output
    lines = [json.loads(line) for line in done.output.splitlines() if line.startswith("{")]
    assert lines[0]["event"] == "run_started" and lines[0]["start_step"] == 3
    assert lines[0]["config"]["checkpoint_every"] == 4 and lines[0]["config"]["epochs"] == 2
    assert [line["step"] for line in lines if line["event"] == "checkpoint_saved" and line["kind"] == "batch"] == [4, 8]
    again = runner.invoke(app, ["run", "--resume", "r", "--runs-dir", str(runs)])
    assert again.exit_code == 2 and "already finished" in again.output


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    stem = tmp_path / "checkpoint-last"
    save_checkpoint(stem, model, optimizer, None, Position(0, 1, 3, 3))
    before = stem.with_suffix(".safetensors").read_bytes()

    def crash(*args: Any) -> None:
        raise KeyboardInterrupt  # a second Ctrl+C (or a kill) in the middle of the write

    monkeypatch.setattr(os, "replace", crash)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(stem, model, optimizer, None, Position(0, 1, 4, 4))
    monkeypatch.undo()
    assert stem.with_suffix(".safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-last.json", "checkpoint-last.safetensors"]
    meta, tensors = read_checkpoint(stem)
    assert meta["position"]["step"] == 3
    # The readable .json beside it may lag (a crash between the two renames): the tensors file rules.
    save_checkpoint(stem, model, optimizer, None, Position(0, 1, 5, 5))
    stem.with_suffix(".json").write_text("{}")
    assert read_checkpoint(stem)[0]["position"]["step"] == 5


def test_a_checkpoint_restores_every_rng(tmp_path: Path) -> None:
    import numpy as np

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    save_checkpoint(tmp_path / "c", model, optimizer, None, Position(0, 1, 0, 0))
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)
    meta, tensors = read_checkpoint(tmp_path / "c.json")
    restore_rng(meta, tensors)
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


def test_a_checkpoint_is_one_safetensors_file_with_its_state_in_the_header(folder: Path, tmp_path: Path) -> None:
    stop_at(config_for(folder, tmp_path, mode="finetune", epochs=2, name="r"), 2)
    blob = (tmp_path / "r" / "checkpoint-last.safetensors").read_bytes()
    header_len = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + header_len])
    assert header["__metadata__"]["format"] == "tlwork-checkpoint"
    state = json.loads(header["__metadata__"]["tlwork"])
    assert {"position", "optimizer", "scheduler", "rng", "preprocessing", "class_names"} <= set(state)


def test_a_killed_auto_run_resumes_on_the_data_path_it_started_with(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # --data auto streams when the data exceeds the memory budget and holds it on the device
    # when it fits; with crop-flip the two paths draw different crops, so a resume that decided
    # again under a larger budget would end with other weights than the run it continues.
    runs = tmp_path / "runs"
    settings = dict(mode="finetune", augment="crop-flip", data="auto", checkpoint_every=1, epochs=2)
    monkeypatch.setenv("TLWORK_CACHE_MB", "0")  # nothing fits: auto streams
    whole = list(train(config_for(folder, runs, name="whole", **settings)))
    assert isinstance(whole[-1], ev.RunFinished)
    assert [e.message for e in whole if isinstance(e, ev.MessageLogged) and "data path" in e.message] == [
        "stage finetune: stream data path"
    ]
    args = [
        "run", "--mode", "finetune", "--backbone", TINY_BACKBONE, "--weights", "none", "--dataset", f"imagefolder:{folder}",
        "--image-size", "32", "--batch-size", "8", "--epochs", "2", "--augment", "crop-flip", "--scheduler", "step",
        "--step-size", "1", "--step-gamma", "0.5", "--seed", "7", "--val-split", "0", "--device", "cpu", "--workers", "0", "--data", "auto",
        "--checkpoint-every", "1", "--runs-dir", str(runs), "--name", "killed",
    ]  # fmt: skip
    target = random.Random(KILL_SEED).choice([2, 3, 4, 6, 7, 8, 9])  # mid-epoch steps of either epoch
    where = f"kill step {target}, from KILL_SEED {KILL_SEED}"
    killed = subprocess.Popen([*PY, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    sigkill_after_checkpoint(killed, runs / "killed" / "checkpoint-last.json", target)
    meta, _ = read_checkpoint(runs / "killed" / "checkpoint-last.json")
    assert meta["data_paths"] == {"train": "stream", "val": "stream"}
    monkeypatch.setenv("TLWORK_CACHE_MB", "4096")  # now everything fits: a fresh auto run would hold it on the device
    resumed = CliRunner().invoke(app, ["run", "--resume", "killed", "--runs-dir", str(runs), "--json"])
    assert resumed.exit_code == 0, f"{where}\n{resumed.output}"
    lines = [json.loads(line) for line in resumed.output.splitlines() if line.startswith("{")]
    assert lines[0]["start_step"] >= target and lines[-1]["event"] == "run_finished", where
    messages = [line["message"] for line in lines if line["event"] == "message_logged"]
    assert "stage finetune: stream data path" in messages
    assert any(m.startswith("--data auto: keeping the data paths this run started with (train stream") for m in messages)
    assert json.loads((runs / "killed" / "status.json").read_text())["data_paths"] == {"train": "stream", "val": "stream"}
    assert_same_weights(weights(runs / "whole"), weights(runs / "killed"), where)
    # The control: the same settings decided afresh under this budget take the other path.
    fresh = stop_at(config_for(folder, runs, name="fresh", **settings), 1)
    assert "stage finetune: device data path" in [e.message for e in fresh if isinstance(e, ev.MessageLogged)]


def _drop_data_paths(checkpoint: Path) -> None:
    """Rewrite a checkpoint as an older tlwork wrote it: no data_paths in its header."""
    from safetensors.torch import save

    meta, tensors = read_checkpoint(checkpoint)
    del meta["data_paths"]
    checkpoint.write_bytes(save(tensors, metadata={"format": "tlwork-checkpoint", "tlwork": json.dumps(meta)}))


def test_a_recorded_device_path_that_no_longer_fits_is_refused_not_switched(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    monkeypatch.setenv("TLWORK_CACHE_MB", "4096")
    stopped = stop_at(config_for(folder, runs, mode="finetune", epochs=2, data="auto", name="r"), 7)  # past a validation
    assert isinstance(stopped[-1], ev.RunStopped)
    checkpoint = runs / "r" / "checkpoint-last.safetensors"
    assert read_checkpoint(checkpoint)[0]["data_paths"] == {"train": "device", "val": "device"}
    assert json.loads((runs / "r" / "status.json").read_text())["data_paths"] == {"train": "device", "val": "device"}
    monkeypatch.setenv("TLWORK_CACHE_MB", "0")
    refused = CliRunner().invoke(app, ["run", "--resume", "r", "--runs-dir", str(runs)])
    assert refused.exit_code == 2, refused.output
    line = refused.output.strip().splitlines()[-1]
    assert "held its train images on cpu (108 KB)" in line and "the memory budget now allows 0 KB" in line  # 36 x 3x32x32
    assert "resume with more free memory (or a larger TLWORK_CACHE_MB), or start a new run with --data stream" in line
    assert json.loads((runs / "r" / "status.json").read_text())["status"] == "stopped"  # refused before it started
    # A checkpoint from before paths were recorded still resumes: auto decides again (streams here).
    _drop_data_paths(checkpoint)
    again = list(resume("r", runs_dir=runs))
    assert isinstance(again[-1], ev.RunFinished)
    messages = [e.message for e in again if isinstance(e, ev.MessageLogged)]
    assert "stage finetune: stream data path" in messages and not any("keeping the data paths" in m for m in messages)


@pytest.mark.parametrize(
    ("options", "steps"),
    [
        ({"bn": "frozen", "weights": "none"}, (7,)),  # fine-tuning with BatchNorm in inference mode
        ({"layer_decay": 0.5}, (8,)),  # one rate per stage group, restored with the optimiser
        # The probe is flat (its rate changes nothing), so --patience 1 ends it after its second epoch:
        # stop inside the probe's last epoch, at the probe's end (its checkpoint knows it ended) and in fine-tuning.
        ({"patience": 1, "probe_epochs": 3, "probe_lr": 1e-12}, (7, 10, 12)),
        # The best epoch so far and its checkpoint survive a resume (held-out validation: 27 train, 4 batches an epoch).
        ({"keep": "best", "lr": 0.2, "val_split": 0.25}, (6, 9)),
    ],
)
def test_resume_is_exact_with_the_recipe_options(folder: Path, tmp_path: Path, options: dict[str, Any], steps: tuple[int, ...]) -> None:
    runs = tmp_path / "runs"
    whole = list(train(config_for(folder, runs, name="whole", **options)))
    assert isinstance(whole[-1], ev.RunFinished)
    epochs = [(e.epoch, e.stage, e.val_accuracy) for e in whole if isinstance(e, ev.EpochEnded)]
    for step in steps:
        stopped = stop_at(config_for(folder, runs, name=f"at-{step}", **options), step)
        assert isinstance(stopped[-1], ev.RunStopped), stopped[-1]
        resumed = list(resume(f"at-{step}", runs_dir=runs))
        done = resumed[-1]
        assert isinstance(done, ev.RunFinished), done
        assert_same_weights(weights(runs / "whole"), weights(runs / f"at-{step}"), f"(stopped at step {step})")
        got = [(e.epoch, e.stage, e.val_accuracy) for e in stopped + resumed if isinstance(e, ev.EpochEnded)]
        assert got == epochs, f"stopped at step {step}"
        assert (done.kept_epoch, done.val_accuracy, done.reason) == (whole[-1].kept_epoch, whole[-1].val_accuracy, whole[-1].reason)
    if "patience" in options:
        assert [s for _, s, _ in epochs] == ["probe", "probe", "finetune", "finetune"]
