"""Where a run's processes stand and what they do together: the strategy object.

The training loop is written once, for any number of processes; everything that differs
between one process and a data-parallel job launched by torchrun lives here, as Lightning's
``Strategy`` does. ``SingleProcess`` is the identity: it reduces nothing, agrees with
nobody and wraps nothing. ``DataParallel`` joins the process group that torchrun describes
in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``): NCCL when the workers train on CUDA (each on ``cuda:LOCAL_RANK``), gloo on
the CPU, with a timeout on every collective (``TLWORK_DIST_TIMEOUT`` seconds, default 600),
so a worker that dies or hangs ends the job instead of stalling it. ``join(device)`` picks
one; ``close()`` leaves the group however the run ends.

The global batch is the per-device batch times the world size: global batch ``k`` of
``EpochSampler``'s order is dealt round-robin over the ranks (``core.data.sampler.Shard``),
so every optimiser step sees the very samples a single process with that global batch sees,
and DDP's gradient average equals the single-process gradient (``scaled_loss`` weights each
rank's share by its size; a rank whose share of a short last batch is smaller pads it with a
sample of weight zero). Validation and feature extraction take ``r::W`` of the natural order
and are summed (``reduce_tally``) or gathered back into that order (``gather_rows``). A gloo
"control" group carries the host-side decisions every rank must take together (stop now,
the batch size), so they never wait for the GPU. Only rank 0 (``is_main``) writes the run
directory and yields events. ``fault_point`` is a test-only fault-injection switch
(``TLWORK_FAIL_RANK``).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import signal
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from torch import nn

from core.data.sampler import Shard
from core.device import env_world, pick_device
from core.errors import ConfigError, DataError, RunFault, WorkerLost

if TYPE_CHECKING:
    import threading

    from core.inference.evaluate import Tally

ENV_TIMEOUT = "TLWORK_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 600.0
"""Seconds a collective may wait for the other workers (NCCL's own default is 10 minutes)."""

ENV_FAIL_RANK = "TLWORK_FAIL_RANK"
ENV_FAIL_AT = "TLWORK_FAIL_AT"
ENV_FAIL_MODE = "TLWORK_FAIL_MODE"

_LOST_MARKERS = ("gloo", "nccl", "processgroup", "c10d")


class SingleProcess:
    """One process on one device: every collective is the identity."""

    rank = 0
    world = 1
    local_rank = 0
    backend = ""

    @property
    def is_main(self) -> bool:
        """True on the one process that writes the run directory and yields events (rank 0)."""
        return self.rank == 0

    @property
    def shard(self) -> Shard:
        """This process's share of the data."""
        return Shard(self.rank, self.world)

    def device(self, name: str) -> torch.device:
        """The device this process trains on."""
        return pick_device(name)

    def describe(self, global_batch: int) -> str | None:
        """A line for the run log about the workers, or None for one process."""
        return None

    def main_value(self, value: Any, otherwise: Any) -> Any:
        """``value`` on rank 0, ``otherwise`` on the other ranks (what only rank 0 does or counts)."""
        return value if self.is_main else otherwise

    def from_main(self, make: Callable[[], Any]) -> Any:
        """``make()`` run on rank 0 alone (creating the run directory), its result on every rank."""
        return make()

    def events(self, events: Iterator[Any]) -> Iterator[Any]:
        """The run's events on rank 0; the other ranks train in step with it, silently."""
        yield from events

    def status(self) -> dict[str, Any]:
        """Fields for status.json (the number of workers, when there are several)."""
        return {}

    def agree(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any."""
        return flag

    def agree_min(self, value: int) -> int:
        """The smallest ``value`` over the ranks (the batch size every device can hold)."""
        return value

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` (a picklable object) on every rank."""
        return value

    @contextlib.contextmanager
    def main_first(self, enabled: bool = True) -> Iterator[None]:
        """Run the block on each machine's local rank 0 first (downloads into a shared cache), then the rest."""
        yield

    def gather_rows(self, local: torch.Tensor, total: int) -> torch.Tensor:
        """The full tensor of ``total`` rows in natural order, from each rank's ``Shard.of`` rows."""
        return local

    def reduce_tally(self, tally: Tally) -> Tally:
        """Validation figures over the whole validation set (each rank scored its share)."""
        return tally

    def sum_totals(self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """An epoch's running (loss sum, correct, seen) over all ranks."""
        return loss_sum, correct, seen

    def prepare(self, model: nn.Module, sync_bn: bool) -> nn.Module:
        """The model as this strategy trains it (SyncBatchNorm layers under ``--sync-bn`` with workers)."""
        return model

    def wrap(self, module: nn.Module, device: torch.device, example: torch.Tensor, broadcast_buffers: bool) -> nn.Module:
        """What training batches run through (DistributedDataParallel's wrapper with workers)."""
        return module

    def counts(self, usable: int, global_batch: int, batch: int, local: int) -> tuple[int, int]:
        """(this rank's real samples, the global batch's samples) of 0-based batch ``batch`` holding ``local`` rows."""
        return local, local

    def scaled_loss(self, per_sample: torch.Tensor, real: int, global_count: int) -> torch.Tensor:
        """The loss to back-propagate: the batch mean for one process."""
        return per_sample.mean()

    def mean_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The global batch's mean loss from this rank's ``scaled_loss``, as one process would report it."""
        return loss

    def accumulating(self, forward: nn.Module, sync: bool) -> contextlib.AbstractContextManager[Any]:
        """Where a batch's forward and backward run: ``sync`` false on an accumulation group's inner batches."""
        return contextlib.nullcontext()

    def reseed(self, seed: int, step: int) -> None:
        """Give ranks other than 0 their own RNG stream (dropout masks differ); rank 0 keeps one process's."""

    def stop_during_extraction(self, stop: threading.Event | None) -> threading.Event | None:
        """The stop feature extraction may honour (workers gather features together: they stop at a batch instead)."""
        return stop

    def check_batch(self, unreadable: bool, epoch: int, batch: int) -> None:
        """Fail when a worker's whole share of a batch was unreadable (the others wait for its gradients)."""

    def fault_point(self, epoch: int, batch: int) -> None:
        """Test-only fault injection at a training batch (``TLWORK_FAIL_RANK``)."""
        fault_point(self.rank, epoch, batch)

    def lost(self, exc: BaseException) -> WorkerLost | None:
        """The one-line error to raise instead of ``exc`` when it says a peer is gone."""
        return None

    def close(self) -> None:
        """Leave the process group (nothing for one process)."""


class DataParallel(SingleProcess):
    """One of several processes started by torchrun, training through DistributedDataParallel."""

    def __init__(self, rank: int, world: int, local_rank: int, backend: str, control: Any) -> None:
        self.rank, self.world, self.local_rank, self.backend = rank, world, local_rank, backend
        self.control = control  # the gloo group for host-side flags (None: the default group is gloo)

    def device(self, name: str) -> torch.device:
        """``cuda:LOCAL_RANK`` when the run is on CUDA, else the CPU."""
        return rank_device(name, self.local_rank, self.world)

    def describe(self, global_batch: int) -> str | None:
        """The workers, the backend and how the global batch is shared."""
        local = self.shard.local_batch(global_batch)
        return f"data-parallel on {self.world} workers ({self.backend}): global batch {global_batch}, {local} per worker"

    def status(self) -> dict[str, Any]:
        """The number of workers."""
        return {"workers": self.world}

    def from_main(self, make: Callable[[], Any]) -> Any:
        """Rank 0 makes it; every rank gets rank 0's result."""
        return self.broadcast(make() if self.is_main else None)

    def events(self, events: Iterator[Any]) -> Iterator[Any]:
        """Rank 0 yields; the others consume their own generator without yielding."""
        if self.is_main:
            yield from events
            return
        for _ in events:
            pass

    def agree(self, flag: bool) -> bool:
        """A host-side MAX over the control group."""
        import torch.distributed as dist

        value = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.control)
        return bool(value.item())

    def agree_min(self, value: int) -> int:
        """A host-side MIN over the control group."""
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.control)
        return int(t.item())

    def broadcast(self, value: Any) -> Any:
        """Rank 0's object, over the control group."""
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    @contextlib.contextmanager
    def main_first(self, enabled: bool = True) -> Iterator[None]:
        """Local rank 0 first, then the others (one barrier that waits up to an hour: a download may be slow)."""
        if not enabled:
            yield
            return
        import torch.distributed as dist

        wait = timedelta(seconds=max(3600.0, timeout_seconds()))
        group = self.control if self.control is not None else dist.group.WORLD
        if self.local_rank != 0:
            dist.monitored_barrier(group=group, timeout=wait, wait_all_ranks=True)
        yield
        if self.local_rank == 0:
            dist.monitored_barrier(group=group, timeout=wait, wait_all_ranks=True)

    def _all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather_rows(self, local: torch.Tensor, total: int) -> torch.Tensor:
        """Every rank's rows, padded to one width for ``all_gather``, dealt back into natural order."""
        import torch.distributed as dist

        width = -(-total // self.world)
        padded = local.new_zeros((width, *local.shape[1:]))
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded.contiguous())
        out = local.new_empty((total, *local.shape[1:]))
        for rank, part in enumerate(parts):
            out[rank::self.world] = part[: len(range(rank, total, self.world))]
        return out

    def reduce_tally(self, tally: Tally) -> Tally:
        """Sum the tally's loss, hits, confusion and count over the ranks, in place."""
        sums = torch.stack([tally.loss, tally.top1.double(), tally.top5.double(),
                            torch.tensor(float(tally.count), dtype=torch.float64, device=tally.loss.device)])
        self._all_sum(sums)
        self._all_sum(tally.confusion)
        tally.loss = sums[0].clone()
        tally.top1 = sums[1].round().long()
        tally.top5 = sums[2].round().long()
        tally.count = int(sums[3].item())
        return tally

    def sum_totals(self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The epoch's totals summed over the ranks (new tensors)."""
        sums = torch.stack([loss_sum.double(), correct.double(), torch.tensor(float(seen), dtype=torch.float64, device=loss_sum.device)])
        self._all_sum(sums)
        return sums[0], sums[1].round().long(), int(sums[2].item())

    def prepare(self, model: nn.Module, sync_bn: bool) -> nn.Module:
        """SyncBatchNorm layers under ``--sync-bn``: statistics over the global batch."""
        return convert_sync_bn(model) if sync_bn else model

    def wrap(self, module: nn.Module, device: torch.device, example: torch.Tensor, broadcast_buffers: bool) -> nn.Module:
        """``module`` in DistributedDataParallel.

        ``find_unused_parameters`` costs a graph walk every step, so it is on only when a dry
        forward and backward on ``example`` (in eval mode, so no statistics move) leaves a
        trainable parameter without a gradient on any rank.
        """
        from torch.nn.parallel import DistributedDataParallel

        unused = self.agree(_has_unused_parameters(module, example))
        ids = [device.index] if device.type == "cuda" else None
        # torch 2.13 renamed broadcast_buffers (running BatchNorm statistics follow rank 0's each step).
        names = inspect.signature(DistributedDataParallel).parameters
        sync = "forward_sync_buffers" if "forward_sync_buffers" in names else "broadcast_buffers"
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=unused, **{sync: broadcast_buffers})

    def counts(self, usable: int, global_batch: int, batch: int, local: int) -> tuple[int, int]:
        """This rank's real rows (its share may be padded) and the global batch's size."""
        real, global_count = self.shard.counts(usable, global_batch, batch)
        return min(real, local), global_count

    def scaled_loss(self, per_sample: torch.Tensor, real: int, global_count: int) -> torch.Tensor:
        """This rank's loss term: DDP averages gradients over the ranks, so the sum is the global mean's."""
        return per_sample[:real].sum() * (self.world / max(1, global_count))

    def mean_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The ranks' terms summed, over the world size: the global batch's mean loss."""
        return self._all_sum(loss.detach().clone()) / self.world

    def accumulating(self, forward: nn.Module, sync: bool) -> contextlib.AbstractContextManager[Any]:
        """DistributedDataParallel's ``no_sync`` on inner batches: gradients are all-reduced once per update."""
        no_sync = getattr(forward, "no_sync", None)
        return no_sync() if not sync and no_sync is not None else contextlib.nullcontext()

    def reseed(self, seed: int, step: int) -> None:
        """Ranks other than 0 get their own stream; rank 0 keeps one process's, so its checkpoints resume anywhere."""
        if self.rank:
            torch.manual_seed(seed * 1_000_003 + self.rank * 7_919 + step)

    def stop_during_extraction(self, stop: threading.Event | None) -> threading.Event | None:
        """None: the workers extract features together, and stop at a batch boundary instead."""
        return None

    def check_batch(self, unreadable: bool, epoch: int, batch: int) -> None:
        """A worker with no readable image in a batch cannot take part in its gradient all-reduce."""
        if unreadable:
            raise DataError(f"every image of a batch on worker {self.rank} was unreadable (epoch {epoch}, batch "
                            f"{batch}); run `tlwork check-data` on the dataset and remove them")

    def lost(self, exc: BaseException) -> WorkerLost | None:
        """The one-line WorkerLost for a collective's error when a peer died, left or timed out."""
        return worker_lost(exc) if is_lost_worker(exc) else None

    def close(self) -> None:
        """Leave the process group (a broken group must not hide the error being raised)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()


def join(device_name: str) -> SingleProcess:
    """The strategy for this process: ``DataParallel`` (joining torchrun's group) or ``SingleProcess``.

    The caller must ``close()`` it however the run ends.
    """
    import torch.distributed as dist

    found = env_world()
    if found is None or found[1] <= 1:
        return SingleProcess()
    rank, world, local = found
    device = rank_device(device_name, local, world)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = timedelta(seconds=timeout_seconds())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=timeout, **kwargs)
    # Host-side flags travel over gloo, so agreeing on "stop" never waits for the GPU.
    control = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
    return DataParallel(rank, world, local, backend, control)


def timeout_seconds() -> float:
    """The collective timeout: ``TLWORK_DIST_TIMEOUT`` seconds, else ``DEFAULT_TIMEOUT``."""
    text = os.environ.get(ENV_TIMEOUT)
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise RunFault(f"{ENV_TIMEOUT}={text!r} is not a positive number of seconds; try 600")
    return value


def rank_device(name: str, local_rank: int, world: int) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` when the run is on CUDA, else what ``name`` picks."""
    if world == 1:
        return pick_device(name)
    # Each worker takes its own GPU, whatever index --device named.
    device = pick_device("cuda" if name.startswith("cuda") else name)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"worker LOCAL_RANK {local_rank} has no GPU: only {torch.cuda.device_count()} visible; "
                "lower --nproc-per-node to the number of GPUs"
            )
        return torch.device("cuda", local_rank)
    if device.type != "cpu":
        raise ConfigError(f"--device {name}: several workers need CUDA GPUs or the CPU; use --device cpu")
    return device


def is_lost_worker(exc: BaseException) -> bool:
    """True for the errors a collective raises when a peer died, left or timed out."""
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _LOST_MARKERS)


