"""The mistakes gallery and its feedback into the data (issue 14).

``tlwork mistakes`` lists the highest-loss images of a scored split by file; ``tlwork run
--exclude FILE`` and ``tlwork check-data --exclude FILE`` leave the listed files out. The
CLI runs as a real subprocess where its output is the interface; runs train the tiny timm
ResNet on generated images.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tinydata import REPO_ROOT, FinishedRun
from typer.testing import CliRunner

from core.config import RunConfig
from core.data.datasets import load_splits, sample_paths
from core.data.exclude import read_exclude, read_marks, write_marks
from core.events import EvaluationEnded, MistakesFound
from core.inference.evaluate import evaluate
from core.inference.mistakes import find_mistakes
from tui.cli import app


def tlwork(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m tui.cli ARGS`` in a subprocess, importing this checkout."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "tui.cli", *args], capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                          timeout=300)


def test_mistakes_json_lists_ten_existing_files_in_their_true_class_folder_by_falling_loss(finished_run: FinishedRun) -> None:
    folder = finished_run.config.dataset.removeprefix("imagefolder:")
    result = tlwork("mistakes", str(finished_run.run_dir), "--dataset", f"imagefolder:{folder}", "--top", "10",
                    "--device", "cpu", "--json")
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)
    assert len(entries) == 10
    losses = [e["loss"] for e in entries]
    assert losses == sorted(losses, reverse=True)
    for e in entries:
        path = Path(e["path"])
        assert path.is_file() and path.parent.name == e["true"]
        assert e["top"][0]["label"] == e["pred"] and e["top"][0]["prob"] == pytest.approx(e["prob"])
        assert path.parent.parent.name == "test"  # the dataset's test split is what is scored


def test_a_confusion_cell_lists_exactly_its_images(finished_run: FinishedRun) -> None:
    ended = [e for e in evaluate(str(finished_run.run_dir), device="cpu") if isinstance(e, EvaluationEnded)][-1]
    names = ended.class_names
    for t, row in enumerate(ended.confusion):
        for p, count in enumerate(row):
            found = [e for e in find_mistakes(str(finished_run.run_dir), true=names[t].upper(), pred=names[p], top=100,
                                              device="cpu") if isinstance(e, MistakesFound)][-1]
            assert found.matched == count == len(found.mistakes)
            assert all(m.true == names[t] and m.pred == names[p] for m in found.mistakes)


def test_an_unknown_class_or_a_zero_top_is_a_one_line_usage_error(finished_run: FinishedRun) -> None:
    result = tlwork("mistakes", str(finished_run.run_dir), "--true", "zebra", "--device", "cpu")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("tlwork: error: --true 'zebra' is not one of the classes: ")
    result = tlwork("mistakes", str(finished_run.run_dir), "--top", "0", "--device", "cpu")
    assert result.returncode == 2 and "--top must be at least 1" in result.stderr


def test_mark_writes_the_listed_paths_to_an_exclusion_file(finished_run: FinishedRun, tmp_path: Path) -> None:
    marks = tmp_path / "marks.txt"
    result = CliRunner().invoke(app, ["mistakes", str(finished_run.run_dir), "--top", "3", "--device", "cpu", "--json",
                                      "--mark", str(marks)])
    assert result.exit_code == 0, result.output
    listed = {e["path"] for e in json.loads(result.stdout)}
    assert read_marks(marks) == {str(Path(p).resolve()) for p in listed} and len(listed) == 3


def _three_training_images(tiny_folder: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    images = sorted(str(p) for p in (tiny_folder / "train").rglob("*.png"))[:3]
    file = tmp_path / "exclude.txt"
    # A comment, a blank line and a relative path: all as a person would write the file.
    rel = os.path.relpath(images[2])
    file.write_text(f"# mislabelled\n{images[0]}\n\n{images[1]}\n{rel}\n")
    return file, images


def test_exclude_trains_and_validates_on_three_images_fewer(tiny_folder: Path, tmp_path: Path) -> None:
    file, images = _three_training_images(tiny_folder, tmp_path)
    common = ["run", "--mode", "linear-probe", "--backbone", "timm:test_resnet", "--weights", "none", "--dataset",
              f"imagefolder:{tiny_folder}", "--image-size", "32", "--batch-size", "16", "--device", "cpu", "--workers", "0",
              "--val-split", "0.1", "--epochs", "1", "--runs-dir", str(tmp_path / "runs"), "--json"]
    records = {}
    for name, extra in (("all", []), ("fewer", ["--exclude", str(file)])):
        result = CliRunner().invoke(app, [*common, "--name", name, *extra])
        assert result.exit_code == 0, result.output
        records[name] = [json.loads(line) for line in result.stdout.splitlines()]
    started = {k: next(r for r in v if r["event"] == "run_started") for k, v in records.items()}
    before, after = (started[k]["train_size"] + started[k]["val_size"] for k in ("all", "fewer"))
    assert after == before - 3
    logged = [r["message"] for r in records["fewer"] if r["event"] == "message_logged"]
    assert any("left out 3 listed image(s)" in line for line in logged), logged
    config = RunConfig.from_json((tmp_path / "runs" / "fewer" / "config.json").read_text())
    assert config.exclude == str(file.resolve())
    assert all(Path(p).is_file() for p in images)  # nothing moved or deleted
    splits = load_splits(f"imagefolder:{tiny_folder}", val_split=0.1, exclude=read_exclude(file))
    used = {str(Path(p).resolve()) for p in (sample_paths(splits.train) or []) + (sample_paths(splits.val) or [])}
    assert used.isdisjoint(str(Path(p).resolve()) for p in images)


def test_check_data_reads_the_same_exclusion_file(tiny_folder: Path, tmp_path: Path) -> None:
    file, _ = _three_training_images(tiny_folder, tmp_path)
    reports: dict[str, Any] = {}
    for name, extra in (("all", []), ("fewer", ["--exclude", str(file)])):
        result = tlwork("check-data", f"imagefolder:{tiny_folder}", "--json", *extra)
        assert result.returncode == 0, result.stderr
        reports[name] = json.loads(result.stdout)
    train = {k: next(s for s in r["splits"] if s["name"] == "train") for k, r in reports.items()}
    assert sum(train["fewer"]["class_counts"].values()) == sum(train["all"]["class_counts"].values()) - 3
    assert reports["fewer"]["excluded"] == 3


@pytest.mark.parametrize("command", ["run", "check-data"])
def test_a_missing_exclusion_file_is_a_one_line_usage_error(command: str, tiny_folder: Path, tmp_path: Path) -> None:
    dataset = f"imagefolder:{tiny_folder}"
    args = ["run", "--dataset", dataset, "--runs-dir", str(tmp_path)] if command == "run" else ["check-data", dataset]
    result = tlwork(*args, "--exclude", str(tmp_path / "nope.txt"))
    assert result.returncode == 2
    assert "--exclude" in result.stderr and "no such file" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_write_marks_keeps_each_path_once_sorted_and_read_back(tmp_path: Path) -> None:
    file = write_marks(tmp_path / "sub" / "marks.txt", ["b.jpg", "a.jpg", "./b.jpg"])
    assert file.read_text().splitlines() == [str(Path("a.jpg").resolve()), str(Path("b.jpg").resolve())]
    assert read_marks(tmp_path / "absent.txt") == set()


def test_a_training_only_folder_is_scored_whole_by_its_class_folders(finished_run: FinishedRun, tmp_path: Path) -> None:
    from tinydata import make_image_folder

    folder = make_image_folder(tmp_path / "only-train", layout="train-only", train=4)
    result = tlwork("mistakes", str(finished_run.run_dir), "--dataset", f"imagefolder:{folder}", "--top", "10",
                    "--device", "cpu", "--json")
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)
    assert len(entries) == 10
    assert all(Path(e["path"]).parent.name == e["true"] and Path(e["path"]).parent.parent.name == "train" for e in entries)
