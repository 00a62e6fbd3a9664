"""Hostile inputs: pickles that run code, path traversal in run names, decompression bombs.

The pickle is real: a torch.save file whose unpickling would create a marker directory. The
test first proves it does (with a plain unsafe load), then feeds it to every way tlwork
reads weights (``--weights``, a run's checkpoint, a bundle, a Hugging Face folder) and
checks the marker never appears and each refusal is a one-line error.
"""

from __future__ import annotations

import ast
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from test_checkdata import bomb_png
from tinydata import REPO_ROOT, TINY_BACKBONE, FinishedRun
from typer.testing import CliRunner

from core.config import RunConfig, check_run_name
from core.errors import ConfigError
from core.runs.store import create_run_dir
from tui.cli import app


class _Payload:
    """Unpickling this creates ``marker`` (a directory): proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


@pytest.fixture
def evil(tmp_path: Path) -> tuple[bytes, Path]:
    """(bytes of a malicious torch.save file, the marker its payload would create)."""
    marker = tmp_path / "PWNED"
    buffer = io.BytesIO()
    torch.save({"fc.weight": torch.zeros(3, 4), "payload": _Payload(marker)}, buffer)
    blob = buffer.getvalue()
    torch.load(io.BytesIO(blob), weights_only=False)  # the unsafe way: the payload runs...
    assert marker.is_dir()
    marker.rmdir()  # ...so its absence below means tlwork never unpickled it
    return blob, marker


def one_line(output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("tlwork: error:")]
    assert len(errors) == 1, output
    return errors[0]


def test_weights_given_as_a_pickle_never_run_code(evil: tuple[bytes, Path], tmp_path: Path, tiny_folder: Path) -> None:
    blob, marker = evil
    for name in ("evil.pth", "evil.bin", "evil.safetensors"):
        (tmp_path / name).write_bytes(blob)
        result = CliRunner().invoke(app, [
            "run", "--backbone", TINY_BACKBONE, "--weights", str(tmp_path / name), "--dataset", f"imagefolder:{tiny_folder}",
            "--image-size", "16", "--device", "cpu", "--runs-dir", str(tmp_path / "runs"),
        ])  # fmt: skip
        assert result.exit_code == 3, result.output
        assert name in one_line(result.output)
        assert not marker.exists()


def test_a_checkpoint_replaced_by_a_pickle_is_refused_on_resume(
    evil: tuple[bytes, Path], tmp_path: Path, tiny_config: Any
) -> None:
    import threading

    from core import events as ev
    from core.training.train import train

    blob, marker = evil
    stop = threading.Event()
    stop.set()
    events = list(train(tiny_config(epochs=2, name="r"), stop=stop))
    assert isinstance(events[-1], ev.RunStopped)
    run_dir = Path(events[-1].run_dir)
    (run_dir / "checkpoint-last.safetensors").write_bytes(blob)
    result = CliRunner().invoke(app, ["run", "--resume", str(run_dir)])
    assert result.exit_code == 2
    assert "not a safetensors file" in one_line(result.output)
    assert not marker.exists()


def test_a_bundle_replaced_by_a_pickle_is_refused(evil: tuple[bytes, Path], tmp_path: Path, finished_run: FinishedRun) -> None:
    blob, marker = evil
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run.run_dir, run_dir)
    (run_dir / "model.safetensors").write_bytes(blob)
    result = CliRunner().invoke(app, ["eval", str(run_dir), "--device", "cpu"])
    assert result.exit_code != 0 and "model.safetensors" in one_line(result.output)
    image = next(finished_run.runs_dir.parent.rglob("*.png"))
    result = CliRunner().invoke(app, ["classify", str(image), "--model", str(run_dir), "--device", "cpu"])
    assert result.exit_code != 0
    assert not marker.exists()


def test_a_hugging_face_folder_with_a_pickled_bin_never_runs_it(evil: tuple[bytes, Path], tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from core.models.build import build_model

    blob, marker = evil
    folder = tmp_path / "hf-model"
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8,
        num_labels=3,
    )  # fmt: skip
    config.save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    (folder / "pytorch_model.bin").write_bytes(blob)
    with pytest.raises(Exception, match="(?i)weights.only|safetensors|unpickl"):  # it reached the file and refused it
        build_model(f"hf:{folder}", 3, "imagenet")
    assert not marker.exists()


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [
        node for node in ast.walk(tree)
        if isinstance(node, ast.Call) and (getattr(node.func, "attr", None) == name or getattr(node.func, "id", None) == name)
    ]  # fmt: skip


def test_the_source_never_unpickles_or_trusts_remote_code() -> None:
    for path in sorted((REPO_ROOT / "core").rglob("*.py")) + sorted((REPO_ROOT / "tui").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not {"pickle", "cPickle", "dill", "joblib"} & set(names), f"{path}: imports a pickle module"
        for call in _calls(tree, "load"):
            if isinstance(call.func, ast.Attribute) and getattr(call.func.value, "id", None) == "torch":
                flags = {k.arg: k.value for k in call.keywords}
                assert isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True, (
                    f"{path}:{call.lineno}: torch.load without weights_only=True"
                )
        for call in ast.walk(tree):
            if isinstance(call, ast.keyword) and call.arg == "trust_remote_code":
                assert isinstance(call.value, ast.Constant) and call.value.value is False, f"{path}: trust_remote_code is not False"
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript):
                key = node.targets[0].slice
                if isinstance(key, ast.Constant) and key.value == "trust_remote_code":
                    assert isinstance(node.value, ast.Constant) and node.value.value is False, f"{path}:{node.lineno}"


@pytest.mark.parametrize(
    "name",
    ["..", "../outside", "a/../../b", "/etc/cron.d/x", "a/b", ".hidden", "-rf", "a\\..\\b", "name\x00", "x" * 101, "é"],
)
def test_hostile_run_names_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a valid run name"):
        check_run_name(name)
    with pytest.raises(ConfigError):
        create_run_dir(RunConfig(runs_dir=str(tmp_path / "runs"), name=name))
    assert list(tmp_path.iterdir()) == []


def test_the_cli_refuses_a_traversing_name_before_writing(tmp_path: Path, tiny_folder: Path) -> None:
    runs = tmp_path / "deep" / "runs"
    result = CliRunner().invoke(app, [
        "run", "--backbone", TINY_BACKBONE, "--weights", "none", "--dataset", f"imagefolder:{tiny_folder}",
        "--image-size", "16", "--device", "cpu", "--runs-dir", str(runs), "--name", "../../escaped",
    ])  # fmt: skip
    assert result.exit_code == 2 and "not a valid run name" in one_line(result.output)
    assert not (tmp_path / "escaped").exists() and not runs.exists()
    result = CliRunner().invoke(app, ["run", "--resume", "../../escaped", "--runs-dir", str(runs)])
    assert result.exit_code == 2 and "no such run" in one_line(result.output)


def test_a_decompression_bomb_is_an_error_never_a_warning(tmp_path: Path) -> None:
    # In a fresh process (no test runner resetting warning filters), with warnings shown.
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png(12_000, 12_000))  # between Pillow's warning and error limits
    code = (
        "import sys\n"
        "from PIL import Image\n"
        "from core.data.images import open_rgb\n"
        "try:\n"
        f"    open_rgb({str(bomb)!r})\n"
        "except Image.DecompressionBombError as exc:\n"
        "    print('refused:', exc)\n"
        "    sys.exit(0)\n"
        "except Image.DecompressionBombWarning as exc:\n"
        "    print('refused:', exc)\n"
        "    sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    out = subprocess.run([sys.executable, "-W", "default", "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("refused:")
    assert "Warning" not in out.stderr
    # And with every warning silenced, the explicit size check still refuses it.
    import warnings

    from PIL import Image

    from core.data.images import open_rgb

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises((Image.DecompressionBombError, Image.DecompressionBombWarning)):
            open_rgb(bomb)


def test_a_resume_never_reads_the_weights_path_in_its_config(tmp_path: Path, tiny_config: Any, evil: tuple[bytes, Path]) -> None:
    import threading

    from core import events as ev
    from core.training.resume import resume
    from core.training.train import train

    blob, marker = evil
    stop = threading.Event()
    stop.set()
    events = list(train(tiny_config(epochs=2, name="r"), stop=stop))
    run_dir = Path(events[-1].run_dir)
    (tmp_path / "evil.pth").write_bytes(blob)
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "weights": str(tmp_path / "evil.pth")}))
    assert isinstance(list(resume(str(run_dir)))[-1], ev.RunFinished)
    assert not marker.exists()
