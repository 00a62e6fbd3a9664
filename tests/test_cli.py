"""The headless CLI through typer's CliRunner: ``run``, ``eval``, ``runs`` and ``backbones``,
their plain and ``--json`` output, and the exit codes and one-line messages for bad input.

One real ``tlwork run`` on the shipped demo set (ResNet-18, random weights, 32 px, one
epoch: the issue's own check) is shared by the tests of this module; the rest train the
tiny timm ResNet on generated images.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tinydata import TINY_BACKBONE, FinishedRun
from typer.testing import CliRunner

from core import registry
from tui.cli import app

DEMO_ARGS = ["--mode", "finetune", "--dataset", "demo", "--weights", "none", "--image-size", "32", "--epochs", "1"]


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), env=env)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def one_line_error(result: Any) -> str:
    """The single ``tlwork: error: ...`` line of a failed command."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("tlwork: error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.output
    return errors[0]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``tlwork run --mode finetune --dataset demo --weights none --image-size 32 --epochs 1 --json``.

    Trained once per test session even under xdist (the workers share the base temporary
    folder and take turns with a file lock), since it is the slowest fixture here.
    """
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    base = root / "cli-demo-run"
    runs_dir, output = base / "runs", base / "stdout.jsonl"
    with FileLock(str(root / "cli-demo-run.lock")):
        if not output.is_file():
            args = [*DEMO_ARGS, "--batch-size", "50", "--device", "cpu", "--runs-dir", str(runs_dir), "--json"]
            result = invoke("run", *args)
            assert result.exit_code == 0, result.output
            output.write_text(result.stdout)
    return {"runs_dir": runs_dir, "lines": json_lines(output.read_text())}


def test_run_on_the_demo_set_writes_a_run_directory(demo_run: dict[str, Any]) -> None:
    last = demo_run["lines"][-1]
    run_dir = Path(last["run_dir"])
    assert run_dir.parent == demo_run["runs_dir"]
    for name in ("config.json", "metrics.jsonl", "status.json", "model.json", "model.safetensors"):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["mode"], config["dataset"], config["image_size"], config["backbone"]) == ("finetune", "demo", 32, "resnet18")
    model = json.loads((run_dir / "model.json").read_text())
    assert model["arch"]["name"] == "resnet18" and len(model["class_names"]) == 10


def test_run_json_is_one_event_per_line_ending_with_run_finished(demo_run: dict[str, Any]) -> None:
    lines = demo_run["lines"]
    assert all(isinstance(line.get("event"), str) for line in lines)
    kinds = [line["event"] for line in lines]
    assert kinds[0] == "run_started" and "batch_ended" in kinds and "epoch_ended" in kinds
    assert kinds[-1] == "run_finished"
    last = lines[-1]
    assert isinstance(last["run_dir"], str) and 0.0 <= last["val_accuracy"] <= 1.0
    batches = [line for line in lines if line["event"] == "batch_ended"]
    assert sum(len(b["losses"]) for b in batches) == 15  # 720 images (800 less 80 held out) in batches of 50


def test_eval_json_reproduces_the_runs_accuracy(demo_run: dict[str, Any]) -> None:
    finished = demo_run["lines"][-1]
    result = invoke("eval", finished["run_dir"], "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["top1"] == finished["val_accuracy"]
    assert record["top5"] >= record["top1"]
    assert list(record["per_class"]) == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert len(record["confusion"]) == 10 and all(len(row) == 10 for row in record["confusion"])
    assert sum(map(sum, record["confusion"])) == record["images"] == 80  # the run's 80 held-out validation images
    on_test = json.loads(invoke("eval", finished["run_dir"], "--dataset", "demo", "--json", "--device", "cpu").stdout)
    assert (on_test["split"], on_test["images"]) == ("test", 200)  # the demo's test split, never used to pick the model


def test_eval_last_picks_the_newest_finished_run(demo_run: dict[str, Any]) -> None:
    result = invoke("eval", "last", "--runs-dir", str(demo_run["runs_dir"]), "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["top1"] == demo_run["lines"][-1]["val_accuracy"]


def test_eval_prints_top1_a_per_class_table_and_the_confusion_matrix(finished_run: FinishedRun) -> None:
    result = invoke("eval", str(finished_run.run_dir), "--device", "cpu")
    assert result.exit_code == 0, result.output
    accuracy = f"{100 * finished_run.finished.val_accuracy:.2f}%"
    assert re.search(rf"^top-1 {re.escape(accuracy)}  top-5 100\.00%", result.stdout, re.M)
    assert "per class" in result.stdout and "confusion matrix" in result.stdout
    for name in ("checks", "circle", "stripes"):
        assert name in result.stdout


def test_runs_lists_runs_as_a_table_and_as_json(demo_run: dict[str, Any]) -> None:
    finished = demo_run["lines"][-1]
    name = Path(finished["run_dir"]).name
    table = invoke("runs", "--runs-dir", str(demo_run["runs_dir"]))
    assert table.exit_code == 0
    row = next(line for line in table.stdout.splitlines() if name in line)
    assert "finished" in row and f"{100 * finished['val_accuracy']:.2f}%" in row
    listed = json_lines(invoke("runs", "--runs-dir", str(demo_run["runs_dir"]), "--json").stdout)
    assert [(r["name"], r["status"], r["val_accuracy"], r["has_bundle"]) for r in listed] == [
        (name, "finished", finished["val_accuracy"], True)
    ]


def test_runs_with_no_runs_says_how_to_start_one(tmp_path: Path) -> None:
    result = invoke("runs", "--runs-dir", str(tmp_path / "none"))
    assert result.exit_code == 0 and "tlwork run --dataset demo" in result.stdout
    assert invoke("runs", "--runs-dir", str(tmp_path / "none"), "--json").stdout == ""


def test_backbones_lists_every_registered_choice() -> None:
    plain = invoke("backbones")
    assert plain.exit_code == 0
    for choices in (registry.BACKBONES, registry.MODES, registry.AUGMENTATIONS, registry.SCHEDULERS):
        for choice in choices:
            assert re.search(rf"^  {re.escape(choice.name)}\s+{re.escape(choice.description)}$", plain.stdout, re.M)
    listed = json_lines(invoke("backbones", "--json").stdout)
    assert [r["name"] for r in listed if r["group"] == "modes"] == registry.names(registry.MODES)


PLAIN_LINES = {
    # The default --val-split 0.1 holds out one training image a class for validation (the test folder stays for eval).
    "run": r"run \S+ on cpu \(CPU \(\d+ threads\)\): 33 train / 3 val images, 3 classes, 1 epochs, [\d,]+ of [\d,]+ parameters train",
    "stage": r"stage finetune: 1 epoch\(s\) from epoch 1, lr 0\.0005, BatchNorm train",
    "batch": r"epoch 1 batch \d/\d step \d/\d loss \d+\.\d{4} lr \d\.\d\de-\d\d \d+ img/s wait \d+% eta \d+:\d\d",
    "epoch": (
        r"epoch 1/1 \[finetune\] train_loss \d+\.\d{4} train_acc \d+\.\d\d% val_loss \d+\.\d{4} "
        r"val_acc \d+\.\d\d% lr \d\.\d\de-\d\d \d+ img/s \d+\.\ds"
    ),
    "saved": r"saved bundle \S+/model\.json",
    "message": r"(info|warning|error): \S.*",
    "finished": r"finished \S+: val_acc \d+\.\d\d% \(the best epoch, 1, of 1\) in \d+\.\ds; model \S+/model\.json",
}


def test_run_without_a_terminal_prints_stable_plain_lines(tiny_folder: Path, tmp_path: Path) -> None:
    result = invoke(
        "run", "--mode", "finetune", "--backbone", TINY_BACKBONE, "--weights", "none", "--dataset", f"imagefolder:{tiny_folder}",
        "--image-size", "32", "--batch-size", "16", "--epochs", "1", "--device", "cpu", "--runs-dir", str(tmp_path / "runs"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    kinds = []
    for line in result.stdout.splitlines():
        kind = next((k for k, pattern in PLAIN_LINES.items() if re.fullmatch(pattern, line)), None)
        assert kind is not None, f"unexpected line: {line!r}"
        kinds.append(kind)
    assert [k for k in kinds if k not in ("batch", "message")] == ["run", "stage", "epoch", "saved", "finished"]
    assert kinds.count("batch") <= 1  # at most one batch line every few seconds
    assert "\x1b[" not in result.stdout  # no terminal control codes in logs


# Bad input: exit 2 (usage) or 3 (unavailable) with one line on stderr.


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--lr", "0"], "--lr must be greater than 0"),
        (["--lr", "-0.1"], "--lr must be greater than 0"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--image-size", "15"], "--image-size must be at least 16"),
        (["--mode", "probe"], "choose one of: linear-probe, finetune, partial, probe-then-finetune"),
        (["--augment", "mixup"], "choose one of: none, crop-flip, randaugment, trivialaugment"),
        (["--scheduler", "linear"], "choose one of: none, step, cosine, onecycle"),
        (["--optimizer", "adam"], "choose one of: sgd, adamw"),
        (["--backbone", "resnet9"], "choose one of: resnet18, resnet34"),
        (["--dataset", "mnist"], "choose one of: cifar10, cifar100, demo, imagefolder:PATH"),
        (["--device", "tpu"], "choose one of: auto, cuda, cuda:N, mps, cpu"),
        (["--name", "../up"], "not a valid run name"),
    ],
)
def test_bad_run_options_exit_2_with_one_line(args: list[str], fragment: str, tmp_path: Path) -> None:
    result = invoke("run", "--dataset", "demo", "--weights", "none", "--runs-dir", str(tmp_path / "runs"), *args)
    assert result.exit_code == 2
    assert fragment in one_line_error(result)
    assert result.stdout == ""
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--backbone", "timm:no_such_model"], "unknown timm model 'no_such_model'"),
        (["--weights", "/no/such/weights.pth"], "no such file"),
    ],
)
def test_unknown_models_and_weight_files_exit_2(args: list[str], fragment: str, tiny_folder: Path, tmp_path: Path) -> None:
    result = invoke(
        "run", "--dataset", f"imagefolder:{tiny_folder}", "--backbone", TINY_BACKBONE, "--weights", "none",
        "--runs-dir", str(tmp_path / "runs"), *args,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert fragment in one_line_error(result)


def test_weights_for_another_backbone_exit_3(tiny_folder: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from core.models.build import build_model

    other, _ = build_model("timm:test_efficientnet", 3, "none")
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "other.safetensors"))
    result = invoke(
        "run", "--dataset", f"imagefolder:{tiny_folder}", "--backbone", TINY_BACKBONE,
        "--weights", str(tmp_path / "other.safetensors"), "--runs-dir", str(tmp_path / "runs"),
    )  # fmt: skip
    assert result.exit_code == 3, result.output
    assert "does not fit this backbone" in one_line_error(result)
    assert not (tmp_path / "runs").exists()


def test_a_malformed_number_is_a_usage_error() -> None:
    result = invoke("run", "--epochs", "many")
    assert result.exit_code == 2
    assert "Invalid value for '--epochs'" in result.stderr


@pytest.mark.parametrize("layout", ["empty", "single-class"])
def test_unusable_image_folders_exit_3(layout: str, tmp_path: Path) -> None:
    from tinydata import make_image_folder

    root = tmp_path / "d"
    if layout == "empty":
        root.mkdir()
    else:
        make_image_folder(root, classes=("cat",), layout="flat", train=2)
    result = invoke("run", "--dataset", f"imagefolder:{root}", "--weights", "none", "--runs-dir", str(tmp_path / "runs"))
    assert result.exit_code == 3
    message = one_line_error(result)
    assert ("no images found" if layout == "empty" else "only one class") in message


@pytest.fixture
def refused_url() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` where PORT is bound but never listens: every connection is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def offline_urllib(refused_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain-URL downloads (torchvision weights, CIFAR) meet a refused proxy, online or not.

    torch.hub and torchvision download through ``urllib.request.urlopen``, which builds its
    opener once per process and reads the proxy variables then; clearing it makes the next
    download read these (monkeypatch puts the old opener back afterwards).
    """
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, refused_url)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(urllib.request, "_opener", None)


