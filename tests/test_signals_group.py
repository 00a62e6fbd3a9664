"""Signals to the whole process group while the streaming loader's worker processes run.

Job schedulers and ``timeout`` send SIGTERM to every process of the group, and so does
``kill -TERM -PGID``: the loader's workers must leave the stop to the main process, which
finishes the batch, saves a checkpoint and exits 4, and none of them may outlive the run.
A SIGKILLed main process must still take its workers with it (torch's worker watchdog).
Each test runs a real ``tlwork run`` in its own session and reads its ``--json`` events.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tinydata import TINY_BACKBONE, make_image_folder
from typer.testing import CliRunner

from core import events as ev
from core.config import RunConfig
from core.runs.checkpoint import read_checkpoint
from core.training.train import train
from tui.cli import app

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")

PY = [sys.executable, "-c", "from tui.cli import main; main()"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("signals-data"))


def _args(folder: Path, runs: Path) -> list[str]:
    """Three epochs of 18 batches through two loader workers: long enough to be stopped."""
    return [
        *PY, "run", "--mode", "finetune", "--backbone", TINY_BACKBONE, "--weights", "none", "--dataset", f"imagefolder:{folder}",
        "--image-size", "32", "--batch-size", "2", "--epochs", "3", "--augment", "crop-flip", "--seed", "4", "--device", "cpu",
        "--data", "stream", "--workers", "2", "--runs-dir", str(runs), "--name", "r", "--json",
    ]  # fmt: skip


def _group(pgid: int) -> dict[int, str]:
    """Live processes of process group ``pgid``: pid -> state (zombies left out)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it ended while we looked
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if int(fields[2]) == pgid and fields[0] != "Z":
            found[int(entry.name)] = fields[0]
    return found


def _kill_group(pgid: int) -> None:
    """Leave nothing behind, whatever the test found."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _start(folder: Path, runs: Path) -> tuple[subprocess.Popen[str], dict[int, str]]:
    """Start the run in a new session; return it once a batch has trained, with its loader workers."""
    proc = subprocess.Popen(_args(folder, runs), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if json.loads(line)["event"] == "batch_ended":
                break
        else:
            pytest.fail(f"the run ended before its first batch: {proc.communicate()[1]}")
        workers = {pid: state for pid, state in _group(proc.pid).items() if pid != proc.pid}
        assert len(workers) >= 2, f"expected two loader workers beside the main process, found {workers}"
    except BaseException:
        _kill_group(proc.pid)
        raise
    return proc, workers


def _gone(pgid: int, within: float) -> dict[int, str]:
    """Wait up to ``within`` seconds for group ``pgid`` to empty; returns what is left."""
    deadline = time.monotonic() + within
    while (left := _group(pgid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_sigterm_to_the_process_group_stops_cleanly_and_the_run_resumes(folder: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    proc, _ = _start(folder, runs)
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # what a scheduler, `timeout` or `kill -TERM -PGID` does
        out, err = proc.communicate(timeout=120)
        left = _gone(proc.pid, 10)
    finally:
        _kill_group(proc.pid)
    assert proc.returncode == 4, err
    assert "DataLoader worker" not in err and "SIGTERM: stopping after this batch" in err
    stopped = json.loads(out.splitlines()[-1])
    assert stopped["event"] == "run_stopped"
    assert read_checkpoint(Path(stopped["checkpoint"]))[0]["position"]["step"] == stopped["step"]
    assert not left, f"loader workers {sorted(left)} outlived the run"
    # The stopped run resumes to the end, where a run never stopped ends.
    resumed = CliRunner().invoke(app, ["run", "--resume", "r", "--runs-dir", str(runs), "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.output.splitlines()[-1])["event"] == "run_finished"
    whole = list(train(RunConfig(
        mode="finetune", backbone=TINY_BACKBONE, weights="none", dataset=f"imagefolder:{folder}", image_size=32, batch_size=2,
        epochs=3, augment="crop-flip", seed=4, device="cpu", data="stream", workers=0, runs_dir=str(runs), name="whole",
    )))  # fmt: skip
    assert isinstance(whole[-1], ev.RunFinished)
    a, b = load_file(str(runs / "whole" / "model.safetensors")), load_file(str(runs / "r" / "model.safetensors"))
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_loader_workers_end_with_a_sigkilled_main_process(folder: Path, tmp_path: Path) -> None:
    proc, workers = _start(folder, tmp_path / "runs")
    try:
        proc.send_signal(signal.SIGKILL)  # the main process alone: nobody signals the workers
        proc.wait(timeout=60)
        left = _gone(proc.pid, 30)  # torch's watchdog looks every 5 s
    finally:
        _kill_group(proc.pid)
    assert not left, f"loader workers {sorted(left)} (of {sorted(workers)}) outlived their SIGKILLed parent"


def test_a_stuck_workers_own_loader_still_ends_it(tmp_path: Path) -> None:
    # The DataLoader terminate()s a worker that does not leave when asked: that SIGTERM, from
    # the parent, must still end it, while one from anyone else is ignored.
    # No sleeps: a foreign SIGTERM counts as ignored once the worker has taken it off its pending
    # set (its sigwaitinfo thread saw it) and then takes a second one too, which a worker that
    # exited at the first could not; after shutdown the script joins the workers it terminated.
    script = tmp_path / "stuck.py"
    script.write_text(
        "import os, signal, subprocess, sys, time\n"
        "import torch\n"
        "from torch.utils.data import DataLoader, Dataset\n"
        "from core.data.safedata import worker_options\n"
        "class Stuck(Dataset):\n"
        "    def __len__(self): return 64\n"
        "    def __getitem__(self, i):\n"
        "        if i >= 4: time.sleep(60)\n"
        "        return torch.zeros(1)\n"
        "def dead(pid):\n"
        "    try:\n"
        "        return open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[0] in 'ZX'\n"
        "    except FileNotFoundError:\n"
        "        return True\n"
        "def pending_term(pid):\n"
        "    fields = dict(line.split(':', 1) for line in open(f'/proc/{pid}/status') if ':' in line)\n"
        "    bit = 1 << (signal.SIGTERM - 1)\n"
        "    return bool((int(fields['SigPnd'], 16) | int(fields['ShdPnd'], 16)) & bit)\n"
        "def taken_or_dead(pid):\n"
        "    deadline = time.monotonic() + 30\n"
        "    while time.monotonic() < deadline:\n"
        "        try:\n"
        "            if dead(pid) or not pending_term(pid): return\n"
        "        except FileNotFoundError:\n"
        "            return\n"
        "        time.sleep(0.001)\n"
        "    sys.exit(f'SIGTERM still pending in {pid} after 30 s')\n"
        "if __name__ == '__main__':\n"
        "    it = iter(DataLoader(Stuck(), batch_size=2, num_workers=2, **worker_options(2)))\n"
        "    next(it)\n"
        "    workers = list(it._workers)\n"
        "    pids = [w.pid for w in workers]\n"
        "    for _ in range(2):\n"
        "        subprocess.run(['kill', '-TERM', *map(str, pids)], check=True)  # another sender\n"
        "        for pid in pids: taken_or_dead(pid)\n"
        "    print('alive', not any(dead(p) for p in pids), flush=True)\n"
        "    del it  # shutdown: join, then terminate() the stuck workers\n"
        "    for w in workers: w.join(timeout=30)\n"
        "    print('left', [p for p in pids if not dead(p)], flush=True)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["alive True", "left []"], done.stdout + done.stderr
