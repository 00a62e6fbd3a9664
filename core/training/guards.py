"""Guards of a training run against non-finite losses and weights, with the wording of the errors they raise."""

from __future__ import annotations

import torch
from torch import nn


def kept(last_checkpoint: str | None) -> str:
    """The clause saying which checkpoint a failed run leaves behind."""
    if last_checkpoint:
        return f"the last good checkpoint {last_checkpoint} is kept"
    return "no checkpoint was saved before it"


def first_nonfinite(losses: list[float], batches: list[int]) -> tuple[int, str] | None:
    """(batch index, value) of the first NaN or infinite loss, or None."""
    for loss, batch in zip(losses, batches):
        if loss != loss or loss in (float("inf"), float("-inf")):
            return batch, str(loss)
    return None


def finite_weights(model: nn.Module) -> bool:
    """True when every floating-point parameter and buffer is finite (one device sync)."""
    tensors = [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all().item())


def nonfinite_advice(last_checkpoint: str | None) -> str:
    """What to try after a non-finite loss."""
    if last_checkpoint:
        return "lower --lr in a new run, or resume with --skip-nonfinite to skip such batches"
    return "lower --lr, or pass --skip-nonfinite to skip such batches"


def nonfinite_message(value: str, epoch: int, batch: int, step: int, last_checkpoint: str | None) -> str:
    """The one-line report of a non-finite loss that stops a run."""
    return (
        f"loss is {value} at epoch {epoch}, batch {batch} (step {step}); the run stopped and "
        f"{kept(last_checkpoint)}; {nonfinite_advice(last_checkpoint)}"
    )


