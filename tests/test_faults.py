"""Faults during a run: signals, non-finite losses, out-of-memory, a full disk, broken images.

Each fault is produced for real where it can be (signals to a ``tlwork`` subprocess, a
file-size limit with RLIMIT_FSIZE, a diverging learning rate, corrupt files on disk) and
injected where a CPU cannot produce it (a CUDA out-of-memory error, a NaN at one chosen
batch) through a forward hook on the real tiny model the engine builds.
"""

from __future__ import annotations

import itertools
import json
import os
import resource
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from safetensors.torch import load_file
from test_checkdata import corrupt_folder
from tinydata import TINY_BACKBONE, make_image_folder
from typer.testing import CliRunner

from core import events as ev
from core.config import RunConfig
from core.errors import DataError, NonFiniteLoss, OutOfMemory
from core.runs.checkpoint import read_checkpoint
from core.runs.resumption import prepare
from core.runs.store import read_metrics
from core.training.train import train
from tui.cli import app

PY = [sys.executable, "-c", "from tui.cli import main; main()"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("faults-data"))


def config_for(folder: Path, runs: Path, **overrides: Any) -> RunConfig:
    """Fine-tune, five batches of 8 an epoch, two epochs."""
    values: dict[str, Any] = dict(
        mode="finetune", backbone=TINY_BACKBONE, weights="none", dataset=f"imagefolder:{folder}", image_size=32,
        batch_size=8, epochs=2, device="cpu", workers=0, runs_dir=str(runs), seed=5,
        val_split=0.0,  # validate on the 12 test images; all 36 train (see conftest.tiny_config)
    )  # fmt: skip
    values.update(overrides)
    return RunConfig(**values)


def hook_model(monkeypatch: pytest.MonkeyPatch, hook: Callable[[torch.nn.Module, Any, Any], Any], pre: bool = False) -> None:
    """Attach ``hook`` to the model the engine builds (the injection point for faults a CPU lacks)."""
    import core.training.setup

    real = core.training.setup.build_model

    def build(*args: Any, **kwargs: Any) -> Any:
        model, info = real(*args, **kwargs)
        (model.register_forward_pre_hook if pre else model.register_forward_hook)(hook)
        return model, info

    monkeypatch.setattr(core.training.setup, "build_model", build)


