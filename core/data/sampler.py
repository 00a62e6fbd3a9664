"""Sample order: the seeded per-epoch order (EpochSampler) and which rows of each global batch a data-parallel rank takes (Shard)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """A shuffled order that depends only on (seed, epoch), so a resumed run sees the same order.

    With a ``core.training.strategy.Shard`` of several ranks, iterating yields this rank's rows of
    each global batch of ``batch_size`` (``local_order``); ``order`` stays the whole permutation.
    """

    def __init__(self, size: int, seed: int, shard: Any = None, batch_size: int = 0) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0
        self.skip = 0
        self.shard = shard
        self.batch_size = batch_size  # the global batch, which the shard deals out

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Order for ``epoch``; ``skip`` drops the first samples (already trained on)."""
        self.epoch, self.skip = epoch, skip

    @property
    def usable(self) -> int:
        """Samples per epoch: all but one when the last batch would hold a single image.

        BatchNorm cannot train on one image at 1x1 spatial size (ResNet at 32 px), so such a
        trailing sample sits the epoch out; it is a different random image each epoch.
        """
        single = self.batch_size > 1 and self.size % self.batch_size == 1
        return self.size - 1 if single else self.size

    def order(self) -> list[int]:
        """The permutation for the current epoch (``usable`` samples)."""
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.size, generator=gen)[: self.usable].tolist()

    def local_order(self) -> list[int]:
        """This rank's samples for the epoch (the full permutation for one process)."""
        if self.shard is None or self.shard.world == 1:
            return self.order()
        return self.shard.split(self.order(), self.batch_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.local_order()[self.skip:])

    def __len__(self) -> int:
        if self.shard is None or self.shard.world == 1:
            return self.usable - self.skip
        return len(self.local_order()) - self.skip


class BalancedSampler(EpochSampler):
    """``--sampler balanced``: each epoch draws as many samples, every class equally likely.

    torch's ``WeightedRandomSampler`` with weights ``1 / class count`` and replacement, drawn
    from a generator seeded by (seed, epoch) as ``EpochSampler``'s order is, so a resumed run
    draws the same samples; with several workers the global order is dealt out as usual.
    """

    def __init__(self, targets: Sequence[int], seed: int, shard: Any = None, batch_size: int = 0) -> None:
        super().__init__(len(targets), seed, shard, batch_size)
        counts = torch.bincount(torch.as_tensor(list(targets), dtype=torch.long)).double()
        self.weights = 1.0 / counts[torch.as_tensor(list(targets), dtype=torch.long)]

    def order(self) -> list[int]:
        """This epoch's draw (``usable`` samples, with replacement)."""
        from torch.utils.data import WeightedRandomSampler

        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return list(WeightedRandomSampler(self.weights.tolist(), self.usable, replacement=True, generator=gen))


@dataclass(frozen=True)
class Shard:
    """This rank's share of the data: ``rank`` of ``world`` (0 of 1 for a single process)."""

    rank: int = 0
    world: int = 1

    def local_batch(self, global_batch: int) -> int:
        """The per-rank batch: the global batch over the ranks, rounded up."""
        return -(-global_batch // self.world)

    def of(self, items: Sequence[int]) -> list[int]:
        """This rank's round-robin share of ``items`` (validation, feature extraction): no padding."""
        return list(items[self.rank::self.world])

    def rows(self, n: int) -> list[int]:
        """Positions this rank takes from a global batch of ``n``, padded with position 0 to ``ceil(n / world)``."""
        mine = list(range(self.rank, n, self.world))
        return mine + [0] * (-(-n // self.world) - len(mine))

    def split(self, order: Sequence[int], global_batch: int) -> list[int]:
        """This rank's sample order: its rows of each global batch of ``order``, one after another."""
        if self.world == 1:
            return list(order)
        out: list[int] = []
        for start in range(0, len(order), global_batch):
            chunk = order[start:start + global_batch]
            out += [chunk[i] for i in self.rows(len(chunk))]
        return out

    def counts(self, size: int, global_batch: int, batch: int) -> tuple[int, int]:
        """(real samples of this rank, samples of the whole global batch) in 0-based batch ``batch``."""
        n = max(0, min(global_batch, size - batch * global_batch))
        return len(range(self.rank, n, self.world)), n


