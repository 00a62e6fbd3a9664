"""Fast data paths: device-resident batches and cached-feature linear probing (issue 5).

The fast paths must change speed only: the same images give the same tensors, a cached
probe reaches the uncached probe's head weights, the backbone runs once per split, and a
resumed epoch draws the same augmentation as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from core.config import RunConfig
from core.data.datasets import load_splits
from core.data.fastdata import DeviceImages, decode_all, epoch_generator, random_crop_flip, random_crop_flip_params
from core.data.transforms import Preprocessing, eval_transform
from core.events import MessageLogged, RunFinished
from core.training.train import train

CPU = torch.device("cpu")


def _config(tmp_path, **changes) -> RunConfig:
    base = RunConfig(
        mode="linear-probe", backbone="resnet18", weights="none", dataset="demo", image_size=32, batch_size=64,
        epochs=2, device="cpu", runs_dir=str(tmp_path / "runs"), seed=3, val_split=0.0,  # all 800 train, 200 test
    )
    return dataclasses.replace(base, **changes)


def _finish(config: RunConfig) -> tuple[RunFinished, list[str]]:
    events = list(train(config))
    paths = [e.message for e in events if isinstance(e, MessageLogged) and "data path" in e.message]
    assert isinstance(events[-1], RunFinished)
    return events[-1], paths


def test_cached_probe_reaches_the_uncached_head_weights(tmp_path):
    cached, cached_paths = _finish(_config(tmp_path, name="cached"))
    plain, plain_paths = _finish(_config(tmp_path, name="plain", cache_features=False))
    assert cached_paths == ["stage probe: features data path"]
    assert plain_paths == ["stage probe: device data path"]
    a = load_file(f"{cached.run_dir}/model.safetensors")
    b = load_file(f"{plain.run_dir}/model.safetensors")
    assert not torch.equal(a["fc.weight"], torch.zeros_like(a["fc.weight"]))
    torch.testing.assert_close(a["fc.weight"], b["fc.weight"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a["fc.bias"], b["fc.bias"], atol=1e-5, rtol=1e-4)
    for key in a:  # the backbone, BatchNorm statistics included, is untouched by either path
        if not key.startswith("fc."):
            assert torch.equal(a[key], b[key]), key
    assert cached.val_accuracy == pytest.approx(plain.val_accuracy, abs=0.011)


def test_cached_probe_runs_the_backbone_once_per_split(tmp_path, monkeypatch):
    import torchvision

    calls = {"n": 0}
    real = torchvision.models.resnet.ResNet._forward_impl

    def counting(self, x):
        calls["n"] += x.shape[0]
        return real(self, x)

    monkeypatch.setattr(torchvision.models.resnet.ResNet, "_forward_impl", counting)
    _finish(_config(tmp_path, epochs=3))
    # train + validation images, once, not once per epoch; and per split, 2 images through the
    # model and its BatchNorm-folded copy, checking that the fold changes nothing
    assert calls["n"] == 800 + 200 + 2 * (2 + 2)


@pytest.mark.parametrize("backbone", ["resnet18", "timm:tf_efficientnet_lite0", "timm:vit_tiny_patch16_224"])
def test_batchnorm_folding_keeps_the_features_and_drops_every_batchnorm(backbone):
    from core.models.build import build_model
    from core.training.features import fold_batchnorm, head_block, trunk_features

    torch.manual_seed(0)
    model, info = build_model(backbone, 10, "none")
    model.eval()
    for m in model.modules():  # statistics away from (0, 1), as a pretrained network has
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
    block = model.get_submodule(head_block(model, info))
    images = torch.randn(4, 3, 32, 32) if backbone != "timm:vit_tiny_patch16_224" else torch.randn(2, 3, 224, 224)
    folded, folded_block = fold_batchnorm(model, block, images[:2])
    with torch.inference_mode():
        expected = trunk_features(model, block, images)
        got = trunk_features(folded, folded_block, images)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    batchnorms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    if backbone.startswith("timm:vit"):
        assert folded is model  # nothing to fold: no copy
    else:
        assert folded is not model and batchnorms == 0
        assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) > 0  # the model itself is untouched


def test_device_batches_equal_the_per_image_transform():
    splits = load_splits("demo")
    pre = Preprocessing(48, splits.mean, splits.std, "bilinear")
    images, labels = decode_all(splits.test, pre.size)
    assert images.dtype == torch.uint8 and images.shape == (200, 3, 32, 32)
    device_images = DeviceImages(images, labels, pre, CPU)
    index = torch.tensor([0, 7, 150])
    batch, batch_labels = device_images.batch(index)
    tf = eval_transform(pre)
    expected = torch.stack([tf(splits.test[i][0]) for i in index.tolist()])
    torch.testing.assert_close(batch, expected, atol=1e-4, rtol=1e-4)
    assert batch_labels.tolist() == [splits.test[i][1] for i in index.tolist()]


def test_crop_flip_is_a_padded_crop_mirrored_half_the_time():
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(x, 2, torch.Generator().manual_seed(5))
    oy, ox, flip = random_crop_flip_params(64, 2, CPU, torch.Generator().manual_seed(5))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(64):
        crop = padded[i, :, oy[i]:oy[i] + 8, ox[i]:ox[i] + 8]
        assert torch.equal(out[i], crop.flip(-1) if flip[i] else crop)
    assert 10 < int(flip.sum()) < 54


def test_resumed_epoch_draws_the_same_augmentation():
    images = torch.randint(0, 256, (50, 3, 16, 16), dtype=torch.uint8)
    data = DeviceImages(images, torch.arange(50), Preprocessing(16, (0.5,) * 3, (0.25,) * 3), CPU)
    order = torch.randperm(50, generator=torch.Generator().manual_seed(1)).tolist()
    full = list(data.batches(order, 8, "crop-flip", epoch_generator(CPU, 0, 2)))
    resumed = list(data.batches(order, 8, "crop-flip", epoch_generator(CPU, 0, 2), skip_batches=3))
    assert len(resumed) == len(full) - 3
    for (a, la), (b, lb) in zip(full[3:], resumed):
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_augmented_probe_trains_only_the_head(tmp_path):
    finished, paths = _finish(_config(tmp_path, augment="crop-flip", epochs=1))
    assert paths == ["stage probe: device data path"]
    from core.models.build import build_model

    torch.manual_seed(3)
    fresh, _ = build_model("resnet18", 10, "none")
    trained = load_file(f"{finished.run_dir}/model.safetensors")
    for key, value in fresh.state_dict().items():
        if key.startswith("fc."):
            assert not torch.equal(value, trained[key])
        else:
            assert torch.equal(value, trained[key]), key


def test_stream_and_device_paths_agree_on_a_finetune(tmp_path):
    device, dpaths = _finish(_config(tmp_path, mode="finetune", augment="none", epochs=1, name="dev", data="device"))
    stream, spaths = _finish(_config(tmp_path, mode="finetune", augment="none", epochs=1, name="stream", data="stream"))
    assert dpaths == ["stage finetune: device data path"] and spaths == ["stage finetune: stream data path"]
    a = load_file(f"{device.run_dir}/model.safetensors")
    b = load_file(f"{stream.run_dir}/model.safetensors")
    from core.models.build import build_model

    torch.manual_seed(3)  # the engine seeds with config.seed before it builds the model
    fresh = build_model("resnet18", 10, "none")[0].state_dict()
    assert a.keys() == b.keys() == fresh.keys()
    # Every parameter and BatchNorm statistic moved, so comparing them all tests all 13 steps.
    assert [k for k in a if a[k].is_floating_point() and torch.equal(a[k], fresh[k])] == []
    # Bit-identical, every parameter and buffer: both paths turn uint8 pixels into floats with
    # the same to_dtype(scale=True) and normalize, so on CPU the batches, and hence every step,
    # are equal (measured: max difference 0.0 with 1 and 2 torch threads). A tolerance here
    # would hide the data paths drifting apart; if they must differ by rounding one day,
    # measure the drift and say so.
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert device.val_accuracy == stream.val_accuracy


@pytest.mark.parametrize("data", ["device", "stream"])
def test_a_last_batch_of_one_image_sits_out_instead_of_crashing_batchnorm(tmp_path, data):
    # 800 demo images in batches of 17 leave one over; ResNet-18 at 32 px has 1x1 maps in
    # layer4, where BatchNorm cannot train on a single image.
    events = list(train(_config(tmp_path, mode="finetune", epochs=1, batch_size=17, data=data, augment="none")))
    assert isinstance(events[-1], RunFinished)
    batches = [e for e in events if type(e).__name__ == "BatchEnded"]
    assert batches[-1].batches == 47 and sum(len(b.losses) for b in batches) == 47


def test_a_stop_during_feature_extraction_ends_the_run_at_once(tmp_path):
    import threading

    from core.events import BatchEnded, RunStopped

    stop = threading.Event()
    stop.set()
    events = list(train(_config(tmp_path, epochs=3), stop=stop))
    assert isinstance(events[-1], RunStopped) and events[-1].checkpoint == ""
    assert not any(isinstance(e, BatchEnded) for e in events)
    import json

    assert json.loads((tmp_path / "runs").glob("*/status.json").__next__().read_text())["status"] == "stopped"
