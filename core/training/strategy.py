"""Data-parallel training over several processes with torch.distributed (launched by torchrun).

``ensure(device)`` joins the process group that torchrun describes in the environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): NCCL when the
workers train on CUDA (each on ``cuda:LOCAL_RANK``), gloo on the CPU, with a timeout on every
collective (``TLWORK_DIST_TIMEOUT`` seconds, default 600), so a worker that dies or hangs ends
the job instead of stalling it. ``teardown`` leaves the group; ``core.training.train`` calls it in a
``finally``. With no such environment everything here is a no-op for one process.

``Shard`` says which samples a rank takes. The global batch is the per-device batch times
the world size: global batch ``k`` of ``EpochSampler``'s order is dealt round-robin over the
ranks (rank ``r`` takes positions ``r, r + W, ...``), so every optimiser step sees the very
samples a single process with that global batch sees, and DDP's gradient average equals the
single-process gradient (``scaled_loss`` weights each rank's share by its size; a rank whose
share of a short last batch is smaller pads it with a sample of weight zero). Validation and
feature extraction take ``r::W`` of the natural order and are summed (``reduce_tally``) or
gathered back into that order (``gather_rows``). A gloo "control" group carries the host-side
decisions every rank must take together (stop now, skip this batch), so they never wait for
the GPU. ``fault_point`` is a test-only fault-injection switch (``TLWORK_FAIL_RANK``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import torch
from torch import nn

from core.data.sampler import Shard
from core.errors import RunFault, WorkerLost

ENV_TIMEOUT = "TLWORK_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 600.0
"""Seconds a collective may wait for the other workers (NCCL's own default is 10 minutes)."""

ENV_FAIL_RANK = "TLWORK_FAIL_RANK"
ENV_FAIL_AT = "TLWORK_FAIL_AT"
ENV_FAIL_MODE = "TLWORK_FAIL_MODE"

_LOST_MARKERS = ("gloo", "nccl", "processgroup", "c10d")






@dataclass(frozen=True)
class Context:
    """Where this process stands in the job; ``world == 1`` is a plain single-process run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""
    control: Any = None  # the gloo group for host-side flags (the default group when it is gloo)

    @property
    def active(self) -> bool:
        """True when there are other workers to agree with."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run directory and yields events."""
        return self.rank == 0

    @property
    def shard(self) -> Shard:
        """This rank's share of the data."""
        return Shard(self.rank, self.world)


_SINGLE = Context()
_context = _SINGLE


def context() -> Context:
    """The current process's place in the job (a single-process context before ``ensure``)."""
    return _context


def env_world() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's environment, or None outside torchrun."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    try:
        world = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise RunFault("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers; start workers with torchrun or --nproc-per-node") from None
    return rank, world, local


def env_is_main() -> bool:
    """True unless torchrun started this process as a rank other than 0 (readable before ``ensure``)."""
    found = env_world()
    return found is None or found[0] == 0


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
    from core.device import pick_device
    from core.errors import ConfigError

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


def ensure(device_name: str) -> tuple[Context, bool]:
    """Join torchrun's process group if the environment describes one; (context, whether we joined).

    The caller that joined (the second value is True) must call ``teardown``.
    """
    global _context
    import torch.distributed as dist

    found = env_world()
    if found is None or found[1] <= 1 or _context.active:
        return _context, False
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
    _context = Context(rank, world, local, backend, control)
    return _context, True


def teardown() -> None:
    """Leave the process group (safe to call when none was joined)."""
    global _context
    import torch.distributed as dist

    _context = _SINGLE
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):  # a broken group must not hide the error being raised
            dist.destroy_process_group()


def is_lost_worker(exc: BaseException) -> bool:
    """True for the errors a collective raises when a peer died, left or timed out."""
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _LOST_MARKERS)


def worker_lost(ctx: Context, exc: BaseException) -> WorkerLost:
    """The one-line error of a rank whose peers are gone."""
    import re

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # gloo and NCCL lead with a source location and trail advice; keep the one sentence that says what happened.
    first = re.sub(r"^\[[^\]]*\]\s*", "", text).split(". ")[0][:200]
    return WorkerLost(
        f"another worker failed, left or stopped answering ({first}); "
        f"the job stopped; see the first failing rank's error (collective timeout {timeout_seconds():g}s, {ENV_TIMEOUT})"
    )


def agree(flag: bool, ctx: Context | None = None) -> bool:
    """True on every rank when ``flag`` is true on any (a host-side all-reduce; free for one process)."""
    ctx = ctx or _context
    if not ctx.active:
        return flag
    import torch.distributed as dist

    value = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=ctx.control)
    return bool(value.item())


def agree_min(value: int, ctx: Context | None = None) -> int:
    """The smallest ``value`` over the ranks (e.g. the batch size every GPU can hold)."""
    ctx = ctx or _context
    if not ctx.active:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=ctx.control)
    return int(t.item())


def all_sum(tensor: torch.Tensor, ctx: Context | None = None) -> torch.Tensor:
    """Sum ``tensor`` over the ranks in place and return it."""
    ctx = ctx or _context
    if ctx.active:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast(value: Any, ctx: Context | None = None) -> Any:
    """Rank 0's ``value`` (a picklable object) on every rank."""
    ctx = ctx or _context
    if not ctx.active:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0, group=ctx.control)
    return box[0]