def test_a_dataset_that_cannot_be_downloaded_exits_3_naming_the_file(tmp_path: Path, offline_urllib: None) -> None:
    data_dir = tmp_path / "cifar"
    result = invoke("run", "--dataset", "cifar10", "--data-dir", str(data_dir), "--weights", "none", "--runs-dir", str(tmp_path / "runs"))
    assert result.exit_code == 3, result.output
    message = one_line_error(result)
    assert "cifar-10-python.tar.gz" in message and str(data_dir) in message and "--dataset demo" in message
    assert not (data_dir / "cifar-10-batches-py").exists()
    assert not (tmp_path / "runs").exists()


def test_imagenet_weights_that_cannot_be_downloaded_exit_3_naming_file_and_cache(
    tiny_folder: Path, tmp_path: Path, offline_urllib: None
) -> None:
    torch_home = tmp_path / "torch-home"  # empty: nothing cached
    result = invoke(
        "run", "--dataset", f"imagefolder:{tiny_folder}", "--backbone", "resnet18", "--weights", "imagenet",
        "--runs-dir", str(tmp_path / "runs"), env={"TORCH_HOME": str(torch_home)},
    )  # fmt: skip
    assert result.exit_code == 3, result.output
    message = one_line_error(result)
    cached = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert str(cached) in message and "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert "--weights PATH" in message
    assert "Connection refused" in message  # the download really met the refused proxy
    assert not cached.exists()
    assert not (tmp_path / "runs").exists()  # no silent fallback to random weights


