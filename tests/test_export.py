"""``tlwork export --format onnx`` and classifying with the exported file.

A really trained tiny run is exported once per session (``exported_onnx``): the file loads in
onnxruntime with batch 1 and 3 and reproduces the PyTorch logits; ``tlwork classify`` gives
the same top-3 labels and scores with it as with the run, in every output format, without
importing torch or torchvision; a failed parity check exits 10 and leaves no file behind.
The torch-free preprocessing is compared with torchvision's pixel by pixel. With ../shared, a
linear probe of the real EfficientNet-Lite0 is exported and checked the same way.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tinydata import REPO_ROOT, FinishedRun
from typer.testing import CliRunner

from core.data.datasets import DEMO_DIR
from core.data.preprocessing import Preprocessing, to_array
from core.data.transforms import eval_transform
from core.errors import EXIT_EXPORT_MISMATCH, EXIT_USAGE
from core.inference.classifier import load_classifier
from core.inference.onnxmodel import load_onnx
from tui.cli import app

runner = CliRunner()


def _photos(n: int) -> list[str]:
    """``n`` demo JPEGs (real 32x32 photos), from different classes."""
    return [str(p) for p in sorted((DEMO_DIR / "test").glob("*/*.jpg"))[::20][:n]]


def _classify(model: str, fmt: str | None, images: list[str]) -> list[str]:
    """stdout lines of ``tlwork classify`` (``fmt`` --json, --csv, or None: the plain lines of a pipe)."""
    result = runner.invoke(app, ["classify", *images, "--model", model, *([fmt] if fmt else []), "-k", "3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def test_the_export_runs_in_onnxruntime_at_batch_1_and_3_as_pytorch_does(exported_onnx: Path, finished_run: FinishedRun) -> None:
    onnx_model = load_onnx(exported_onnx)
    clf = load_classifier(str(finished_run.run_dir), torch.device("cpu"))
    assert onnx_model.class_names == clf.class_names
    assert onnx_model.preprocessing == clf.preprocessing
    images = [Image.open(p).convert("RGB") for p in _photos(3)]
    batch = torch.stack([eval_transform(clf.preprocessing)(im) for im in images])
    for size in (1, 3):
        got = onnx_model.logits(batch[:size].numpy())
        with torch.inference_mode():
            expected = clf.logits(batch[:size]).numpy()
        assert got.shape == (size, len(clf.class_names))
        np.testing.assert_allclose(got, expected, atol=1e-5)
    parity = onnx_model.meta["parity"]
    assert parity["on"].endswith(f"validation split of {finished_run.config.dataset}")
    assert parity["top1_agreement"] == 1.0 and parity["max_logit_diff"] <= parity["tolerance"]


def test_classify_with_the_export_answers_as_the_run_in_every_format(exported_onnx: Path, finished_run: FinishedRun) -> None:
    images = _photos(4)
    run, onnx = str(finished_run.run_dir), str(exported_onnx)
    for run_line, onnx_line in zip(_classify(run, "--json", images), _classify(onnx, "--json", images), strict=True):
        a, b = json.loads(run_line), json.loads(onnx_line)
        assert a["path"] == b["path"]
        assert [p["label"] for p in a["predictions"]] == [p["label"] for p in b["predictions"]]
        np.testing.assert_allclose([p["score"] for p in b["predictions"]], [p["score"] for p in a["predictions"]], atol=1e-3)
    run_rows, onnx_rows = _classify(run, "--csv", images), _classify(onnx, "--csv", images)
    assert run_rows[0] == onnx_rows[0] == "path,label_1,score_1,label_2,score_2,label_3,score_3,error"
    for a, b in zip(run_rows[1:], onnx_rows[1:], strict=True):
        (path_a, *cells_a), (path_b, *cells_b) = a.split(","), b.split(",")
        assert path_a == path_b and cells_a[0:-1:2] == cells_b[0:-1:2] and cells_a[-1] == cells_b[-1] == ""  # labels, no error
        np.testing.assert_allclose([float(x) for x in cells_b[1:-1:2]], [float(x) for x in cells_a[1:-1:2]], atol=1e-3)
    plain_run, plain_onnx = _classify(run, None, images), _classify(onnx, None, images)
    assert plain_run[0] == f"model: {run} (4 images, top 3)" and plain_onnx[0] == f"model: {onnx} (4 images, top 3)"
    assert [line.split(":")[0] for line in plain_run[1:-1]] == [line.split(":")[0] for line in plain_onnx[1:-1]] == images


def test_a_run_on_an_hf_backbone_exports_and_classifies_as_the_run(tmp_path: Path) -> None:
    """A Hugging Face ViT fine-tuned by tlwork (a tiny one saved with save_pretrained) exports like any run."""
    from tinydata import CIFAR10_CLASSES, save_tiny_vit

    from core.config import RunConfig
    from core.training.train import train

    vit = save_tiny_vit(tmp_path / "vit", labels=CIFAR10_CLASSES)
    config = RunConfig(mode="finetune", backbone=f"hf:{vit}", weights="imagenet", dataset="demo", epochs=1, batch_size=64,
                       device="cpu", workers=0, runs_dir=str(tmp_path / "runs"), name="vit")
    done = list(train(config))[-1]
    exported = runner.invoke(app, ["export", done.run_dir, "--format", "onnx", "--output", str(tmp_path / "vit.onnx")])
    assert exported.exit_code == 0, exported.output
    images = _photos(3)
    for a, b in zip(_classify(done.run_dir, "--json", images), _classify(str(tmp_path / "vit.onnx"), "--json", images), strict=True):
        ra, rb = json.loads(a), json.loads(b)
        assert [p["label"] for p in ra["predictions"]] == [p["label"] for p in rb["predictions"]]
        np.testing.assert_allclose([p["score"] for p in rb["predictions"]], [p["score"] for p in ra["predictions"]], atol=1e-3)


def test_onnx_classify_imports_neither_torch_nor_torchvision(exported_onnx: Path) -> None:
    code = (
        "import atexit, json, sys\n"
        "heavy = ('torch', 'torchvision', 'timm', 'transformers', 'onnx')\n"
        "atexit.register(lambda: sys.stderr.write('LOADED ' + json.dumps(sorted(set(heavy) & set(sys.modules))) + '\\n'))\n"
        "from tui.cli import main\n"
        "sys.argv = ['tlwork', *sys.argv[1:]]\n"
        "main()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "classify", *_photos(2), "--model", str(exported_onnx), "--json"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["path"] for line in out.stdout.splitlines()] == _photos(2)
    assert "LOADED []" in out.stderr.splitlines()


def test_a_failed_parity_check_exits_10_and_writes_nothing(finished_run: FinishedRun, tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the previous export")
    # Tolerance 0 asks for bit-identical logits, which two runtimes' float kernels do not give.
    result = runner.invoke(app, ["export", str(finished_run.run_dir), "--output", str(target), "--tolerance", "0"])
    assert result.exit_code == EXIT_EXPORT_MISMATCH, result.output
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and message.startswith("tlwork: error: ")
    assert "differ from PyTorch's by up to" in message and "top-1 agreeing on 100.0%" in message and "nothing was written" in message
    assert target.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary file left either


def test_a_lone_bundle_at_an_old_opset_exports_with_torchscript_checked_on_random_inputs(
    finished_run: FinishedRun, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for name in ("model.json", "model.safetensors"):
        shutil.copy(finished_run.run_dir / name, bundle / name)
    result = runner.invoke(app, ["export", str(bundle / "model.json"), "--opset", "13", "--parity-images", "5", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["path"] == str(bundle / "model.onnx") and (bundle / "model.onnx").is_file()
    assert (report["exporter"], report["opset"], report["images"]) == ("torchscript", 13, 5)
    assert report["checked_on"] == "5 random inputs (no run config beside the bundle)"
    model = load_onnx(bundle / "model.onnx")
    for size in (1, 3):
        assert model.logits(np.zeros((size, 3, 32, 32), np.float32)).shape == (size, 3)


def _foreign_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
    )
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_bad_models_and_options_are_one_line_usage_errors(finished_run: FinishedRun, tmp_path: Path) -> None:
    (tmp_path / "garbage.onnx").write_bytes(b"not a model")
    photo = _photos(1)
    cases = {
        ("classify", *photo, "--model", str(_foreign_onnx(tmp_path / "foreign.onnx"))): "without tlwork's metadata",
        ("classify", *photo, "--model", str(tmp_path / "garbage.onnx")): "not a readable ONNX model",
        ("classify", *photo, "--model", str(tmp_path / "missing.onnx")): "no such ONNX file",
        ("classify", *photo, "--model", str(tmp_path / "garbage.onnx"), "--device", "mps"): "not available for ONNX models",
        ("export", str(finished_run.run_dir), "--output", str(tmp_path / "model.bin")): "name the file *.onnx",
        ("export", str(finished_run.run_dir), "--format", "tflite"): "pass --format onnx",
        ("export", str(finished_run.run_dir), "--opset", "5"): "--opset must be between 7 and 23",
        ("export", "hf:google/vit-base-patch16-224"): "takes a run directory or name",
        ("export", str(tmp_path / "nothing-here")): "no such run or bundle",
    }
    for args, words in cases.items():
        result = runner.invoke(app, list(args))
        assert result.exit_code == EXIT_USAGE, (args, result.output)
        assert len(result.stderr.strip().splitlines()) == 1 and words in result.stderr, (args, result.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign.onnx", "garbage.onnx"]


def test_without_the_export_extra_the_error_names_the_install_command(exported_onnx: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['onnxruntime'] = None  # as if it were not installed: importing it raises ImportError\n"
        "from tui.cli import main\n"
        "sys.argv = ['tlwork', *sys.argv[1:]]\n"
        "main()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "classify", *_photos(1), "--model", str(exported_onnx)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == EXIT_USAGE, out.stderr
    assert out.stderr.strip().splitlines() == [
        (
            "tlwork: error: running an ONNX model needs the onnxruntime package, which is not installed; "
            "install it with pip install 'tlwork[export]'"
        )
    ]


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "lanczos", "nearest", "nearest-exact"])
def test_the_torch_free_preprocessing_matches_torchvision(interpolation: str) -> None:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((24, 24), (300, 451), (17, 40))]
    images += [Image.open(p).convert("RGB") for p in _photos(2)]
    for size in (20, 32, 224):
        pre = Preprocessing(size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), interpolation)
        for image in images:
            expected = eval_transform(pre)(image).numpy()
            got = to_array(image, pre)
            assert got.shape == expected.shape == (3, size, size) and got.dtype == np.float32
            # In levels of the 0-255 scale: antialiased filters round apart by at most a level or two.
            levels = np.abs(got - expected) * np.asarray(pre.std, np.float32)[:, None, None] * 255
            if interpolation.startswith("nearest"):
                assert levels.max() < 1e-3, (size, image.size)
            else:
                assert levels.max() <= 2.01 and levels.mean() < 0.2, (size, image.size, levels.max(), levels.mean())


@pytest.mark.shared
@pytest.mark.slow
def test_a_real_efficientnet_lite0_probe_exports_and_classifies_as_its_run(shared_dir: Path, tmp_path: Path) -> None:
    from core.config import RunConfig
    from core.events import RunFinished
    from core.training.train import train

    cifar = shared_dir / "data" / "cifar10-jpg" / "train"
    folder = tmp_path / "cifar"
    for cls in sorted(d.name for d in cifar.iterdir() if d.is_dir()):
        (folder / cls).mkdir(parents=True)
        for f in sorted((cifar / cls).glob("*.jpg"))[:20]:
            (folder / cls / f.name).symlink_to(f.resolve())
    config = RunConfig(
        mode="linear-probe", backbone="timm:tf_efficientnet_lite0", weights=str(shared_dir / "models" / "tf_efficientnet_lite0.in1k.safetensors"),
        dataset=f"imagefolder:{folder}", image_size=64, device="cpu", runs_dir=str(tmp_path / "runs"), batch_size=64, epochs=2, workers=0,
    )
    finished = list(train(config))[-1]
    assert isinstance(finished, RunFinished)
    result = runner.invoke(app, ["export", finished.run_dir, "--format", "onnx", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["exporter"] == "dynamo" and report["top1_agreement"] == 1.0
    model = load_onnx(report["path"])
    for size in (1, 3):
        assert model.logits(np.zeros((size, 3, 64, 64), np.float32)).shape == (size, 10)
    photos = [str(max((cifar / cls).glob("*.jpg"))) for cls in ("cat", "dog", "ship", "truck")]  # not trained on
    for run_line, onnx_line in zip(_classify(finished.run_dir, "--json", photos), _classify(report["path"], "--json", photos), strict=True):
        a, b = json.loads(run_line)["predictions"], json.loads(onnx_line)["predictions"]
        assert [p["label"] for p in a] == [p["label"] for p in b]
        np.testing.assert_allclose([p["score"] for p in b], [p["score"] for p in a], atol=1e-3)