@contextlib.contextmanager
def local_main_first(enabled: bool = True, ctx: Context | None = None) -> Iterator[None]:
    """Run the block on each machine's local rank 0 first (downloads into a shared cache), then the rest."""
    ctx = ctx or _context
    if not (ctx.active and enabled):
        yield
        return
    import torch.distributed as dist

    # A download may outlast the collective timeout: this one barrier waits up to an hour.
    wait = timedelta(seconds=max(3600.0, timeout_seconds()))
    group = ctx.control if ctx.control is not None else dist.group.WORLD
    if ctx.local_rank != 0:
        dist.monitored_barrier(group=group, timeout=wait, wait_all_ranks=True)
    yield
    if ctx.local_rank == 0:
        dist.monitored_barrier(group=group, timeout=wait, wait_all_ranks=True)


def gather_rows(local: torch.Tensor, total: int, ctx: Context | None = None) -> torch.Tensor:
    """The full tensor of ``total`` rows in natural order, from each rank's ``Shard.of`` rows."""
    ctx = ctx or _context
    if not ctx.active:
        return local
    import torch.distributed as dist

    width = -(-total // ctx.world)
    padded = local.new_zeros((width, *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(ctx.world)]
    dist.all_gather(parts, padded.contiguous())
    out = local.new_empty((total, *local.shape[1:]))
    for rank, part in enumerate(parts):
        count = len(range(rank, total, ctx.world))
        out[rank::ctx.world] = part[:count]
    return out


def reduce_tally(tally: Any, ctx: Context | None = None) -> Any:
    """Sum a ``core.inference.evaluate.Tally`` over the ranks in place: figures over the whole validation set."""
    ctx = ctx or _context
    if not ctx.active:
        return tally
    sums = torch.stack([tally.loss, tally.top1.double(), tally.top5.double(),
                        torch.tensor(float(tally.count), dtype=torch.float64, device=tally.loss.device)])
    all_sum(sums, ctx)
    all_sum(tally.confusion, ctx)
    tally.loss = sums[0].clone()
    tally.top1 = sums[1].round().long()
    tally.top5 = sums[2].round().long()
    tally.count = int(sums[3].item())
    return tally


def sum_totals(loss_sum: torch.Tensor, correct: torch.Tensor, seen: int, ctx: Context | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """An epoch's running (loss sum, correct, seen) summed over the ranks (new tensors)."""
    ctx = ctx or _context
    if not ctx.active:
        return loss_sum, correct, seen
    sums = torch.stack([loss_sum.double(), correct.double(), torch.tensor(float(seen), dtype=torch.float64, device=loss_sum.device)])
    all_sum(sums, ctx)
    return sums[0], sums[1].round().long(), int(sums[2].item())


def scaled_loss(per_sample: torch.Tensor, real: int, global_count: int, world: int) -> torch.Tensor:
    """This rank's loss term: DDP averages gradients over ``world`` ranks, so the sum is the global mean's."""
    return per_sample[:real].sum() * (world / max(1, global_count))


def wrap(module: nn.Module, ctx: Context, device: torch.device, example: torch.Tensor, broadcast_buffers: bool) -> nn.Module:
    """``module`` in DistributedDataParallel (``module`` itself for one process).

    ``find_unused_parameters`` costs a graph walk every step, so it is on only when a dry
    forward and backward on ``example`` (in eval mode, so no statistics move) leaves a
    trainable parameter without a gradient.
    """
    if not ctx.active:
        return module
    from torch.nn.parallel import DistributedDataParallel

    unused = agree(_has_unused_parameters(module, example), ctx)
    ids = [device.index] if device.type == "cuda" else None
    # torch 2.13 renamed broadcast_buffers (running BatchNorm statistics follow rank 0's each step).
    import inspect

    sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters else "broadcast_buffers"
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=unused, **{sync: broadcast_buffers})


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


def reseed_rank(seed: int, step: int, ctx: Context) -> None:
    """Give ranks other than 0 their own global RNG stream (dropout masks differ across ranks).

    Rank 0 keeps the stream a single process would have, so a checkpoint it writes resumes
    the same way on any number of workers.
    """
    if ctx.active and ctx.rank:
        torch.manual_seed(seed * 1_000_003 + ctx.rank * 7_919 + step)


def fault_point(where: str, epoch: int = 0, batch: int = 0, ctx: Context | None = None) -> None:
    """Test-only fault injection: ``TLWORK_FAIL_RANK=R`` makes rank R fail at a chosen point.

    ``TLWORK_FAIL_AT=EPOCH:BATCH`` (default ``1:1``) picks the training batch;
    ``TLWORK_FAIL_MODE`` is ``raise`` (a RuntimeError, the default), ``kill`` (SIGKILL
    itself, as the kernel's OOM killer would) or ``hang`` (sleep forever: the others must
    time out). Never set these outside tests.
    """
    target = os.environ.get(ENV_FAIL_RANK)
    if not target or where != "batch":
        return
    ctx = ctx or _context
    if str(ctx.rank) != target.strip():
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
    raise RuntimeError(f"injected failure on rank {ctx.rank} at epoch {epoch}, batch {batch} ({ENV_FAIL_RANK})")


class NullMetrics:
    """What ranks other than 0 write to metrics.jsonl: nothing."""

    def __init__(self, path: Any) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        """Drop the record."""

    def close(self) -> None:
        """Nothing to close."""