def nan_at(monkeypatch: pytest.MonkeyPatch, calls: set[int]) -> None:
    """Make the model's output NaN on these training forward passes (1-based)."""
    seen = {"n": 0}

    def hook(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> Any:
        if module.training:
            seen["n"] += 1
            if seen["n"] in calls:
                return output * float("nan")
        return None

    hook_model(monkeypatch, hook)


def collect(events: Any) -> tuple[list[Any], BaseException | None]:
    out: list[Any] = []
    try:
        for event in events:
            out.append(event)
    except Exception as exc:
        return out, exc
    return out, None


def test_a_nan_loss_stops_the_run_naming_epoch_and_batch(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nan_at(monkeypatch, {7})  # epoch 2, batch 2
    events, error = collect(train(config_for(folder, tmp_path, name="r")))
    assert isinstance(error, NonFiniteLoss)
    message = str(error)
    assert "loss is nan at epoch 2, batch 2 (step 7)" in message
    assert "checkpoint-last.json (epoch 1, step 5) is kept" in message and "--skip-nonfinite" in message
    logged = [e for e in events if isinstance(e, ev.MessageLogged) and e.level == "error"]
    assert [e.message for e in logged] == [message]
    run_dir = tmp_path / "r"
    meta, tensors = read_checkpoint(run_dir / "checkpoint-last.json")
    assert (meta["position"]["epoch"], meta["position"]["step"], meta["position"]["epoch_done"]) == (1, 5, True)
    assert all(torch.isfinite(t).all() for k, t in tensors.items() if k.startswith("model.") and t.is_floating_point())
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and "NonFiniteLoss" in status["error"]
    assert any(m.get("level") == "error" and "epoch 2, batch 2" in m.get("message", "") for m in read_metrics(run_dir))


def test_a_nan_never_reaches_a_checkpoint(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Checkpoints every batch: the one due right after the NaN batch must not be written.
    nan_at(monkeypatch, {7})
    events, error = collect(train(config_for(folder, tmp_path, name="r", checkpoint_every=1)))
    assert isinstance(error, NonFiniteLoss) and "epoch 2, batch 2 (step 7)" in str(error)
    meta, tensors = read_checkpoint(tmp_path / "r" / "checkpoint-last.json")
    assert meta["position"]["step"] == 6
    assert all(torch.isfinite(t).all() for k, t in tensors.items() if k.startswith("model.") and t.is_floating_point())


def test_skip_nonfinite_skips_such_batches_up_to_the_limit(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nan_at(monkeypatch, {3, 8})
    events = list(train(config_for(folder, tmp_path, name="skip", skip_nonfinite=True)))
    assert isinstance(events[-1], ev.RunFinished)
    warnings = [e.message for e in events if isinstance(e, ev.MessageLogged) and "not finite" in e.message]
    assert warnings == [
        "epoch 1, batch 3: loss is not finite; batch skipped (1 of at most 10)",
        "epoch 2, batch 3: loss is not finite; batch skipped (2 of at most 10)",
    ]
    assert all(all(x == x for x in e.losses) for e in events if isinstance(e, ev.BatchEnded))  # no NaN reported
    final = load_file(str(tmp_path / "skip" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in final.values() if t.is_floating_point())

    monkeypatch.undo()
    nan_at(monkeypatch, {3, 8})
    events, error = collect(train(config_for(folder, tmp_path, name="limit", skip_nonfinite=True, max_nonfinite=1)))
    assert isinstance(error, NonFiniteLoss)
    assert "2 batches had a non-finite loss, more than --max-nonfinite 1 (the last at epoch 2, batch 3)" in str(error)


def test_a_diverging_run_exits_6_from_the_cli(folder: Path, tmp_path: Path) -> None:
    # No injection: a learning rate of 1e8 makes the real loss NaN within a few batches.
    result = CliRunner().invoke(app, [
        "run", "--mode", "finetune", "--backbone", TINY_BACKBONE, "--weights", "none", "--dataset", f"imagefolder:{folder}",
        "--image-size", "32", "--batch-size", "8", "--epochs", "1", "--lr", "1e8", "--device", "cpu",
        "--runs-dir", str(tmp_path),
    ])  # fmt: skip
    assert result.exit_code == 6, result.output
    assert "tlwork: error: loss is nan at epoch 1, batch" in result.output
    assert "no checkpoint was saved before it; lower --lr, or pass --skip-nonfinite" in result.output


def out_of_memory_above(monkeypatch: pytest.MonkeyPatch, limit: int) -> list[int]:
    """Raise CUDA's out-of-memory error for any forward pass over ``limit`` images; returns the sizes seen."""
    sizes: list[int] = []

    def hook(module: torch.nn.Module, args: Any) -> None:
        sizes.append(args[0].shape[0])
        if args[0].shape[0] > limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {args[0].shape[0]} MiB (injected)")

    hook_model(monkeypatch, hook, pre=True)
    return sizes


def test_out_of_memory_names_the_batch_size_and_suggests_one(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out_of_memory_above(monkeypatch, 24)
    events, error = collect(train(config_for(folder, tmp_path, batch_size=32)))
    assert isinstance(error, OutOfMemory) and error.batch_size == 32
    assert str(error) == "cpu ran out of memory at batch size 32 (epoch 1, batch 1); try --batch-size 16 or --batch-size auto"
    result = CliRunner().invoke(app, [
        "run", "--mode", "finetune", "--backbone", TINY_BACKBONE, "--weights", "none", "--dataset", f"imagefolder:{folder}",
        "--image-size", "32", "--batch-size", "32", "--device", "cpu", "--runs-dir", str(tmp_path / "cli"),
    ])  # fmt: skip
    assert result.exit_code == 7
    assert "ran out of memory at batch size 32" in result.output


def test_batch_size_auto_finds_the_largest_that_fits_and_leaves_no_trace(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = out_of_memory_above(monkeypatch, 24)
    events = list(train(config_for(folder, tmp_path, batch_size="auto", name="auto")))
    assert isinstance(events[-1], ev.RunFinished)
    notes = [e.message for e in events if isinstance(e, ev.MessageLogged) and "--batch-size auto" in e.message]
    assert notes == [
        "--batch-size auto: tried 2 fits, 4 fits, 8 fits, 16 fits, 32 out of memory, 24 fits, 28 out of memory, "
        "26 out of memory, 25 out of memory; using 24"
    ]
    # Lightning's order: double until out of memory, then binary search.
    assert [size for size, _ in itertools.groupby(sizes)][:9] == [2, 4, 8, 16, 32, 24, 28, 26, 25]
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["batch_size"] == 24
    assert events[0].config["batch_size"] == 24
    # The trials trained nothing that stayed: same weights as a run told 24 from the start.
    monkeypatch.undo()
    given = list(train(config_for(folder, tmp_path, batch_size=24, name="given")))
    a, b = load_file(str(tmp_path / "auto" / "model.safetensors")), load_file(str(tmp_path / "given" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert given[-1].val_accuracy == events[-1].val_accuracy


def test_cli_batch_size_auto(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out_of_memory_above(monkeypatch, 12)
    base = [
        "run", "--mode", "finetune", "--backbone", TINY_BACKBONE, "--weights", "none", "--dataset", f"imagefolder:{folder}",
        "--image-size", "32", "--epochs", "1", "--device", "cpu", "--runs-dir", str(tmp_path), "--json",
    ]  # fmt: skip
    result = CliRunner().invoke(app, [*base, "--batch-size", "auto"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert lines[0]["config"]["batch_size"] == 12 and "--batch-size 12" in lines[0]["command_line"]
    assert any(line.get("message", "").endswith("using 12") for line in lines)
    bad = CliRunner().invoke(app, [*base, "--batch-size", "lots"])
    assert bad.exit_code == 2 and "--batch-size must be a whole number or auto (got 'lots')" in bad.output


def test_batch_size_auto_when_nothing_fits(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out_of_memory_above(monkeypatch, 0)
    _, error = collect(train(config_for(folder, tmp_path, batch_size="auto")))
    assert isinstance(error, OutOfMemory) and "at batch size 1 while searching for --batch-size auto" in str(error)
    assert not (tmp_path / "runs").exists() and not any(tmp_path.iterdir())


def _cli_args(folder: Path, runs: Path, *extra: str) -> list[str]:
    return [
        *PY, "run", "--mode", "finetune", "--backbone", TINY_BACKBONE, "--weights", "none", "--dataset", f"imagefolder:{folder}",
        "--image-size", "32", "--batch-size", "2", "--epochs", "30", "--device", "cpu", "--runs-dir", str(runs), "--json", *extra,
    ]  # fmt: skip


def _until_batches(proc: subprocess.Popen[str], count: int = 1) -> list[dict[str, Any]]:
    """Read --json events until ``count`` batch_ended lines have arrived."""
    assert proc.stdout is not None
    lines: list[dict[str, Any]] = []
    for line in proc.stdout:
        lines.append(json.loads(line))
        if sum(1 for x in lines if x["event"] == "batch_ended") >= count:
            break
    return lines


def _no_temporary_files(run_dir: Path) -> None:
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def _fill_pipe(fd: int) -> None:
    """Write newlines into the pipe behind ``fd`` until it holds no more: its next write blocks."""
    os.set_blocking(fd, False)
    try:
        while True:
            os.write(fd, b"\n" * 65536)
    except BlockingIOError:
        pass


def test_a_second_ctrl_c_exits_130_at_once_and_leaves_no_broken_file(folder: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    # The first stop cannot complete before the second Ctrl+C: the run's --json stdout is a
    # pipe this test fills to the brim, so the run blocks at its next event line (a stop's
    # checkpoint_saved and run_stopped lines included) until the pipe is drained, after the
    # second signal. No race on batch sizes.
    read_end, write_end = os.pipe()
    args = _cli_args(folder, runs, "--checkpoint-every", "1", "--name", "r")
    proc = subprocess.Popen(args, stdout=write_end, stderr=subprocess.PIPE, text=True)
    stdout = os.fdopen(read_end, "r")
    drain = threading.Thread(target=stdout.read, daemon=True)  # started once both signals are sent
    try:
        lines: list[dict[str, Any]] = []
        for line in stdout:
            lines.append(json.loads(line))
            if sum(1 for x in lines if x["event"] == "batch_ended") >= 3:
                break
        _fill_pipe(write_end)
        proc.send_signal(signal.SIGINT)
        assert proc.stderr is not None
        first = ""
        while "SIGINT" not in first:  # the first SIGINT has been handled once its line is out
            first = proc.stderr.readline()
            assert first, "the run ended before handling SIGINT"
        assert proc.poll() is None, "the first stop completed although stdout was full"
        proc.send_signal(signal.SIGINT)
        os.close(write_end)
        write_end = -1
        drain.start()
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        if write_end != -1:
            os.close(write_end)
        if drain.is_alive():
            drain.join(timeout=60)
        stdout.close()
    assert "SIGINT: stopping after this batch" in first and "Ctrl+C again to quit at once" in first
    assert proc.returncode == 130, err
    assert "tlwork: interrupted" in err
    run_dir = runs / "r"
    _no_temporary_files(run_dir)
    meta, _ = read_checkpoint(run_dir / "checkpoint-last.json")  # whatever was last written loads
    assert meta["position"]["step"] >= 1
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    assert prepare("r", runs)[1].position.step == meta["position"]["step"]  # and it can be resumed


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP])
def test_terminal_signals_to_the_process_group_stop_cleanly_with_loader_workers(
    folder: Path, tmp_path: Path, signum: int
) -> None:
    # Ctrl+C and a dropped SSH session signal the whole process group, loader workers included.
    runs = tmp_path / "runs"
    proc = subprocess.Popen(
        _cli_args(folder, runs, "--workers", "1", "--augment", "trivialaugment", "--name", "r"),  # the streaming loader
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        _until_batches(proc, 2)
        os.killpg(proc.pid, signum)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 4, err
    assert json.loads(out.splitlines()[-1])["event"] == "run_stopped"
    assert f"{signal.Signals(signum).name}: stopping after this batch" in err
    read_checkpoint(runs / "r" / "checkpoint-last.json")


def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return apply


def test_sigterm_then_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(folder: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    # SIGTERM: the batch finishes, a checkpoint is written, exit 4.
    proc = subprocess.Popen(_cli_args(folder, runs, "--epochs", "3", "--name", "r"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _until_batches(proc, 2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 4, err
    stopped = json.loads(out.splitlines()[-1])
    assert stopped["event"] == "run_stopped" and "SIGTERM: stopping after this batch" in err
    assert read_checkpoint(Path(stopped["checkpoint"]))[0]["position"]["step"] == stopped["step"]
    checkpoint = runs / "r" / "checkpoint-last.safetensors"
    before = checkpoint.read_bytes()
    # A file-size limit well under a checkpoint (about 3 MB) but over the logs: the next write fails.
    resumed = subprocess.run(
        [*PY, "run", "--resume", "r", "--runs-dir", str(runs), "--checkpoint-every", "1"],
        capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size(len(before) // 3),
    )  # fmt: skip
    assert resumed.returncode == 8, resumed.stderr
    message = resumed.stderr.strip().splitlines()[-1]
    assert message.startswith(f"tlwork: error: could not write {checkpoint}: File too large;")
    assert "the previous checkpoint" in message and "is intact" in message and "--resume" in message
    assert checkpoint.read_bytes() == before
    read_checkpoint(checkpoint)
    _no_temporary_files(runs / "r")
    assert json.loads((runs / "r" / "status.json").read_text())["status"] == "failed"


def test_training_leaves_out_broken_images_and_names_them(tmp_path: Path) -> None:
    root, bad = corrupt_folder(tmp_path / "data")
    events = list(train(config_for(root, tmp_path / "runs", epochs=1, name="r")))
    assert isinstance(events[-1], ev.RunFinished)
    assert events[0].train_size == 3 * 8 + 4  # odd modes converted and used, broken files left out
    assert events[0].val_size == 3 * 3
    lines = [e.message for e in events if isinstance(e, ev.MessageLogged) and e.level == "warning"]
    for name in bad:
        assert any(str(root / name) in line for line in lines), name
    assert any(line.startswith("5 unreadable image(s) left out") for line in lines)
    logged = [m["message"] for m in read_metrics(tmp_path / "runs" / "r") if m["event"] == "message_logged"]
    assert all(line in logged for line in lines)


def test_strict_fails_on_the_first_broken_image_before_writing_anything(tmp_path: Path) -> None:
    root, _ = corrupt_folder(tmp_path / "data")
    with pytest.raises(DataError, match=r"train/checks/bomb.png: refused as a possible decompression bomb.*--strict"):
        next(train(config_for(root, tmp_path / "runs", strict=True)))
    assert not (tmp_path / "runs").exists()
    result = CliRunner().invoke(app, [
        "run", "--mode", "finetune", "--backbone", TINY_BACKBONE, "--weights", "none", "--dataset", f"imagefolder:{root}",
        "--image-size", "32", "--device", "cpu", "--runs-dir", str(tmp_path / "runs"), "--strict",
    ])  # fmt: skip
    assert result.exit_code == 3 and "decompression bomb" in result.output


def test_an_image_that_breaks_during_training_is_skipped_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Corruption inside a large folder's JPEG passes the cheap check; the streaming loader then skips it.
    from PIL import Image

    root = make_image_folder(tmp_path / "data", train=8)
    photo = Image.open(root / "train/circle/000.png").convert("RGB").resize((64, 64))
    photo.save(root / "train/circle/photo.jpg", quality=90)
    blob = bytearray((root / "train/circle/photo.jpg").read_bytes())
    blob[len(blob) // 2 : len(blob) // 2 + 64] = b"\xff" * 64  # the end-of-image marker stays
    (root / "train/circle/photo.jpg").write_bytes(bytes(blob))
    monkeypatch.setattr("core.data.images.FULL_CHECK_LIMIT", 0)
    events = list(train(config_for(root, tmp_path / "runs", epochs=2, data="stream", batch_size=5)))
    assert isinstance(events[-1], ev.RunFinished)
    assert events[0].train_size == 25
    lines = [e.message for e in events if isinstance(e, ev.MessageLogged) and e.level == "warning"]
    path = str(root / "train/circle/photo.jpg")
    assert sum(line.startswith(f"skipped unreadable image {path}: ") for line in lines) == 1  # named once
    assert [line.split(";")[0] for line in lines if line.startswith("epoch ")] == [
        "epoch 1: skipped 1 unreadable image(s)", "epoch 2: skipped 1 unreadable image(s)",
    ]  # fmt: skip
    assert sum(e.images_per_sec > 0 for e in events if isinstance(e, ev.EpochEnded)) == 2
    with pytest.raises(DataError, match="photo.jpg.*--strict"):
        list(train(config_for(root, tmp_path / "runs", epochs=1, data="stream", strict=True)))


def test_a_full_disk_before_the_first_checkpoint_is_exit_8_not_a_traceback(folder: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    started = subprocess.run(
        _cli_args(folder, runs, "--epochs", "1", "--name", "r"),
        capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size(16),
    )  # fmt: skip
    assert started.returncode == 8, started.stderr
    message = started.stderr.strip().splitlines()[-1]
    assert message.startswith(f"tlwork: error: could not write {runs / 'r'}") and "no checkpoint was saved yet" in message
    assert "Traceback" not in started.stderr
