"""Model bundles and weight files: what a run leaves behind, and what ``--weights PATH`` reads.

A bundle (model.safetensors + model.json) must rebuild the exact model and let evaluation
reproduce the accuracy its run reported. A weights file must load tensor for tensor, drop a
classifier head of another shape, reject a file for another architecture with a clear
message, and never unpickle arbitrary objects.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Iterable

import pytest
import torch
from safetensors.torch import load_file, save_file
from tinydata import TINY_BACKBONE, FinishedRun, make_image_folder
from torch import nn

from core.data.transforms import Preprocessing
from core.errors import ConfigError, WeightsUnavailable
from core.events import EvaluationEnded
from core.inference.evaluate import evaluate
from core.models.build import build_model
from core.models.shipped import resolve_weights, shipped_weights
from core.runs.bundle import bundle_dir, load_bundle, read_meta, save_bundle


def scored(events: Iterable[Any]) -> EvaluationEnded:
    result = list(events)[-1]
    assert isinstance(result, EvaluationEnded)
    return result


def test_bundle_round_trip(tmp_path: Path) -> None:
    model, info = build_model(TINY_BACKBONE, 4, "none")
    with torch.no_grad():  # make the weights differ from any fresh initialisation
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    pre = Preprocessing(48, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), "bicubic")
    names = ["ant", "bee", "cat", "dog"]
    path = save_bundle(tmp_path / "b", model, info.arch(), names, pre, {"val_accuracy": 0.5})
    assert path == tmp_path / "b" / "model.json"

    loaded = load_bundle(tmp_path / "b")
    assert loaded.class_names == names and loaded.preprocessing == pre
    assert loaded.meta["val_accuracy"] == 0.5 and loaded.meta["arch"]["name"] == "test_resnet"
    assert not loaded.model.training
    original, again = model.state_dict(), loaded.model.state_dict()
    assert original.keys() == again.keys()
    assert all(torch.equal(original[k], again[k]) for k in original)
    x = torch.randn(2, 3, 48, 48)
    model.eval()
    assert torch.equal(model(x), loaded.model(x))


def test_a_bundle_is_found_from_its_folder_or_either_file(finished_run: FinishedRun) -> None:
    run_dir = finished_run.run_dir
    for ref in (run_dir, run_dir / "model.json", run_dir / "model.safetensors"):
        assert bundle_dir(ref) == run_dir
    assert read_meta(run_dir)["class_names"] == ["checks", "circle", "stripes"]


def test_a_damaged_bundle_is_a_clear_error(finished_run: FinishedRun, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(finished_run.run_dir, copy)
    (copy / "model.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ConfigError, match="damaged"):
        load_bundle(copy)
    (copy / "model.json").write_text("{")
    with pytest.raises(ConfigError, match="damaged"):
        load_bundle(copy)
    with pytest.raises(ConfigError, match="no model.json"):
        load_bundle(tmp_path)


def test_evaluating_a_run_reproduces_its_reported_accuracy(finished_run: FinishedRun) -> None:
    finished = finished_run.finished
    result = scored(evaluate(str(finished_run.run_dir), device="cpu"))
    assert result.top1 == finished.val_accuracy
    assert result.loss == pytest.approx(finished.val_loss, rel=1e-6)
    assert (result.split, result.images) == ("validation", 12)
    assert sum(map(sum, result.confusion)) == 12
    assert result.top5 == 1.0  # three classes: the true one is always in the top five


def test_last_and_a_run_name_resolve_to_the_same_model(finished_run: FinishedRun) -> None:
    runs_dir = str(finished_run.runs_dir)
    by_last = scored(evaluate("last", runs_dir=runs_dir, device="cpu"))
    by_name = scored(evaluate("tiny", runs_dir=runs_dir, device="cpu"))
    assert by_last.top1 == by_name.top1 == finished_run.finished.val_accuracy


def test_evaluating_on_a_named_dataset_scores_its_test_split(finished_run: FinishedRun) -> None:
    result = scored(evaluate(str(finished_run.run_dir), finished_run.config.dataset, device="cpu"))
    assert result.split == "test" and result.top1 == finished_run.finished.val_accuracy


def test_evaluating_on_a_folder_without_a_test_split_scores_all_of_it(finished_run: FinishedRun, tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "holdout", layout="flat", train=5, seed=9)
    result = scored(evaluate(str(finished_run.run_dir), f"imagefolder:{folder}", device="cpu"))
    assert (result.split, result.images) == ("all", 15)
    assert result.class_names == ("checks", "circle", "stripes")


# --weights PATH


def backbone_equal(model: nn.Module, state: dict[str, torch.Tensor], head: str) -> None:
    own = model.state_dict()
    body = [k for k in state if not k.startswith(head + ".")]
    assert body and set(body) == {k for k in own if not k.startswith(head + ".")}
    for key in body:
        assert torch.equal(own[key], state[key]), key


def test_a_torch_saved_state_dict_loads_and_its_1000_class_head_is_dropped(tmp_path: Path) -> None:
    torch.manual_seed(1)
    imagenet_shaped, _ = build_model("resnet18", 1000, "none")
    state = imagenet_shaped.state_dict()
    torch.save(state, tmp_path / "resnet18.pth")
    model, info = build_model("resnet18", 3, str(tmp_path / "resnet18.pth"))
    backbone_equal(model, state, info.head)
    assert model.fc.weight.shape == (3, 512)


def test_a_safetensors_file_loads_and_its_head_is_dropped(tmp_path: Path) -> None:
    torch.manual_seed(2)
    source, _ = build_model(TINY_BACKBONE, 1000, "none")
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    model, info = build_model(TINY_BACKBONE, 3, str(tmp_path / "w.safetensors"))
    backbone_equal(model, state, info.head)
    assert model.fc.weight.shape[0] == 3


def test_wrapped_and_prefixed_state_dicts_load(tmp_path: Path) -> None:
    torch.manual_seed(3)
    source, info = build_model(TINY_BACKBONE, 3, "none")
    state = source.state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ddp.pt")
    model, _ = build_model(TINY_BACKBONE, 3, str(tmp_path / "ddp.pt"))
    backbone_equal(model, state, info.head)
    assert torch.equal(model.fc.weight, state["fc.weight"])  # same shape: the head is kept too


def test_weights_for_another_architecture_are_a_clear_error(tmp_path: Path) -> None:
    other, _ = build_model("timm:test_efficientnet", 3, "none")
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "other.safetensors"))
    with pytest.raises(WeightsUnavailable) as info:
        build_model(TINY_BACKBONE, 3, str(tmp_path / "other.safetensors"))
    message = str(info.value)
    assert "does not fit this backbone" in message and "missing" in message and "--backbone" in message
    assert "\n" not in message


class Payload:
    """An arbitrary object: weights_only loading must refuse to rebuild it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        # Unpickling this would create the marker file.
        return (open, (str(self.marker), "w"))


