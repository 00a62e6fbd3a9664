"""Datasets: image-folder layouts, the seeded stratified validation split, the shipped demo
set, and the one-line errors for folders a classifier cannot use.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from tinydata import make_image_folder

from core.data.datasets import load_splits, stratified_split, targets_of
from core.errors import DataError


def per_class(dataset: object) -> dict[int, int]:
    return dict(Counter(targets_of(dataset)))


def test_a_folder_with_train_and_test_holds_out_validation_and_keeps_test(tiny_folder: Path) -> None:
    splits = load_splits(f"imagefolder:{tiny_folder}", val_split=0.25)
    assert splits.class_names == ["checks", "circle", "stripes"]
    # Validation (which picks the kept epoch) is a stratified slice of train; test stays for eval.
    assert (len(splits.train), len(splits.val), len(splits.test), splits.val_source) == (27, 9, 12, "held-out")
    assert per_class(splits.val) == {0: 3, 1: 3, 2: 3} and per_class(splits.test) == {0: 4, 1: 4, 2: 4}
    held = {splits.val.base.samples[i][0] for i in splits.val.indices}
    assert not held & {splits.train.base.samples[i][0] for i in splits.train.indices}


def test_val_split_zero_validates_on_the_test_split_as_the_notebook_does(tiny_folder: Path) -> None:
    splits = load_splits(f"imagefolder:{tiny_folder}", val_split=0.0)
    assert (len(splits.train), len(splits.val), splits.val_source) == (36, 12, "test")
    assert splits.test is splits.val
    assert per_class(splits.val) == {0: 4, 1: 4, 2: 4}
    image, label = splits.train[0]
    assert image.mode == "RGB" and image.size == (24, 24) and label == 0
    # No fixed statistics for a folder: they are measured, in [0, 1] units.
    assert all(0.0 < m < 1.0 for m in splits.mean) and all(0.0 < s < 1.0 for s in splits.std)
    assert splits.native_size is None


def test_a_val_folder_is_the_validation_split(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", layout="train-val", train=4, test=2)
    splits = load_splits(f"imagefolder:{root}")
    assert (len(splits.train), len(splits.val), splits.val_source) == (12, 6, "val")
    assert splits.test is splits.val  # and what eval scores


def test_a_train_folder_alone_is_split_stratified(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", layout="train-only", train=12)
    splits = load_splits(f"imagefolder:{root}", val_split=0.25, seed=0)
    assert splits.val_source == "held-out"
    assert per_class(splits.val) == {0: 3, 1: 3, 2: 3}
    assert per_class(splits.train) == {0: 9, 1: 9, 2: 9}
    train_paths = {splits.train.base.samples[i][0] for i in splits.train.indices}
    val_paths = {splits.val.base.samples[i][0] for i in splits.val.indices}
    assert not train_paths & val_paths and len(train_paths | val_paths) == 36


def test_the_split_depends_only_on_the_seed(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", layout="train-only", train=12)
    first = load_splits(f"imagefolder:{root}", val_split=0.25, seed=5)
    second = load_splits(f"imagefolder:{root}", val_split=0.25, seed=5)
    other = load_splits(f"imagefolder:{root}", val_split=0.25, seed=6)
    assert first.val.indices == second.val.indices
    assert first.val.indices != other.val.indices


def test_class_folders_at_the_root_are_split_too(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", layout="flat", train=10)
    splits = load_splits(f"imagefolder:{root}", val_split=0.2, seed=0)
    assert splits.class_names == ["checks", "circle", "stripes"]
    assert (len(splits.train), len(splits.val), splits.val_source) == (24, 6, "held-out")


def test_stratified_split_holds_out_at_least_one_per_class() -> None:
    train, held = stratified_split([0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1], 0.1, seed=0)
    assert sorted(train + held) == list(range(12))
    assert {0, 1} == {([0] * 3 + [1] * 9)[i] for i in held}


def test_non_images_and_hidden_folders_are_ignored(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", train=3, test=1)
    (root / "train" / "circle" / "notes.txt").write_text("not an image")
    (root / "train" / ".cache").mkdir()
    splits = load_splits(f"imagefolder:{root}")
    assert len(splits.train) + len(splits.val) == 9 and splits.class_names == ["checks", "circle", "stripes"]


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda root: (root / "train" / "a").mkdir(parents=True), "no images found"),
        (lambda root: root.mkdir(), "no images found"),
        (lambda root: make_image_folder(root, classes=("only",), layout="train-only", train=3), "only one class"),
    ],
    ids=["empty-class-folder", "empty-folder", "single-class"],
)
def test_unusable_folders_are_one_line_errors(tmp_path: Path, build: object, match: str) -> None:
    root = tmp_path / "d"
    build(root)  # type: ignore[operator]
    with pytest.raises(DataError, match=match) as info:
        load_splits(f"imagefolder:{root}")
    assert "\n" not in str(info.value)


def test_no_test_split_and_no_val_split_asks_for_one(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", layout="flat", train=2)
    with pytest.raises(DataError, match="--val-split > 0"):
        load_splits(f"imagefolder:{root}", val_split=0.0)


def test_a_missing_folder_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_splits(f"imagefolder:{tmp_path / 'nowhere'}")


def test_a_test_class_unknown_to_training_is_an_error(tiny_folder: Path) -> None:
    make_image_folder(tiny_folder / "test-extra", classes=("zebra",), layout="flat", train=1)
    (tiny_folder / "test-extra" / "zebra").rename(tiny_folder / "test" / "zebra")
    with pytest.raises(DataError, match="'zebra' is not among the training classes"):
        load_splits(f"imagefolder:{tiny_folder}")


def test_demo_has_ten_classes_of_real_cifar_images() -> None:
    splits = load_splits("demo")
    assert splits.class_names == [
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
    ]  # fmt: skip
    assert (len(splits.train), len(splits.val), len(splits.test), splits.val_source) == (720, 80, 200, "held-out")
    assert set(per_class(splits.train).values()) == {72} and set(per_class(splits.val).values()) == {8}
    assert set(per_class(splits.test).values()) == {20}
    image, _ = splits.test[0]
    assert image.size == (32, 32) and splits.native_size == 32
