"""The learning-rate range test (issue 14): ``tlwork lr-find`` and ``core.training.lrfind``.

Real tiny models on generated images: the curve, the suggestion, that the model and the RNGs
are as they were afterwards, that no run directory is written, and both rates of
probe-then-finetune. The check on ../shared (skipped when it is absent) trains two real
5-epoch probes: at the suggestion and at the notebook's 1e-3.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from tinydata import REPO_ROOT, TINY_BACKBONE

from core import events as ev
from core.errors import ConfigError
from core.models.build import build_model
from core.training.lrfind import lr_find, suggest


def tlwork(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "tui.cli", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=900)


def tiny_args(folder: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["lr-find", "--backbone", TINY_BACKBONE, "--weights", "none", "--dataset", f"imagefolder:{folder}", "--image-size",
            "32", "--batch-size", "8", "--device", "cpu", "--workers", "0", "--val-split", "0", "--runs-dir",
            str(tmp_path / "runs"), *extra]


def test_probe_lr_find_json_has_a_curve_a_suggestion_and_leaves_no_run_directory(tiny_folder: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    result = tlwork(*tiny_args(tiny_folder, tmp_path, "--mode", "linear-probe", "--steps", "40", "--json"), cwd=work)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    (stage,) = out["stages"]
    curve = stage["curve"]
    assert stage["stage"] == "probe" and 20 <= len(curve) <= 40
    lrs = [p["lr"] for p in curve]
    assert lrs[0] == pytest.approx(1e-7)
    ratios = {round(b / a, 6) for a, b in zip(lrs, lrs[1:])}
    assert len(ratios) == 1 and ratios.pop() > 1  # exponential growth
    assert lrs[0] <= out["suggested_lr"] <= lrs[-1] and out["flags"] == {"lr": out["suggested_lr"]}
    assert out["rule"] in out["reason"]
    assert not (tmp_path / "runs").exists() and list(work.iterdir()) == []


def test_plain_output_plots_the_curve_and_gives_the_flag_to_use(tiny_folder: Path, tmp_path: Path) -> None:
    result = tlwork(*tiny_args(tiny_folder, tmp_path, "--mode", "linear-probe", "--steps", "40"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any("probe: loss against learning rate" in line for line in lines)
    assert any("●" in line for line in lines)  # the suggestion's marker on the plot
    said = next(line for line in lines if line.startswith("probe: suggested lr "))
    assert lines[-1] == f"use it: tlwork run ... --lr {said.split()[3]}"


def test_the_model_and_every_rng_are_as_they_were(tiny_config: Any) -> None:
    built: list[tuple[torch.nn.Module, dict[str, torch.Tensor]]] = []

    def build_fn(*args: Any, **kwargs: Any) -> Any:
        model, info = build_model(*args, **kwargs)
        built.append((model, copy.deepcopy(model.state_dict())))
        return model, info

    torch.manual_seed(123)
    random.seed(5)
    before = (torch.get_rng_state(), random.getstate())
    events = list(lr_find(tiny_config(mode="finetune"), steps=20, build_fn=build_fn))
    assert isinstance(events[-1], ev.LrFound) and events[-1].stage == "finetune"
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    (model, initial), = built
    after = model.state_dict()
    assert after.keys() == initial.keys() and all(torch.equal(after[k], v) for k, v in initial.items())


def test_probe_then_finetune_suggests_both_rates_after_a_short_probe(tiny_config: Any) -> None:
    events = list(lr_find(tiny_config(mode="probe-then-finetune", probe_epochs=1), steps=20))
    found = [e for e in events if isinstance(e, ev.LrFound)]
    assert [(f.stage, f.mode) for f in found] == [("probe", "linear-probe"), ("finetune", "finetune")]
    probe_at = events.index(found[0])
    logged = [e for e in events[probe_at:] if isinstance(e, ev.MessageLogged)]
    assert logged and "trained the head" in logged[0].message
    # The fine-tuning test starts from the trained head: its first loss is below the random head's.
    assert found[1].losses[0] < found[0].losses[0]


def test_the_suggestion_lies_inside_the_descent_not_on_the_flat_start_or_the_blow_up() -> None:
    lrs = [1e-7 * 10 ** (8 * i / 99) for i in range(100)]
    # Flat (with noise) up to 1e-4, falling to a minimum at 1e-1, then blowing up.
    losses = [2.3 + 0.002 * math.sin(7 * i) if lr < 1e-4 else 2.3 - 0.5 * math.log10(lr / 1e-4) if lr < 1e-1 else
              0.8 + 3 * math.log10(lr / 1e-1) for i, lr in enumerate(lrs)]
    s = suggest(lrs, losses)
    assert 1e-4 < s.lr < 1e-1
    with pytest.raises(ConfigError, match="diverged"):
        suggest(lrs[:2], losses[:2])


@pytest.mark.parametrize("args, fragment", [(["--steps", "5"], "--steps must be at least 20"),
                                            (["--start-lr", "1", "--end-lr", "0.1"], "--start-lr must be above 0 and below --end-lr"),
                                            (["--lr", "0"], "--lr must be greater than 0")])
def test_bad_options_are_one_line_usage_errors(args: list[str], fragment: str, tiny_folder: Path, tmp_path: Path) -> None:
    result = tlwork(*tiny_args(tiny_folder, tmp_path, *args), cwd=tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("tlwork: error: ")]
    assert len(errors) == 1 and fragment in errors[0] and "Traceback" not in result.stderr


SHARED_RUN = ["--dataset", "imagefolder:{shared}/data/cifar10-jpg", "--backbone", "timm:tf_efficientnet_lite0", "--weights",
              "{shared}/models/tf_efficientnet_lite0.in1k.safetensors", "--image-size", "64", "--mode", "linear-probe",
              "--normalize", "backbone", "--device", "cpu"]


@pytest.mark.shared
@pytest.mark.slow
def test_on_real_data_a_probe_at_the_suggestion_scores_no_worse_than_the_notebooks_rate(shared_dir: Path, tmp_path: Path) -> None:
    common = [a.format(shared=shared_dir) for a in SHARED_RUN]
    found = tlwork("lr-find", *common, "--json", cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    out = json.loads(found.stdout)
    assert 1e-6 <= out["suggested_lr"] <= 10 and len(out["stages"][0]["curve"]) >= 20
    assert list(tmp_path.iterdir()) == []  # no run directory
    scores = {}
    for lr in (out["suggested_lr"], 1e-3):
        result = tlwork("run", *common, "--epochs", "5", "--lr", f"{lr:.6g}", "--runs-dir", str(tmp_path / "runs"), "--json",
                        cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        finished = [json.loads(line) for line in result.stdout.splitlines()][-1]
        scores[lr] = finished["val_accuracy"]
    assert scores[out["suggested_lr"]] >= scores[1e-3] - 0.02, scores