def worker_lost(exc: BaseException) -> WorkerLost:
    """The one-line error of a rank whose peers are gone."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # gloo and NCCL lead with a source location and trail advice; keep the one sentence that says what happened.
    first = re.sub(r"^\[[^\]]*\]\s*", "", text).split(". ")[0][:200]
    return WorkerLost(
        f"another worker failed, left or stopped answering ({first}); "
        f"the job stopped; see the first failing rank's error (collective timeout {timeout_seconds():g}s, {ENV_TIMEOUT})"
    )


def _has_unused_parameters(module: nn.Module, example: torch.Tensor) -> bool:
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return False
    modes = [(m, m.training) for m in module.modules()]
    saved = [p.grad for p in params]
    module.eval()
    try:
        for p in params:
            p.grad = None
        out = module(example)
        logits = out if isinstance(out, torch.Tensor) else out[0]
        logits.float().sum().backward()
        return any(p.grad is None for p in params)
    finally:
        for p, g in zip(params, saved):
            p.grad = g
        for m, training in modes:
            m.training = training


def convert_sync_bn(model: nn.Module) -> nn.Module:
    """BatchNorm layers as SyncBatchNorm (timm's converter keeps its fused BatchNorm+activation layers)."""
    try:
        from timm.layers import convert_sync_batchnorm
    except ImportError:  # timm is a dependency; torch's converter handles plain BatchNorm
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return convert_sync_batchnorm(model)


def fault_point(rank: int, epoch: int, batch: int) -> None:
    """Test-only fault injection: ``TLWORK_FAIL_RANK=R`` makes rank R fail at a chosen point.

    ``TLWORK_FAIL_AT=EPOCH:BATCH`` (default ``1:1``) picks the training batch;
    ``TLWORK_FAIL_MODE`` is ``raise`` (a RuntimeError, the default), ``kill`` (SIGKILL
    itself, as the kernel's OOM killer would) or ``hang`` (sleep forever: the others must
    time out). Never set these outside tests.
    """
    target = os.environ.get(ENV_FAIL_RANK)
    if not target or str(rank) != target.strip():
        return
    at = os.environ.get(ENV_FAIL_AT, "1:1").split(":")
    if (epoch, batch) != (int(at[0]), int(at[1] if len(at) > 1 else 1)):
        return
    mode = os.environ.get(ENV_FAIL_MODE, "raise")
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "hang":
        while True:
            time.sleep(3600)
    raise RuntimeError(f"injected failure on rank {rank} at epoch {epoch}, batch {batch} ({ENV_FAIL_RANK})")
