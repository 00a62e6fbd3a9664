"""Learning-rate schedules, read batch by batch from a real optimiser.

``make_scheduler`` steps every schedule once per batch. Each test records the rate each
batch trains at (the optimiser's rate before the step) and compares it with torch's own
schedulers or with the schedule's defining properties.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, StepLR

from core.config import RunConfig
from core.training.plan import plan_stages
from core.training.schedule import current_lr, make_optimizer, make_scheduler

BASE_LR = 0.1


def lr_sequence(name: str, steps_per_epoch: int, epochs: int, optimizer: str = "sgd", **kwargs: float) -> list[float]:
    """The learning rate of every batch of a run, as the engine would train with it."""
    params = [nn.Parameter(torch.zeros(2))]
    opt = make_optimizer(params, optimizer, BASE_LR)
    scheduler = make_scheduler(opt, name, steps_per_epoch, epochs, **kwargs)  # type: ignore[arg-type]
    out = []
    for _ in range(steps_per_epoch * epochs):
        out.append(current_lr(opt))
        params[0].grad = torch.ones(2)
        opt.step()
        scheduler.step()
    return out


def torch_per_epoch(make: type, steps_per_epoch: int, epochs: int, **kwargs: float) -> list[float]:
    """Torch's scheduler ``make`` stepped once per epoch, its rate repeated for each batch."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=BASE_LR)
    scheduler = make(opt, **kwargs)
    out = []
    for _ in range(epochs):
        out += [opt.param_groups[0]["lr"]] * steps_per_epoch
        opt.step()
        scheduler.step()
    return out


def test_none_keeps_the_rate_constant() -> None:
    assert lr_sequence("none", 4, 3) == [BASE_LR] * 12


def test_step_is_the_notebooks_per_epoch_steplr() -> None:
    ours = lr_sequence("step", 3, 12, step_size=5, gamma=0.1)
    reference = torch_per_epoch(StepLR, 3, 12, step_size=5, gamma=0.1)
    assert ours == pytest.approx(reference, rel=1e-12)
    assert ours[0] == BASE_LR and ours[5 * 3] == pytest.approx(BASE_LR * 0.1) and ours[-1] == pytest.approx(BASE_LR * 0.01)
    # The rate only changes at epoch boundaries.
    changes = [i for i in range(1, len(ours)) if ours[i] != ours[i - 1]]
    assert changes == [15, 30]


def test_cosine_without_warmup_is_per_batch_cosine_annealing_to_zero() -> None:
    steps_per_epoch, epochs = 4, 5
    ours = lr_sequence("cosine", steps_per_epoch, epochs)
    total = steps_per_epoch * epochs
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=BASE_LR)
    reference_scheduler = CosineAnnealingLR(opt, T_max=total, eta_min=0.0)
    reference = []
    for _ in range(total):
        reference.append(opt.param_groups[0]["lr"])
        opt.step()
        reference_scheduler.step()
    assert ours == pytest.approx(reference, abs=1e-12)


def test_cosine_warms_up_linearly_then_decays() -> None:
    steps_per_epoch, epochs, warm_epochs = 4, 6, 1
    lrs = lr_sequence("cosine", steps_per_epoch, epochs, warmup_epochs=warm_epochs)
    warm = steps_per_epoch * warm_epochs
    ramp = lrs[: warm + 1]
    assert all(b > a for a, b in zip(ramp, ramp[1:]))
    steps = [b - a for a, b in zip(ramp, ramp[1:])]
    assert steps == pytest.approx([steps[0]] * len(steps))  # linear
    assert lrs[0] > 0 and lrs[warm] == pytest.approx(BASE_LR)
    decay = lrs[warm:]
    assert all(b < a for a, b in zip(decay, decay[1:]))
    midpoint = warm + (len(lrs) - warm) // 2
    assert lrs[midpoint] == pytest.approx(BASE_LR / 2)
    assert lrs[-1] < BASE_LR * 0.01


def test_onecycle_ramps_to_the_rate_then_anneals() -> None:
    lrs = lr_sequence("onecycle", 10, 4)
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert lrs[peak] == pytest.approx(BASE_LR)
    assert 0.2 * len(lrs) <= peak <= 0.4 * len(lrs)  # torch's default pct_start is 0.3
    assert lrs[0] == pytest.approx(BASE_LR / 25)
    assert lrs[-1] < BASE_LR / 1000
    assert all(b >= a for a, b in zip(lrs[: peak + 1], lrs[1 : peak + 1]))
    assert all(b <= a for a, b in zip(lrs[peak:], lrs[peak + 1 :]))


@pytest.mark.parametrize("name", ["none", "step", "cosine", "onecycle"])
def test_every_schedule_works_with_adamw_and_a_single_batch_epoch(name: str) -> None:
    lrs = lr_sequence(name, 1, 3, optimizer="adamw")
    assert len(lrs) == 3 and all(math.isfinite(x) and x > 0 for x in lrs)


def test_unknown_schedule_is_refused() -> None:
    opt = make_optimizer([nn.Parameter(torch.zeros(1))], "sgd", 0.1)
    with pytest.raises(ValueError, match="unknown scheduler"):
        make_scheduler(opt, "exponential", 1, 1)


def test_probe_stage_keeps_a_constant_rate_whatever_the_finetune_schedule() -> None:
    stages = plan_stages(RunConfig(mode="probe-then-finetune", scheduler="cosine", probe_epochs=2, epochs=3).resolved())
    assert [(s.name, s.mode, s.epochs, s.lr, s.scheduler, s.augment) for s in stages] == [
        ("probe", "linear-probe", 2, 1e-2, "none", "none"),
        ("finetune", "finetune", 3, 2e-3, "cosine", "crop-flip"),
    ]