def test_timm_weights_that_cannot_be_downloaded_exit_3_at_once(
    tiny_folder: Path, tmp_path: Path, refused_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    # An empty Hub cache and a Hub endpoint that refuses connections: the real reachability
    # check answers "unreachable" whether or not this machine is online. huggingface_hub reads
    # both constants when it is called, not only at import.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "ENDPOINT", refused_url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    repo = "timm/test_resnet.r160_in1k"
    result = invoke(
        "run", "--dataset", f"imagefolder:{tiny_folder}", "--backbone", TINY_BACKBONE, "--weights", "imagenet",
        "--runs-dir", str(tmp_path / "runs"),
    )  # fmt: skip
    assert result.exit_code == 3, result.output
    message = one_line_error(result)
    assert str(tmp_path / "hf-cache") in message and f"{refused_url}/{repo}/resolve/main/model.safetensors" in message
    assert "Retrying" not in result.stderr  # no minute of backoff before the answer
    assert not (tmp_path / "runs").exists()


def test_eval_of_something_that_is_not_a_model_exits_2(tmp_path: Path) -> None:
    result = invoke("eval", str(tmp_path / "nothing"), "--runs-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "no such run or bundle" in one_line_error(result)
    result = invoke("eval", "last", "--runs-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "no finished run" in one_line_error(result)


def test_sigterm_stops_the_run_with_a_checkpoint_and_exit_4(tiny_folder: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable, "-c", "from tui.cli import main; main()", "run", "--mode", "finetune", "--backbone", TINY_BACKBONE, "--weights", "none",
            "--dataset", f"imagefolder:{tiny_folder}", "--image-size", "16", "--batch-size", "2", "--epochs", "50", "--device", "cpu",
            "--runs-dir", str(tmp_path / "runs"), "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = []
    try:
        for line in proc.stdout:
            lines.append(json.loads(line))
            if lines[-1]["event"] == "batch_ended":
                proc.send_signal(signal.SIGTERM)
                break
        rest, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    lines += json_lines(rest)
    assert proc.returncode == 4, err
    assert [line["event"] for line in lines[-2:]] == ["checkpoint_saved", "run_stopped"]
    assert "SIGTERM: stopping after this batch" in err
    run_dir = Path(lines[-1]["run_dir"])
    assert json.loads((run_dir / "status.json").read_text())["status"] == "stopped"
    assert (run_dir / "checkpoint-last.json").is_file()
    listed = json_lines(invoke("runs", "--runs-dir", str(tmp_path / "runs"), "--json").stdout)
    assert [(r["status"], r["has_bundle"]) for r in listed] == [("stopped", False)]
    unfinished = invoke("eval", str(run_dir))
    assert unfinished.exit_code == 2 and "no final model yet" in one_line_error(unfinished)
