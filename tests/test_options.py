"""Run options through ``train()`` on real tiny models on CPU: ``partial`` freezing, ``normalize``,
``label_smoothing``, ``channels_last``, ``cudnn_benchmark`` and ``compile``.

Each test reads what a user can see: the events, the run's config.json and its bundle
(model.json, model.safetensors). The starting weights come from the ``build_fn`` argument of
``train()``, which records the model the engine built before it trained a step.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from core import events as ev
from core.config import RunConfig
from core.models.build import build_model
from core.training.train import train

TINY_STAGES: tuple[tuple[str, ...], ...] = (("conv1.", "bn1."), ("layer1.",), ("layer2.",), ("layer3.",), ("layer4.",))
"""timm's test_resnet, stem to last stage, as parameter-name prefixes; its head is ``fc``."""


def finish(config: RunConfig, **kwargs: Any) -> tuple[ev.RunFinished, list[Any]]:
    """Train to the end; (the RunFinished event, every event). Every batch is reported."""
    events = list(train(config, emit_interval=0.0, **kwargs))
    assert isinstance(events[-1], ev.RunFinished), events[-1]
    return events[-1], events


def final_weights(finished: ev.RunFinished) -> dict[str, torch.Tensor]:
    return load_file(str(Path(finished.run_dir) / "model.safetensors"))


def recording(into: dict[str, torch.Tensor]) -> Callable[..., Any]:
    """A ``build_fn`` that builds the real model and copies its state before training starts."""

    def build(*args: Any, **kwargs: Any) -> Any:
        model, info = build_model(*args, **kwargs)
        into.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return model, info

    return build


