"""``--log tensorboard`` and ``--log mlflow``: what a user finds in TensorBoard and MLflow.

Real tiny runs on CPU through the engine and the CLI. TensorBoard's event files are read back
with TensorBoard's own ``EventAccumulator``; the MLflow run with ``mlflow.search_runs`` on a
real ``sqlite:///`` store. An unreachable tracking server (a closed port) must cost the run
nothing but a warning; a resumed run must log on into the same MLflow run and folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
from tinydata import REPO_ROOT
from typer.testing import CliRunner

from core import events as ev
from core.config import RunConfig
from core.runs.store import read_metrics, read_status
from core.training.resume import resume
from core.training.train import train
from tui.cli import app

pytest.importorskip("tensorboard", reason="the trackers extra is not installed: pip install -e '.[test]'")
pytest.importorskip("mlflow", reason="the trackers extra is not installed: pip install -e '.[test]'")

# After the skips above: these two are the trackers' own readers.
from mlflow import MlflowClient, search_runs
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

UNREACHABLE = "http://127.0.0.1:9"
"""The discard port: nothing listens there, so every connection is refused at once."""


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow puts a sqlite store's artifacts under ./mlruns: keep them out of the repository."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)


def tracked_config(tiny_config: Callable[..., RunConfig], tmp_path: Path, **overrides: Any) -> RunConfig:
    values: dict[str, Any] = {"epochs": 2, "log": ("tensorboard", "mlflow"), "mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                              "mlflow_experiment": "tlwork-tests"}
    values.update(overrides)
    return tiny_config(**values).resolved()


def scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return [(s.step, s.value) for s in events.Scalars(tag)]


def the_mlflow_run(uri: str) -> Any:
    """The one run in the tests' experiment, found as a user finds it (MLFLOW_TRACKING_URI is ``uri``)."""
    runs = search_runs(experiment_names=["tlwork-tests"], output_format="list")
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


@pytest.fixture
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # what search_runs reads when it takes no URI
    return uri


