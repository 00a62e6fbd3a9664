"""``tlwork classify`` and ``core.inference.classify``: pipeline parity, bundles as evaluated, bad files, output formats.

A tiny ViT saved with ``save_pretrained`` (``tiny_vit``) stands in for a hub model; the
session's ``finished_run`` is the bundle. Bad inputs are real files (missing, text, empty,
truncated JPEG, decompression bombs); the CLI runs in-process with typer's CliRunner, and
the import-cost and offline checks run in subprocesses.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from tinydata import REPO_ROOT, FinishedRun
from typer.testing import CliRunner

from core.data.datasets import DEMO_DIR
from core.errors import ConfigError
from core.events import ClassificationEnded, ClassificationStarted, ClassificationStopped, EvaluationEnded, ImageClassified, ImageFailed
from core.inference.classify import classify
from tui.classify_cmd import EXIT_PARTIAL
from tui.cli import app

runner = CliRunner()


def _demo_images(n: int = 3) -> list[str]:
    return [str(p) for p in sorted((DEMO_DIR / "test").glob("*/*.jpg"))[:: 200 // n][:n]]


@pytest.fixture
def odd_images(tmp_path: Path) -> list[str]:
    """Real-photo-like cases: non-square RGBA, greyscale, palette GIF and an EXIF-rotated JPEG."""
    src = Image.open(_demo_images(1)[0]).convert("RGB")
    rgba = src.resize((50, 30)).convert("RGBA")
    rgba.putalpha(180)
    paths = {"rgba.png": rgba, "grey.jpg": src.resize((40, 40)).convert("L"), "palette.gif": src.convert("P")}
    for name, img in paths.items():
        img.save(tmp_path / name)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    src.resize((48, 24)).save(tmp_path / "rotated.jpg", exif=exif)
    return [str(tmp_path / n) for n in (*paths, "rotated.jpg")]


def _results(events: list[Any]) -> dict[str, Any]:
    return {e.path: e for e in events if isinstance(e, (ImageClassified, ImageFailed))}


def test_top_k_equals_the_transformers_pipeline(tiny_vit: Path, odd_images: list[str]) -> None:
    from transformers import pipeline

    images = _demo_images(3) + odd_images
    events = list(classify(f"hf:{tiny_vit}", images, top_k=5, batch_size=3, device="cpu"))
    assert isinstance(events[0], ClassificationStarted) and events[0].top_k == 5
    assert isinstance(events[-1], ClassificationEnded) and (events[-1].classified, events[-1].failed) == (len(images), 0)
    ours = _results(events)
    pipe = pipeline("image-classification", model=str(tiny_vit), device="cpu")
    for path in images:
        expected = pipe(path, top_k=5)
        got = ours[path].predictions
        assert [label for label, _ in got] == [e["label"] for e in expected], path
        for (_, score), e in zip(got, expected):
            assert score == pytest.approx(e["score"], abs=1e-5)


def test_cli_json_matches_the_pipeline_and_is_well_formed(tiny_vit: Path, odd_images: list[str]) -> None:
    from transformers import pipeline

    images = _demo_images(2) + odd_images[:2]
    result = runner.invoke(app, ["classify", *images, "--model", str(tiny_vit), "--json", "-k", "3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in records] == images
    assert f"model: hf:{tiny_vit}" in result.stderr
    pipe = pipeline("image-classification", model=str(tiny_vit), device="cpu")
    for record in records:
        assert set(record) == {"path", "predictions"}
        assert [set(p) for p in record["predictions"]] == [{"label", "score"}] * 3
        expected = pipe(record["path"], top_k=3)
        assert [p["label"] for p in record["predictions"]] == [e["label"] for e in expected]
        assert [p["score"] for p in record["predictions"]] == pytest.approx([e["score"] for e in expected], abs=1e-5)


def test_cli_csv_is_one_row_per_image(tiny_vit: Path, tmp_path: Path) -> None:
    images = _demo_images(3)
    missing = str(tmp_path / "missing.jpg")
    result = runner.invoke(app, ["classify", *images, missing, "--model", f"hf:{tiny_vit}", "--csv", "-k", "2", "--device", "cpu"])
    assert result.exit_code == EXIT_PARTIAL
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["path", "label_1", "score_1", "label_2", "score_2", "error"]
    assert [r[0] for r in rows[1:]] == [*images, missing]
    assert all(len(r) == 6 for r in rows)
    for row in rows[1:-1]:
        assert row[1] and row[3] and row[5] == ""
        assert 1 >= float(row[2]) >= float(row[4]) > 0
    assert rows[-1][1:5] == ["", "", "", ""] and rows[-1][5] == f"{missing}: no such file"


def test_a_bundle_classifies_exactly_as_evaluation_scored_it(finished_run: FinishedRun) -> None:
    from core.inference.evaluate import evaluate

    test_dir = Path(finished_run.config.dataset.split(":", 1)[1]) / "test"
    scored = list(evaluate(str(finished_run.run_dir), device="cpu"))[-1]
    assert isinstance(scored, EvaluationEnded)
    events = list(classify(str(finished_run.run_dir), [str(test_dir)], top_k=1, batch_size=5, device="cpu"))
    names = list(scored.class_names)
    confusion = [[0] * len(names) for _ in names]
    for e in events:
        if isinstance(e, ImageClassified):
            confusion[names.index(Path(e.path).parent.name)][names.index(e.predictions[0][0])] += 1
    assert events[-1].classified == scored.images
    assert tuple(tuple(r) for r in confusion) == scored.confusion


def test_every_model_reference_form_gives_the_same_answer(tiny_vit: Path, finished_run: FinishedRun) -> None:
    image = _demo_images(1)

    def top(ref: str, runs_dir: str = "runs") -> Any:
        events = list(classify(ref, image, top_k=3, device="cpu", runs_dir=runs_dir))
        return events[1].predictions

    assert top(str(tiny_vit)) == top(f"hf:{tiny_vit}")  # a local Hugging Face folder, with or without hf:
    runs = str(finished_run.runs_dir)
    by_dir = top(str(finished_run.run_dir))
    assert top("tiny", runs) == by_dir == top("last", runs) == top(str(finished_run.bundle))


def test_folders_are_searched_recursively_in_batches(tiny_vit: Path, tmp_path: Path) -> None:
    src = _demo_images(7)
    expected = []
    for i, path in enumerate(src):
        target = tmp_path / "photos" / ("a" if i < 3 else "b/c") / f"{i}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(Path(path).read_bytes())
        expected.append(str(target))
    (tmp_path / "photos" / "README.txt").write_text("not an image, not looked at")
    events = list(classify(str(tiny_vit), [str(tmp_path / "photos")], top_k=2, batch_size=3, device="cpu"))
    assert [e.path for e in events if isinstance(e, ImageClassified)] == sorted(expected)
    assert events[-1].failed == 0


def test_a_stop_request_ends_the_run_cleanly(tiny_vit: Path) -> None:
    stop = threading.Event()
    stop.set()
    events = list(classify(str(tiny_vit), _demo_images(3), device="cpu", stop=stop))
    assert isinstance(events[-1], ClassificationStopped) and (events[-1].classified, events[-1].failed) == (0, 0)
    assert not any(isinstance(e, ClassificationEnded) for e in events)


@pytest.fixture
def bad_files(tmp_path: Path) -> dict[str, str]:
    """One file per way an input can be bad, keyed by the words its error must contain."""
    import numpy as np

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "notes.txt").write_text("just some text\n")
    (bad / "fake.jpg").write_text("text with an image extension\n")
    (bad / "empty.png").write_bytes(b"")
    photo = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(photo, "JPEG", quality=95)
    (bad / "truncated.jpg").write_bytes(photo.getvalue()[: len(photo.getvalue()) // 2])
    # Over Pillow's default MAX_IMAGE_PIXELS (but under twice it, where Pillow only warns): a blank 1-bit PNG.
    side = int((Image.MAX_IMAGE_PIXELS or 89_478_485) ** 0.5) + 50
    Image.new("1", (side, side)).save(bad / "bomb.png")
    return {
        "no such file": str(bad / "missing.jpg"),
        "not an image Pillow can read": str(bad / "notes.txt"),
        "not an image Pillow": str(bad / "fake.jpg"),
        "empty file (0 bytes)": str(bad / "empty.png"),
        "truncated": str(bad / "truncated.jpg"),
        "decompression bomb": str(bad / "bomb.png"),
    }


@pytest.mark.parametrize("kind", ["hf", "bundle", "onnx"])
def test_bad_files_are_named_and_the_good_ones_still_classified(
    kind: str, tiny_vit: Path, finished_run: FinishedRun, bad_files: dict[str, str], request: pytest.FixtureRequest
) -> None:
    model, classes = (str(tiny_vit), 10) if kind == "hf" else (str(finished_run.run_dir), 3)
    if kind == "onnx":  # the same run, exported (only this case pays for the export)
        model = str(request.getfixturevalue("exported_onnx"))
    good = _demo_images(2)
    inputs = [good[0], *bad_files.values(), good[1]]
    result = runner.invoke(app, ["classify", *inputs, "--model", model, "--json", "--device", "cpu", "--batch-size", "3"])
    assert result.exit_code == EXIT_PARTIAL, result.output
    records = {r["path"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert list(records) == inputs
    for path in good:
        assert len(records[path]["predictions"]) == min(5, classes)
    errors = [line for line in result.stderr.splitlines() if line.startswith("tlwork: error: ")]
    assert len(errors) == len(bad_files)
    for words, path in bad_files.items():
        assert records[path]["error"].startswith(f"{path}: ") and words in records[path]["error"]
        assert [line for line in errors if line.startswith(f"tlwork: error: {path}: ")], path
    assert "Traceback" not in result.output


def test_decompression_bombs_are_errors_at_any_limit(tiny_vit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = _demo_images(1)  # 32x32 = 1,024 pixels: under the limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1100)
    Image.new("RGB", (40, 40)).save(tmp_path / "warns.png")  # 1,600 px: Pillow would only warn
    Image.new("RGB", (60, 60)).save(tmp_path / "raises.png")  # 3,600 px: over twice the limit
    events = list(classify(str(tiny_vit), [*good, str(tmp_path / "warns.png"), str(tmp_path / "raises.png")], device="cpu"))
    results = _results(events)
    assert isinstance(results[good[0]], ImageClassified)
    for name in ("warns.png", "raises.png"):
        failure = results[str(tmp_path / name)]
        assert isinstance(failure, ImageFailed) and "decompression bomb" in failure.error and "\n" not in failure.error


def test_plain_output_names_the_model_and_every_image(tiny_vit: Path) -> None:
    images = _demo_images(2)
    result = runner.invoke(app, ["classify", *images, "--model", str(tiny_vit), "-k", "2", "--device", "cpu"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"model: hf:{tiny_vit}")
    assert [line.split(": ")[0] for line in lines[1:3]] == images
    assert lines[-1].startswith("classified 2 images")


@pytest.mark.parametrize("model", ["no-such-run", "./no/such/folder", "hf:./no/such/folder"])
def test_an_unknown_model_is_a_usage_error(model: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["classify", _demo_images(1)[0], "--model", model, "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.startswith("tlwork: error: ") and len(result.stderr.strip().splitlines()) == 1


def test_an_empty_folder_and_bad_options_are_usage_errors(tmp_path: Path, tiny_vit: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no image files"):
        list(classify(str(tiny_vit), [str(tmp_path / "empty")]))
    for args in (["--top-k", "0"], ["--json", "--csv"], ["--batch-size", "0"]):
        result = runner.invoke(app, ["classify", _demo_images(1)[0], "--model", str(tiny_vit), *args])
        assert result.exit_code == 2, args


def _run_tlwork(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from tui.cli import main; main()", *args],
        cwd=REPO_ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=180,
    )


def test_the_default_hub_model_offline_and_uncached_says_how_to_fix_it(tmp_path: Path) -> None:
    out = _run_tlwork(["classify", _demo_images(1)[0]], {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert out.returncode == 3, out.stderr
    message = out.stderr.strip()
    assert len(message.splitlines()) == 1
    assert "hf:nateraw/vit-base-patch16-224-cifar10 is not in the Hugging Face cache" in message
    assert "HF_HUB_OFFLINE=1" in message and "hf download nateraw/vit-base-patch16-224-cifar10" in message


def test_a_bundle_never_imports_transformers(finished_run: FinishedRun) -> None:
    code = (
        "import sys\n"
        "import tui.cli\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'the CLI imported torch'\n"
        "from core.inference.classify import classify\n"
        f"events = list(classify({str(finished_run.run_dir)!r}, {_demo_images(2)!r}, device='cpu'))\n"
        "assert events[-1].classified == 2\n"
        "print('transformers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