@pytest.mark.parametrize("unfreeze", [1, 2])
def test_partial_trains_the_last_stages_and_the_head_and_nothing_else(
    tiny_config: Callable[..., RunConfig], unfreeze: int
) -> None:
    initial: dict[str, torch.Tensor] = {}
    finished, _ = finish(tiny_config(mode="partial", unfreeze_stages=unfreeze, seed=3, epochs=2), build_fn=recording(initial))
    final = final_weights(finished)
    assert final.keys() == initial.keys()
    trained = ("fc.", *(p for stage in TINY_STAGES[-unfreeze:] for p in stage))
    moved = {k for k in final if not torch.equal(final[k], initial[k])}
    # Frozen stages keep weights and BatchNorm statistics (their BatchNorm runs in eval mode).
    assert sorted(k for k in moved if not k.startswith(trained)) == []
    # In the trained ones every convolution and every BatchNorm statistic moves, and the head.
    # (Not every BatchNorm scale: timm zero-initialises each block's last BatchNorm, which can
    # starve the one before it of gradient; a finetune run leaves it in place too.)
    must_move = [
        k for k in final
        if k.startswith(trained) and (final[k].dim() == 4 or k.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked"))
    ]  # fmt: skip
    assert len(must_move) >= 4 * unfreeze
    assert sorted(k for k in [*must_move, "fc.weight", "fc.bias"] if k not in moved) == []


def _pixel_stats(folder: Path) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of every training image, in [0, 1] units, measured here."""
    import numpy as np
    from PIL import Image

    pixels = np.concatenate([
        np.asarray(Image.open(p).convert("RGB"), dtype=np.float64).reshape(-1, 3) / 255.0
        for p in sorted((folder / "train").glob("*/*.png"))
    ])  # fmt: skip
    return pixels.mean(0).tolist(), pixels.std(0).tolist()


def test_normalize_backbone_uses_the_backbones_mean_and_std_and_dataset_the_datasets(
    tiny_config: Callable[..., RunConfig], tiny_folder: Path
) -> None:
    import torchvision

    imagenet = torchvision.models.get_model_weights("resnet18").DEFAULT.transforms()
    preprocessing = {}
    for normalize in ("backbone", "dataset"):
        finished, _ = finish(tiny_config(backbone="resnet18", normalize=normalize, name=normalize, seed=1))
        preprocessing[normalize] = json.loads((Path(finished.run_dir) / "model.json").read_text())["preprocessing"]
    assert preprocessing["backbone"]["mean"] == pytest.approx(list(imagenet.mean))
    assert preprocessing["backbone"]["std"] == pytest.approx(list(imagenet.std))
    mean, std = _pixel_stats(tiny_folder)  # the engine rounds its measurement to 4 decimals
    assert preprocessing["dataset"]["mean"] == pytest.approx(mean, abs=1e-4)
    assert preprocessing["dataset"]["std"] == pytest.approx(std, abs=1e-4)
    assert preprocessing["dataset"]["mean"] != pytest.approx(list(imagenet.mean), abs=0.01)  # the two really differ


def test_label_smoothing_changes_the_first_loss_by_what_smoothing_adds(tiny_config: Callable[..., RunConfig]) -> None:
    first = {}
    for smoothing in (0.0, 0.3):
        _, events = finish(tiny_config(label_smoothing=smoothing, name=f"ls-{smoothing}", seed=2))
        first[smoothing] = next(e for e in events if isinstance(e, ev.BatchEnded)).losses[0]
    # Same seed: the same weights see the same first batch, so only the loss differs. Smoothed
    # cross-entropy is (1 - e) * CE + e * mean over classes of -log p, and that mean is at least
    # log K (Jensen), so the smoothed loss is at least (1 - e) * CE + e * log 3 with 3 classes.
    assert first[0.3] != first[0.0]
    assert first[0.3] >= 0.7 * first[0.0] + 0.3 * math.log(3) - 1e-5, first


def test_channels_last_on_or_off_trains_the_same_model_on_cpu(tiny_config: Callable[..., RunConfig]) -> None:
    runs = {}
    for channels_last in (True, False):
        finished, _ = finish(tiny_config(channels_last=channels_last, name=f"cl-{channels_last}", seed=4, epochs=2))
        runs[channels_last] = finished
        config = json.loads((Path(finished.run_dir) / "config.json").read_text())
        assert config["channels_last"] is channels_last
    on, off = runs[True], runs[False]
    assert on.val_accuracy == off.val_accuracy
    assert on.val_loss == pytest.approx(off.val_loss, rel=1e-5)
    # NHWC and NCHW convolutions add in different orders: measured 1.1e-6 apart after six
    # steps; 1e-5 leaves room for other oneDNN builds and still catches a layout bug.
    a, b = final_weights(on), final_weights(off)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4, msg=key)


def test_cudnn_benchmark_runs_and_changes_nothing_on_cpu(tiny_config: Callable[..., RunConfig]) -> None:
    plain, _ = finish(tiny_config(name="plain", seed=5))
    tuned, _ = finish(tiny_config(name="tuned", seed=5, cudnn_benchmark=True))
    assert json.loads((Path(tuned.run_dir) / "config.json").read_text())["cudnn_benchmark"] is True
    # cuDNN autotuning picks convolution algorithms on CUDA only: a CPU run is bit for bit the same.
    a, b = final_weights(plain), final_weights(tuned)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="cudnn_benchmark acts on CUDA only")
def test_cudnn_benchmark_turns_cudnn_autotuning_on_for_the_run(tiny_config: Callable[..., RunConfig]) -> None:
    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        finish(tiny_config(device="cuda", name="tuned", cudnn_benchmark=True, seed=5))
        assert torch.backends.cudnn.benchmark is True
        finish(tiny_config(device="cuda", name="plain", seed=5))
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = before


@pytest.mark.slow  # inductor compiles C++ kernels on CPU: about 90 s here
def test_compile_trains_the_same_model_as_eager(tiny_config: Callable[..., RunConfig]) -> None:
    eager, eager_events = finish(tiny_config(name="eager", seed=6))
    compiled, compiled_events = finish(tiny_config(name="compiled", seed=6, compile=True))
    assert [type(e) for e in compiled_events if not isinstance(e, ev.MessageLogged)] == [
        type(e) for e in eager_events if not isinstance(e, ev.MessageLogged)
    ]
    assert compiled.val_accuracy == eager.val_accuracy
    # Fused kernels round differently from eager ones, but only in the last bits.
    assert compiled.val_loss == pytest.approx(eager.val_loss, rel=1e-4)
    a, b = final_weights(eager), final_weights(compiled)
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4, msg=key)
