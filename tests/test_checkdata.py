"""``tlwork check-data``: unusable files, odd modes, class balance and train/test leaks.

The datasets are generated image folders with real broken files written into them: empty,
cut short, text named .jpg, a PNG header declaring a decompression bomb, and images in
CMYK, RGBA, L and P modes. ``corrupt_folder`` is shared with test_faults.py, which trains
on the same kind of folder.
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from tinydata import make_image_folder
from typer.testing import CliRunner

from core.data.checkdata import check_dataset
from core.data.datasets import DEMO_DIR
from core.data.images import open_rgb
from tui.cli import app


def bomb_png(width: int = 12_000, height: int = 12_000) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels (no pixel data)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def corrupt_folder(root: Path) -> tuple[Path, dict[str, str]]:
    """A generated dataset plus broken files ({relative path: kind}) and odd-mode images that load."""
    from PIL import Image

    make_image_folder(root, train=8, test=3)
    good = (root / "train/circle/000.png").read_bytes()
    bad = {
        "train/circle/zero.png": "zero-byte",
        "train/circle/truncated.png": "truncated",
        "train/stripes/notes.jpg": "unreadable",
        "train/checks/bomb.png": "too-large",  # 144 M pixels: Pillow itself would only warn
        "test/checks/cut.png": "truncated",  # cut inside the header
    }
    (root / "train/circle/zero.png").write_bytes(b"")
    (root / "train/circle/truncated.png").write_bytes(good[: len(good) // 2])
    (root / "train/stripes/notes.jpg").write_text("this is not a picture\n")
    (root / "train/checks/bomb.png").write_bytes(bomb_png())
    (root / "test/checks/cut.png").write_bytes((root / "test/checks/000.png").read_bytes()[:20])
    rgb = Image.open(root / "train/circle/001.png").convert("RGB")
    rgb.convert("CMYK").save(root / "train/circle/cmyk.jpg")
    rgb.convert("RGBA").save(root / "train/stripes/rgba.png")
    rgb.convert("L").save(root / "train/checks/gray.png")
    rgb.convert("P").save(root / "train/checks/palette.gif")
    return root, bad


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["check-data", *args])
    return result.exit_code, result.output


def test_check_data_lists_every_broken_file_with_its_kind(tmp_path: Path) -> None:
    root, bad = corrupt_folder(tmp_path / "data")
    code, out = invoke(str(root))
    assert code == 3, out
    for name, kind in bad.items():
        lines = [line for line in out.splitlines() if str(root / name) in line]
        assert lines and lines[0].split()[0] == kind, (name, lines)
    assert "5 image(s) cannot be used" in out.splitlines()[0]
    for mode in ("CMYK", "RGBA", "L", "P"):
        assert f"1 image(s) in mode {mode} (converted to RGB when loaded)" in out
    # Class counts are files on disk per class folder, broken ones included.
    assert any(line.split()[:2] == ["circle", "11"] for line in out.splitlines())


def test_check_data_json_is_the_whole_report(tmp_path: Path) -> None:
    root, bad = corrupt_folder(tmp_path / "data")
    code, out = invoke(f"imagefolder:{root}", "--json")
    assert code == 3
    report = json.loads(out)
    assert report["ok"] is False
    assert {(Path(p["path"]).relative_to(root).as_posix(), p["kind"]) for p in report["problems"]} == set(bad.items())
    train = report["splits"][0]
    assert train["name"] == "train" and train["images"] == 3 * 8 + 4 + 4
    assert train["modes"] == {"CMYK": 1, "RGBA": 1, "L": 1, "P": 1}
    assert train["class_counts"] == {"checks": 11, "circle": 11, "stripes": 10}
    assert report["imbalance"] == pytest.approx(11 / 10)


def test_converted_modes_really_load_as_rgb(tmp_path: Path) -> None:
    root, _ = corrupt_folder(tmp_path / "data")
    for name in ("train/circle/cmyk.jpg", "train/stripes/rgba.png", "train/checks/gray.png", "train/checks/palette.gif"):
        image = open_rgb(root / name)
        assert image.mode == "RGB" and image.size == (24, 24)


def test_a_clean_dataset_exits_0(tmp_path: Path) -> None:
    code, out = invoke("demo")
    assert code == 0, out
    assert out.splitlines()[0].endswith("all images readable")
    report = check_dataset("demo")
    assert report.ok and report.imbalance == 1.0 and not report.cross_duplicates and not report.warnings
    assert [s.name for s in report.splits] == ["train", "test"]
    assert sum(report.splits[0].class_counts.values()) == len(list((DEMO_DIR / "train").rglob("*.jpg")))


def test_duplicates_between_train_and_test_and_across_classes(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", train=6, test=2)
    shutil.copy(root / "train/circle/003.png", root / "test/circle/leak.png")
    shutil.copy(root / "train/checks/001.png", root / "test/stripes/leak.png")
    shutil.copy(root / "train/stripes/002.png", root / "train/checks/mislabelled.png")
    report = check_dataset(str(root))
    assert report.ok
    pairs = {(Path(a).relative_to(root).as_posix(), Path(b).relative_to(root).as_posix()) for a, b in report.cross_duplicates}
    assert pairs == {("train/circle/003.png", "test/circle/leak.png"), ("train/checks/001.png", "test/stripes/leak.png")}
    assert [{Path(a).parent.name, Path(b).parent.name} for a, b in report.cross_class_duplicates] == [{"checks", "stripes"}]
    assert any("2 test image(s) are exact copies of training images" in w for w in report.warnings)
    code, out = invoke(str(root))
    assert code == 0 and "exact duplicates between train and test (2):" in out


def test_imbalance_and_empty_classes_are_warned(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", train=8, layout="train-only")
    for path in sorted((root / "train/stripes").iterdir())[:6]:
        path.unlink()
    (root / "train/empty").mkdir()
    report = check_dataset(f"imagefolder:{root}")
    assert report.imbalance is None  # an empty class makes the ratio meaningless
    assert any("class(es) with no images: empty" in w for w in report.warnings)
    (root / "train/empty").rmdir()
    report = check_dataset(f"imagefolder:{root}")
    assert report.imbalance == 4.0
    assert any(w.startswith("classes are imbalanced: largest/smallest = 4.0") for w in report.warnings)


def test_a_missing_folder_is_a_one_line_error() -> None:
    code, out = invoke("/no/such/folder")
    assert code == 3
    assert out.strip().splitlines()[-1].startswith("tlwork: error: /no/such/folder: no such folder")


@pytest.mark.shared
def test_the_real_cifar_jpegs_are_clean(shared_dir: Path) -> None:
    report = check_dataset(str(shared_dir / "data" / "cifar10-jpg"))
    assert report.ok and sum(report.splits[0].class_counts.values()) == 5000
    assert set(report.splits[0].class_counts.values()) == {500}
