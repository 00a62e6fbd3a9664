"""``tlwork run --nproc-per-node N``: start N data-parallel workers through PyTorch's elastic launcher.

The launcher is torch's own (``torch.distributed.run``, what the ``torchrun`` command runs):
this module turns the run's settings back into ``python -m tui.cli run ...`` (the same
command line ``RunConfig.command_line`` shows) and hands it to torchrun with
``--nproc-per-node``, ``--nnodes``, ``--node-rank`` and ``--rdzv-endpoint`` passed through.
Every worker trains (``core.training.strategy``); rank 0 alone prints progress and writes the run
directory, the others' stdout goes to /dev/null (their errors still reach stderr). When a
worker fails, torchrun stops the others and this launcher exits with the first failing
worker's exit code (a worker killed by signal S gives 128 + S), so scripts see the same
codes as a single-process run. Ctrl+C, SIGTERM or SIGHUP reach the workers through
torchrun; they stop at the same batch, rank 0 saves a checkpoint, and the launcher exits 4.

Starting the workers with a plain ``torchrun --nproc-per-node N -m tui.cli run ...`` works
the same way (``in_worker`` is then true and these options are ignored). Nothing here
imports torch until a launch happens, so ``tlwork --help`` stays fast.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from typing import Any

from core.errors import EXIT_STOPPED

LAUNCH_OPTIONS = ("nproc_per_node", "nnodes", "node_rank", "rdzv_endpoint", "dist_timeout")
"""``tlwork run`` options that belong to the launcher, not to the run's configuration."""

_FLAG_ONLY = {"compile", "cudnn_benchmark", "skip_nonfinite", "strict", "sync_bn"}  # no --no- form on the CLI


def in_worker() -> bool:
    """True in a process that torchrun started (it sets LOCAL_RANK, RANK and WORLD_SIZE)."""
    return all(k in os.environ for k in ("LOCAL_RANK", "RANK", "WORLD_SIZE"))


def worker_tag() -> str:
    """``[rank N] `` inside a job of several workers (prefixes error lines), else empty."""
    if not in_worker() or os.environ.get("WORLD_SIZE", "1") == "1":
        return ""
    return f"[rank {os.environ['RANK']}] "


def silence_other_ranks() -> None:
    """Send the stdout of ranks other than 0 to /dev/null: rank 0 shows the run for everyone."""
    if not in_worker() or os.environ.get("RANK", "0") == "0":
        return
    sys.stdout.flush()
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)


def run_argv(command_line: str, as_json: bool) -> list[str]:
    """The worker's ``run`` arguments from ``RunConfig.command_line()`` (``tlwork run ...``)."""
    words = shlex.split(command_line)
    if words[:2] != ["tlwork", "run"]:
        raise ValueError(f"not a tlwork run command line: {command_line!r}")
    return ["run", *words[2:], *(["--json"] if as_json else [])]


def resume_argv(ref: str, runs_dir: str, overrides: dict[str, Any], as_json: bool) -> list[str]:
    """The worker's ``run --resume`` arguments, with the overrides the user gave."""
    argv = ["run", "--resume", ref, "--runs-dir", runs_dir]
    for name, value in sorted(overrides.items()):
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            if value or name not in _FLAG_ONLY:
                argv.append(flag if value else "--no-" + name.replace("_", "-"))
        elif value is not None:
            argv += [flag, str(value)]
    return argv + (["--json"] if as_json else [])


def launch(
    worker_argv: list[str],
    nproc_per_node: int,
    nnodes: str = "1",
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
    dist_timeout: float | None = None,
) -> int:
    """Run ``python -m tui.cli WORKER_ARGV`` on ``nproc_per_node`` workers; the job's exit code."""
    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = ["--nproc-per-node", str(nproc_per_node), "--nnodes", str(nnodes), "--node-rank", str(node_rank), "--max-restarts", "0"]
    if rdzv_endpoint:
        args += ["--rdzv-endpoint", rdzv_endpoint]
    parsed = torchrun.parse_args([*args, "-m", "tui.cli", *worker_argv])
    # Each worker gets its share of the cores (torchrun's default is one thread each, with a warning).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // max(1, nproc_per_node))))
    if dist_timeout is not None:
        os.environ["TLWORK_DIST_TIMEOUT"] = f"{dist_timeout:g}"
    # torchrun's agent logs a banner and a multi-line report per failure; the launcher's one line says it.
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("torch.distributed")]:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        torchrun.run(parsed)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode
        if code != EXIT_STOPPED:
            how = f"exit code {failure.exitcode}" if failure.exitcode > 0 else f"killed by signal {-failure.exitcode}"
            sys.stderr.write(f"tlwork: error: worker rank {rank} failed ({how}); torchrun stopped the other workers\n")
        return code
    except SignalException as exc:
        sys.stderr.write(f"tlwork: {exc.sigval.name}: the workers were asked to stop and save a checkpoint\n")
        return EXIT_STOPPED
    return 0
