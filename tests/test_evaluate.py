"""Evaluation as a user meets it: published test-set layouts, and the generators' stop contract.

``tlwork eval RUN --dataset imagefolder:DIR`` must score every image when DIR holds only
``test/`` or only ``val/`` (the layout most published test sets come in), and a folder of
class folders alone. A stopped ``evaluate`` or ``classify`` ends with its own stop event,
and no event reaches the consumer while the engine is in inference mode.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from tinydata import TINY_CLASSES, FinishedRun, make_image_folder
from typer.testing import CliRunner

from core import events as ev
from core.errors import DataError
from core.inference.classify import classify
from core.inference.evaluate import evaluate
from tui.cli import app


def published_test_set(tmp_path: Path, split: str) -> Path:
    """DIR/<split>/<class>/... with 3 images per class and nothing else: a published test set."""
    made = make_image_folder(tmp_path / "made", train=1, test=3, layout="train-test", seed=5)
    root = tmp_path / f"only-{split}"
    root.mkdir()
    shutil.copytree(made / "test", root / split)
    return root


def count_images(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("split", ["test", "val"])
def test_eval_scores_every_image_of_a_folder_holding_only_a_test_split(
    finished_run: FinishedRun, tmp_path: Path, split: str
) -> None:
    root = published_test_set(tmp_path, split)
    result = CliRunner().invoke(app, ["eval", str(finished_run.run_dir), "--dataset", f"imagefolder:{root}", "--json",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["split"] == split
    assert record["images"] == count_images(root / split) == 3 * len(TINY_CLASSES)
    assert sum(map(sum, record["confusion"])) == record["images"]


def test_eval_scores_a_folder_of_class_folders_whole(finished_run: FinishedRun, tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "flat", train=2, layout="flat", seed=3)
    result = CliRunner().invoke(app, ["eval", str(finished_run.run_dir), "--dataset", f"imagefolder:{root}", "--json",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert (record["split"], record["images"]) == ("all", count_images(root))


def test_training_on_a_test_set_alone_says_where_training_images_go(finished_run: FinishedRun, tmp_path: Path) -> None:
    from core.data.datasets import load_splits

    root = published_test_set(tmp_path, "val")
    with pytest.raises(DataError, match=r"no training images, only a val/ folder; put the training class folders in .*/train/"):
        load_splits(f"imagefolder:{root}")


def held_until_first(events: Any, first: type, stop: threading.Event) -> list[Any]:
    """Every event, setting ``stop`` at the first ``first``; also checks none arrives in inference mode."""
    seen = []
    for event in events:
        assert not torch.is_inference_mode_enabled(), f"{type(event).__name__} arrived in inference mode"
        seen.append(event)
        if isinstance(event, first):
            stop.set()
    return seen


def test_a_stopped_evaluation_ends_with_evaluation_stopped(finished_run: FinishedRun) -> None:
    stop = threading.Event()
    # Stop once it has started: a tiny evaluation reports progress only at its end (every 0.1 s).
    events = held_until_first(evaluate(str(finished_run.run_dir), batch_size=2, device="cpu", stop=stop),
                              ev.EvaluationStarted, stop)
    assert [type(e) for e in events] == [ev.EvaluationStarted, ev.EvaluationStopped]
    started, stopped = events
    assert started.batches > 2
    assert (stopped.batch, stopped.batches, stopped.model) == (0, started.batches, started.model)
    assert not any(isinstance(e, ev.EvaluationEnded) for e in events)


def test_an_evaluation_run_to_the_end_never_yields_in_inference_mode(finished_run: FinishedRun) -> None:
    events = held_until_first(evaluate(str(finished_run.run_dir), batch_size=2, device="cpu"), type(None), threading.Event())
    assert isinstance(events[-1], ev.EvaluationEnded)


def test_a_stopped_classification_ends_with_classification_stopped(finished_run: FinishedRun, tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "imgs", train=4, layout="flat")
    stop = threading.Event()
    events = held_until_first(classify(str(finished_run.run_dir), [str(folder)], batch_size=2, device="cpu", stop=stop),
                              ev.ImageClassified, stop)
    last = events[-1]
    assert isinstance(last, ev.ClassificationStopped)
    assert 1 <= last.classified < count_images(folder)
    assert last.classified == sum(isinstance(e, ev.ImageClassified) for e in events)
    assert not any(isinstance(e, ev.ClassificationEnded) for e in events)