def test_a_pickle_with_arbitrary_objects_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    model, _ = build_model(TINY_BACKBONE, 3, "none")
    torch.save({**model.state_dict(), "payload": Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(WeightsUnavailable, match="weights_only=True"):
        build_model(TINY_BACKBONE, 3, str(tmp_path / "evil.pth"))
    assert not marker.exists()


def test_unreadable_or_missing_weight_files_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsUnavailable, match="not a readable safetensors file"):
        build_model(TINY_BACKBONE, 3, str(tmp_path / "junk.safetensors"))
    with pytest.raises(ConfigError, match="no such file"):
        build_model(TINY_BACKBONE, 3, str(tmp_path / "absent.pth"))
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(WeightsUnavailable, match="mapping of names to tensors"):
        build_model(TINY_BACKBONE, 3, str(tmp_path / "list.pth"))


def test_imagenet_weights_of_the_shipped_backbone_load_offline_upcast_to_float32() -> None:
    shipped = shipped_weights("timm:tf_efficientnet_lite0")
    assert shipped is not None and shipped.path.stat().st_size < 10_000_000  # float16: half the 18.8 MB float32 file
    state = load_file(str(shipped.path))
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    model, info = build_model("timm:tf_efficientnet_lite0", 10, "imagenet")  # no download: this machine has no network
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    backbone_equal(model, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, info.head)
    assert state[f"{info.head}.weight"].shape[0] == 1000 and model.get_submodule(info.head).out_features == 10
    assert (info.mean, info.std) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_b0", "timm:tf_efficientnet_lite1", "timm:efficientnet_lite0"])
def test_no_other_backbone_is_given_the_shipped_weights(backbone: str) -> None:
    assert shipped_weights(backbone) is None
    assert resolve_weights(backbone, "imagenet") == "imagenet"  # downloaded as before, or a clear error offline


@pytest.mark.shared
def test_the_shipped_file_is_the_shared_float32_file_rounded_to_float16(shared_dir: Path) -> None:
    """Provenance (core/models/pretrained/NOTICE.md): every tensor is the source's, in float16."""
    path = shared_dir / "models" / "tf_efficientnet_lite0.in1k.safetensors"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    shipped = shipped_weights("timm:tf_efficientnet_lite0")
    assert shipped is not None
    source, stored = load_file(str(path)), load_file(str(shipped.path))
    assert source.keys() == stored.keys()
    for key, value in source.items():
        assert torch.equal(stored[key], value.half() if value.is_floating_point() else value), key


def test_bundle_files_are_readable_like_any_file_the_user_writes(finished_run) -> None:
    import os
    import stat

    umask = os.umask(0o022)
    os.umask(umask)
    for name in ("model.safetensors", "model.json"):
        mode = stat.S_IMODE((finished_run.run_dir / name).stat().st_mode)
        assert mode == 0o666 & ~umask, oct(mode)
