"""Accelerator choice and the settings that make each one fast.

``pick_device`` resolves ``auto`` to cuda, then mps, then cpu and fails with a one-line
message when a named device is not there. ``autocast`` gives bf16 autocast on CUDA (and a
no-op elsewhere); ``memory_stats`` reads device memory (CUDA allocator plus NVML where
available, else process memory and CPU use) for the progress displays.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

from core.errors import ConfigError, RunFault


def pick_device(name: str = "auto") -> torch.device:
    """The torch device for ``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no CUDA GPU is visible to PyTorch; use --device cpu or auto")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
        return dev
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError("--device mps: Apple MPS is not available here; use --device cpu or auto")
        return torch.device("mps")
    return torch.device("cpu")


def device_name(device: torch.device) -> str:
    """A human name: the GPU model, or ``CPU (N threads)``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return f"CPU ({torch.get_num_threads()} threads)"


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA when enabled; a null context elsewhere (fp32 on CPU keeps tests exact)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def configure(device: torch.device, benchmark: bool = False) -> None:
    """Process-wide speed settings for the device: TF32 matmuls, and cudnn autotuning on request.

    Autotuning is off by default: on an H100 with torch 2.11 it spent 10-70 s per run tuning
    every conv shape (train, last partial batch, validation), more than a short run trains.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = benchmark
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def channels_last_ok(device: torch.device, wanted: bool = True) -> bool:
    """Whether to use channels-last tensors: on CUDA and on CPU (oneDNN's convolutions run about
    twice as fast in NHWC there, measured on EfficientNet-Lite0 and ResNet-18); not on MPS."""
    return wanted and device.type in ("cuda", "cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNGs and return a CPU generator for data order and splits."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


_NVML: Any = None


def _nvml_handle(index: int) -> Any:
    global _NVML
    if _NVML is None:
        try:
            import pynvml

            pynvml.nvmlInit()
            _NVML = pynvml
        except Exception:  # no driver, no library: NVML figures are optional
            _NVML = False
    if not _NVML:
        return None
    try:
        return _NVML.nvmlDeviceGetHandleByIndex(index)
    except Exception:
        return None


def memory_stats(device: torch.device) -> dict[str, float]:
    """Memory and load figures in MiB and percent; keys depend on the device.

    CUDA: ``used``, ``peak``, ``total`` (allocator) and ``util`` (NVML, when available).
    CPU and MPS: ``rss`` (process memory) and ``cpu`` (process CPU percent).
    """
    mib = 1024 * 1024
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        stats = {
            "used": torch.cuda.memory_allocated(index) / mib,
            "peak": torch.cuda.max_memory_allocated(index) / mib,
            "total": torch.cuda.get_device_properties(index).total_memory / mib,
        }
        handle = _nvml_handle(index)
        if handle is not None:
            with contextlib.suppress(Exception):
                stats["util"] = float(_NVML.nvmlDeviceGetUtilizationRates(handle).gpu)
        return stats
    return process_stats()


_PROC: Any = None


def process_stats() -> dict[str, float]:
    """This process's resident memory (MiB) and CPU use (percent of one core)."""
    global _PROC
    try:
        import psutil
    except ImportError:
        return {}
    if _PROC is None:
        _PROC = psutil.Process(os.getpid())
        _PROC.cpu_percent(None)
    return {"rss": _PROC.memory_info().rss / (1024 * 1024), "cpu": _PROC.cpu_percent(None)}


_OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory", "failed to allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's OutOfMemoryError and the allocator errors MPS and the CPU raise instead."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    if isinstance(exc, (RuntimeError, MemoryError)):
        text = str(exc).lower()
        return isinstance(exc, MemoryError) or any(m in text for m in _OOM_MARKERS)
    return False


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
    """True unless torchrun started this process as a rank other than 0 (readable before joining)."""
    found = env_world()
    return found is None or found[0] == 0