def test_a_run_logs_its_figures_to_tensorboard_and_mlflow(tiny_config: Callable[..., RunConfig], tmp_path: Path,
                                                         mlflow_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tracked_config(tiny_config, tmp_path, mlflow_uri=mlflow_uri)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the run must use --mlflow-uri, not the environment
    events = list(train(config, emit_interval=0.0))
    finished = events[-1]
    assert isinstance(finished, ev.RunFinished)
    assert [e for e in events if isinstance(e, ev.MessageLogged) and e.level == "warning"] == []
    run_dir = Path(finished.run_dir)
    epochs = [e for e in events if isinstance(e, ev.EpochEnded)]
    losses = [loss for e in events if isinstance(e, ev.BatchEnded) for loss in e.losses]

    board = run_dir / "tensorboard"
    assert scalars(board, "batch/loss") == [(i + 1, pytest.approx(loss)) for i, loss in enumerate(losses)]
    assert scalars(board, "finetune/val_accuracy") == [(e.epoch, pytest.approx(e.val_accuracy)) for e in epochs]
    assert scalars(board, "finetune/train_loss") == [(e.epoch, pytest.approx(e.train_loss)) for e in epochs]
    accumulator = EventAccumulator(str(board), size_guidance={"images": 0})
    accumulator.Reload()
    assert accumulator.Tags()["images"] == ["confusion_matrix"]
    assert accumulator.Images("confusion_matrix")[0].width > 50
    hparams = accumulator.PluginTagToContent("hparams")  # the HParams tab's experiment and session records
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    run = the_mlflow_run(mlflow_uri)
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    assert run.data.metrics["val_accuracy"] == pytest.approx(finished.val_accuracy)
    assert run.data.params["lr"] == json.dumps(config.lr) and run.data.params["backbone"] == config.backbone
    history = MlflowClient(mlflow_uri).get_metric_history(run.info.run_id, "finetune/val_accuracy")
    assert [(m.step, m.value) for m in history] == [(e.epoch, pytest.approx(e.val_accuracy)) for e in epochs]
    artifacts = [a.path for a in MlflowClient(mlflow_uri).list_artifacts(run.info.run_id, "bundle")]
    assert {"bundle/model.json", "bundle/model.safetensors", "bundle/config.json"} <= set(artifacts)
    assert json.loads((run_dir / "mlflow.json").read_text())["run_id"] == run.info.run_id
    # metrics.jsonl still ends the way every run's does.
    assert read_metrics(run_dir)[-1]["event"] == "run_finished"


def test_an_unreachable_mlflow_server_is_a_warning_and_the_run_finishes(
    tiny_config: Callable[..., RunConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    config = tracked_config(tiny_config, tmp_path, mlflow_uri=UNREACHABLE, mlflow_experiment=None)
    events = list(train(config, emit_interval=0.0))
    assert isinstance(events[-1], ev.RunFinished)
    warnings = [e.message for e in events if isinstance(e, ev.MessageLogged) and e.level == "warning"]
    assert len(warnings) == 1 and warnings[0].startswith("mlflow: ") and "127.0.0.1:9" in warnings[0], warnings
    run_dir = Path(events[-1].run_dir)
    records = read_metrics(run_dir)
    # The log is complete: both epochs, the warning, the end; and TensorBoard went on regardless.
    assert [r["epoch"] for r in records if r["event"] == "epoch_ended"] == [1, 2]
    assert warnings[0] in [r.get("message") for r in records]
    assert records[-1]["event"] == "run_finished" and read_status(run_dir)["status"] == "finished"
    assert [step for step, _ in scalars(run_dir / "tensorboard", "finetune/val_accuracy")] == [1, 2]


def test_a_resumed_run_logs_on_into_the_same_mlflow_run_and_tensorboard_folder(
    tiny_config: Callable[..., RunConfig], tmp_path: Path, mlflow_uri: str
) -> None:
    config = tracked_config(tiny_config, tmp_path, mlflow_uri=mlflow_uri)
    after_epoch = threading.Event()
    after_epoch.set()  # stop at the end of epoch 1 of 2
    first = list(train(config, emit_interval=0.0, stop_after_epoch=after_epoch))
    assert isinstance(first[-1], ev.RunStopped)
    run_dir = Path(first[-1].run_dir)
    stopped = the_mlflow_run(mlflow_uri)
    assert stopped.info.status == "KILLED"

    second = list(resume(str(run_dir), emit_interval=0.0))
    assert isinstance(second[-1], ev.RunFinished)
    run = the_mlflow_run(mlflow_uri)  # still one run in the experiment: the same one
    assert run.info.run_id == stopped.info.run_id and run.info.status == "FINISHED"
    history = MlflowClient(mlflow_uri).get_metric_history(run.info.run_id, "finetune/val_accuracy")
    assert sorted(m.step for m in history) == [1, 2]
    assert [p.name for p in run_dir.iterdir() if p.name.startswith("tensorboard")] == ["tensorboard"]
    assert [step for step, _ in scalars(run_dir / "tensorboard", "finetune/val_accuracy")] == [1, 2]
    assert [step for step, _ in scalars(run_dir / "tensorboard", "batch/loss")] == list(range(1, 7))


def test_the_cli_records_the_trackers_and_refuses_them_where_they_cannot_apply(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["run", "--dataset", "demo", "--weights", "none", "--epochs", "1", "--runs-dir", str(tmp_path / "runs")]
    result = runner.invoke(app, [*base, "--log", "wandb"])
    assert result.exit_code == 2 and "unknown --log 'wandb'; choose one of: tensorboard, mlflow" in result.output
    result = runner.invoke(app, [*base, "--log", "tensorboard", "--mlflow-uri", UNREACHABLE])
    assert result.exit_code == 2 and "--mlflow-uri is only used with --log mlflow" in result.output
    result = runner.invoke(app, ["run", "--resume", "some-run", "--log", "mlflow", "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "drop --log" in result.output
    config = RunConfig(log=("tensorboard", "mlflow"), mlflow_uri="sqlite:///m.db", mlflow_experiment="e").resolved()
    line = config.command_line()
    assert "--log tensorboard --log mlflow --mlflow-uri sqlite:///m.db --mlflow-experiment e" in line
    assert RunConfig.from_json(config.to_json()) == config and json.loads(config.to_json())["log"] == ["tensorboard", "mlflow"]


HIDE_MLFLOW = """
import sys
sys.modules["mlflow"] = None  # what Python sees on a machine without the package: import fails, find_spec is None
from tui.cli import main
main()
"""


def test_a_missing_tracker_library_is_a_one_line_install_hint(tmp_path: Path) -> None:
    # In a fresh interpreter where importing mlflow fails, as on a machine without the extra.
    result = subprocess.run(
        [sys.executable, "-c", HIDE_MLFLOW, "run", "--dataset", "demo", "--log", "mlflow", "--runs-dir", str(tmp_path / "runs")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "tlwork: error: --log mlflow needs the mlflow package; install it with: pip install 'tlwork[mlflow]'"
    ]
    assert not (tmp_path / "runs").exists()
