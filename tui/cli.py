"""The headless command line: ``tlwork run``, ``eval``, ``runs``, ``backbones``, ``classify``,
``check-data``, ``export``, ``mistakes`` and ``lr-find`` (and the app).

Every command is a thin loop over an engine generator, rendered by ``tui.render``. Choices
and their help come from ``core.registry``, the same lists the Textual menus show. Nothing
here imports torch at module level, so ``tlwork --help`` stays fast.

Exit codes: 0 success; 1 an unexpected error (traceback on stderr); 2 a usage error (bad
option or value, unknown model or dataset); 3 data or weights unavailable (a download
failed, a file is unreadable); 4 the run stopped early on a signal (SIGINT, SIGTERM or
SIGHUP) after saving a checkpoint; 5 ``classify`` could not read some images (each is
named on stderr; the others were classified); 6 the loss became NaN or infinite (the run
stopped; its last good checkpoint is kept); 7 the device ran out of memory (the message
names the batch size and one to try); 8 a checkpoint or run file could not be written (disk
full, file-size limit, read-only folder; the previous checkpoint is intact); 9 another
worker of a data-parallel job failed or stopped answering; 10 ``export``'s parity check
failed (nothing was written); 130 a second Ctrl+C ended it at once. ``check-data`` exits 3 when some images cannot be read. ``tlwork run --nproc-per-node
N`` (``tui.launch``) exits with the code of the first worker that failed.

Resuming: ``tlwork run --resume RUN`` (a run directory, or a run name under ``--runs-dir``)
continues a stopped, killed or failed run in its own directory from ``checkpoint-last``,
with the settings in its config.json: the same sample order, stage, learning-rate schedule
and RNG states, so on the CPU it ends with the same weights, bit for bit, as a run that was
never interrupted. Only options that cannot change a healthy run's result may be given
with ``--resume`` (``--device --workers --checkpoint-every --skip-nonfinite --max-nonfinite
--strict --runs-dir --json``); any other is refused with exit code 2. A finished run, one
still training (its lock is held) or one with no checkpoint yet cannot be resumed. The
trackers (``--log``, ``--mlflow-uri``, ``--mlflow-experiment``) are the run's own too: a
resumed run logs on into the same TensorBoard folder and the same MLflow run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from typing import Any, Callable, Iterator, Optional

import typer

from core import registry
from core.config import RunConfig
from core.errors import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STOPPED,
    EXIT_USAGE,
    ConfigError,
    TlworkError,
    exit_code_of,
)
from tui import launch

app = typer.Typer(
    name="tlwork",
    help="A terminal workbench for transfer learning on image classification. "
    "With no command, opens the Textual app.",
    no_args_is_help=False,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print a one-line error on stderr and return the Exit to raise."""
    typer.echo(f"tlwork: error: {launch.worker_tag()}{message}", err=True)
    return typer.Exit(code)


@contextlib.contextmanager
def user_errors(close: Callable[[], None] | None = None) -> Iterator[None]:
    """Turn an engine's ``TlworkError`` into its one-line message and exit code (``core.errors``).

    The one place the CLI maps errors to exits: ``run``, ``eval``, ``classify`` and
    ``check-data`` all go through it. ``close`` tidies the display first.
    """
    try:
        yield
    except TlworkError as exc:
        if close is not None:
            close()
        raise fail(str(exc), exit_code_of(exc)) from None


def consume(events: Iterator[Any], as_json: bool) -> Any:
    """Render every event of a generator; returns the last one. Maps engine errors to exits."""
    from tui.render import pick_renderer

    renderer = pick_renderer(as_json)
    last = None
    try:
        with user_errors(renderer.close):
            for event in events:
                renderer.handle(event)
                last = event
    except Exception:
        renderer.close()
        raise
    renderer.close()
    return last


class SignalStop:
    """SIGINT, SIGTERM and SIGHUP set ``event`` (stop at the next batch); a second SIGINT exits at once."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> SignalStop:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
        self.event.set()
        if signum == signal.SIGHUP:
            _detach_terminal()
        try:
            typer.echo(
                f"tlwork: {signal.Signals(signum).name}: stopping after this batch and saving a checkpoint"
                + (" (Ctrl+C again to quit at once)" if signum == signal.SIGINT else ""),
                err=True,
            )
        except OSError:  # the terminal is gone: the checkpoint matters more than the message
            pass

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _detach_terminal() -> None:
    """After a hang-up, point stdout and stderr that were a terminal at /dev/null.

    Writing to a terminal whose SSH session is gone fails (EIO); the run must still get to
    its checkpoint, so its progress output goes nowhere instead.
    """
    import os

    try:
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    for fd in (1, 2):
        try:
            if os.isatty(fd):
                os.dup2(null, fd)
        except OSError:
            pass
    os.close(null)


def _choice_help(choices: tuple[registry.Choice, ...]) -> str:
    return registry.describe(choices)


@app.callback(invoke_without_command=True)
def main_callback(ctx: typer.Context) -> None:
    """Open the Textual workbench when no command is given."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        from tui.app import make_app
    except ImportError:
        typer.echo(ctx.get_help())
        raise typer.Exit(EXIT_OK) from None
    make_app().run()


@app.command()
def run(
    ctx: typer.Context,
    mode: str = typer.Option("linear-probe", help=_choice_help(registry.MODES)),
    backbone: str = typer.Option("resnet18", help=_choice_help(registry.BACKBONES) + "; or timm:NAME, hf:ID_OR_PATH"),
    weights: str = typer.Option("imagenet", help="imagenet (download once, then cached), none (random), or PATH to .safetensors / state dict"),
    dataset: str = typer.Option("cifar10", help=_choice_help(registry.DATASETS)),
    data_dir: str = typer.Option("data", help="where CIFAR-10/100 are downloaded or found"),
    val_split: float = typer.Option(0.1, help="fraction of training images held out for validation when the dataset has no test/val split"),
    exclude: Optional[str] = typer.Option(
        None, metavar="FILE", help="leave out the images this text file lists (one path per line; e.g. the marks of "
        "tlwork mistakes or the TUI's Mistakes view) from training and validation; nothing is moved or deleted",
    ),
    augment: Optional[str] = typer.Option(None, help="default: none for probing, crop-flip otherwise. " + _choice_help(registry.AUGMENTATIONS)),
    scheduler: Optional[str] = typer.Option(None, help="default: none for probing, cosine for probe-then-finetune, step otherwise. " + _choice_help(registry.SCHEDULERS)),
    optimizer: str = typer.Option("sgd", help=_choice_help(registry.OPTIMIZERS)),
    epochs: int = typer.Option(5, help="training epochs (for probe-then-finetune: the fine-tuning epochs)"),
    probe_epochs: int = typer.Option(1, help="probe-then-finetune: epochs of linear probing before fine-tuning"),
    lr: Optional[float] = typer.Option(None, help="learning rate; default 1e-3 for linear-probe, 2e-3 for probe-then-finetune, 5e-4 otherwise"),
    probe_lr: Optional[float] = typer.Option(None, help="probe-then-finetune: learning rate of the probe stage (default 1e-2)"),
    momentum: float = typer.Option(0.9, help="SGD momentum"),
    weight_decay: float = typer.Option(0.0, help="weight decay"),
    label_smoothing: float = typer.Option(0.0, help="cross-entropy label smoothing in [0, 1)"),
    batch_size: str = typer.Option(
        "256", help="images per batch, or auto: the largest that fits in GPU memory (doubled until out of memory, "
        "then binary search, as Lightning does; at most 64 off CUDA)"
    ),
    image_size: int = typer.Option(224, help="input size in pixels (images are resized to a square); hf: backbones use their processor's size"),
    normalize: str = typer.Option("dataset", help=_choice_help(registry.NORMALIZATIONS) + "; hf: backbones always use their processor's"),
    step_size: int = typer.Option(5, help="step scheduler: epochs between decays"),
    step_gamma: float = typer.Option(0.1, help="step scheduler: decay factor"),
    warmup_epochs: int = typer.Option(0, help="cosine scheduler: linear warm-up epochs"),
    unfreeze_stages: int = typer.Option(1, help="partial mode: how many of the last backbone stages train"),
    seed: int = typer.Option(0, help="random seed (CPU runs are repeatable)"),
    device: str = typer.Option("auto", help="auto (cuda, then mps, then cpu), cuda, cuda:N, mps or cpu"),
    workers: Optional[int] = typer.Option(None, help="data-loader processes (default: 0 on CPU, up to 8 beside a GPU)"),
    amp: bool = typer.Option(True, help="bf16 autocast on CUDA"),
    channels_last: bool = typer.Option(True, help="channels-last memory format (CUDA and CPU; faster convolutions on both)"),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model"),
    data: str = typer.Option("auto", help=_choice_help(registry.DATA_PATHS)),
    cache_features: bool = typer.Option(
        True, help="linear probe without augmentation: run the frozen backbone once and train the head on cached features"
    ),
    cudnn_benchmark: bool = typer.Option(False, "--cudnn-benchmark", help="let cuDNN autotune conv kernels (pays off on long runs)"),
    sync_bn: bool = typer.Option(False, "--sync-bn", help="several CUDA workers: BatchNorm statistics over the global batch (SyncBatchNorm)"),
    runs_dir: str = typer.Option("runs", help="where run directories are written"),
    name: Optional[str] = typer.Option(None, help="run directory name (default: time-backbone-mode)"),
    checkpoint_every: int = typer.Option(0, help="also write checkpoint-last every N batches (0: at each epoch's end only)"),
    skip_nonfinite: bool = typer.Option(
        False, "--skip-nonfinite", help="skip batches whose loss is NaN or infinite (up to --max-nonfinite) instead of stopping"
    ),
    max_nonfinite: int = typer.Option(10, help="with --skip-nonfinite: stop once more batches than this were skipped"),
    strict: bool = typer.Option(False, "--strict", help="stop on the first unreadable image instead of skipping it"),
    bn: str = typer.Option("auto", help="BatchNorm while the backbone trains: " + _choice_help(registry.BN_POLICIES)),
    keep: str = typer.Option(
        "best", help="which model the bundle keeps: " + _choice_help(registry.KEEP)
        + " (validating on the test split, --val-split 0, always keeps the last)"
    ),
    patience: int = typer.Option(0, help="end a stage after N epochs without validation improvement (per stage; 0: never)"),
    layer_decay: float = typer.Option(
        1.0, help="layer-wise rates while the backbone trains: each backbone stage, counted back from the head, "
        "trains at this times the next one's rate (timm's layer decay; 1: one rate for all)"
    ),
    ema: float = typer.Option(
        0.0, metavar="DECAY", help="keep an exponential moving average of the weights (timm's ModelEmaV3), e.g. 0.999; "
        "validation scores it beside the live weights and the bundle keeps the better (0: off)",
    ),
    ema_warmup: bool = typer.Option(False, "--ema-warmup", help="with --ema: ramp the decay up over the first updates (timm's use_warmup)"),
    mixup: float = typer.Option(
        0.0, metavar="ALPHA", help="MixUp with Beta(ALPHA, ALPHA), e.g. 0.2 (torchvision v2; not on cached features; "
        "train accuracy counts each image's dominant label; 0: off)",
    ),
    cutmix: float = typer.Option(0.0, metavar="ALPHA", help="CutMix with Beta(ALPHA, ALPHA), e.g. 1.0; with --mixup, each mixed batch picks one (0: off)"),
    mix_prob: float = typer.Option(1.0, help="with --mixup/--cutmix: the share of batches mixed"),
    class_weights: str = typer.Option("none", help="class imbalance in the loss: " + _choice_help(registry.CLASS_WEIGHTS)),
    sampler: str = typer.Option("shuffle", help="the training order: " + _choice_help(registry.SAMPLERS)),
    accumulate: int = typer.Option(1, metavar="N", help="gradient accumulation: one optimiser update per N batches (schedules count updates)"),
    clip_grad: float = typer.Option(
        0.0, metavar="NORM", help="clip the gradients' global norm to NORM before each update; the norm before clipping is "
        "in the batch events (0: off)",
    ),
    log: Optional[list[str]] = typer.Option(
        None, "--log", metavar="TRACKER", help="also log the run to an experiment tracker (repeat for both; each is an "
        "optional extra, e.g. pip install 'tlwork[trackers]'): " + _choice_help(registry.TRACKERS),
    ),
    mlflow_uri: Optional[str] = typer.Option(
        None, metavar="URI", help="with --log mlflow: the tracking URI (http://HOST:5000, sqlite:///mlflow.db, ...); "
        "default: MLflow's own (MLFLOW_TRACKING_URI, else its local store)",
    ),
    mlflow_experiment: Optional[str] = typer.Option(
        None, metavar="NAME", help="with --log mlflow: the experiment, created if missing (default: MLflow's, "
        "MLFLOW_EXPERIMENT_NAME or Default)",
    ),
    resume: Optional[str] = typer.Option(
        None, "--resume", metavar="RUN",
        help="continue run RUN (a directory, or a name under --runs-dir) from its last checkpoint with its saved settings; "
        "only --device --workers --checkpoint-every --skip-nonfinite --max-nonfinite --strict may be given with it",
    ),
    nproc_per_node: Optional[int] = typer.Option(
        None, "--nproc-per-node", metavar="N", help="data-parallel: train on N workers on this machine through torchrun "
        "(one per GPU, or CPU processes with --device cpu); the global batch is --batch-size x all workers",
    ),
    nnodes: str = typer.Option("1", help="with --nproc-per-node: number of machines (or MIN:MAX)"),
    node_rank: int = typer.Option(0, help="with --nproc-per-node: this machine's rank, 0 to --nnodes - 1"),
    rdzv_endpoint: Optional[str] = typer.Option(None, help="with --nproc-per-node and several machines: HOST:PORT on machine 0"),
    dist_timeout: float = typer.Option(600.0, help="with --nproc-per-node: seconds a worker waits for the others before the job fails"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per event per line"),
) -> None:
    """Train a backbone on a dataset: linear probe, fine-tune, partial, or probe-then-finetune.

    Ctrl+C, SIGTERM or SIGHUP finish the batch, save a checkpoint and exit 4; a second
    Ctrl+C exits 130 at once. Continue such a run (or a killed one) with --resume RUN.

    Exit codes: 0 finished; 2 bad option; 3 data or weights unavailable (or an unreadable
    image with --strict); 4 stopped on a signal, checkpoint saved; 6 loss became NaN or
    infinite; 7 out of memory; 8 checkpoint could not be written (disk full); 130 second
    Ctrl+C. After 6, 7 and 8 the last good checkpoint is kept.
    """
    values = config_values(dict(locals()))
    spawn = nproc_per_node is not None and not launch.in_worker()  # under torchrun already: be a worker
    if launch.in_worker() and ctx.get_parameter_source("dist_timeout").name != "DEFAULT":  # type: ignore[union-attr]
        os.environ["TLWORK_DIST_TIMEOUT"] = f"{dist_timeout:g}"  # a plain torchrun start: the option still counts
    workers = (nproc_per_node if nproc_per_node is not None else 1, nnodes, node_rank, rdzv_endpoint, dist_timeout)
    launch.silence_other_ranks()
    if resume is not None:
        events = _resume_events(ctx, resume, runs_dir, values)
        if spawn:
            from core.runs.resumption import RESUME_OVERRIDES

            given = {n: values[n] for n in RESUME_OVERRIDES if ctx.get_parameter_source(n).name != "DEFAULT"}  # type: ignore[union-attr]
            _spawn(launch.resume_argv(resume, runs_dir, given, as_json), *workers)
        _train_until_done(events, as_json)
        return
    config = run_config(values)
    if spawn:
        _spawn(launch.run_argv(config.command_line(), as_json), *workers)
    from core.training.train import train

    _train_until_done(lambda stop: train(config, stop=stop), as_json)


def config_values(options: dict[str, Any]) -> dict[str, Any]:
    """``run``'s options (as ``locals()``) as ``RunConfig`` fields: what ``run`` and ``lr-find`` share."""
    values = {k: v for k, v in options.items() if k not in ("as_json", "resume", "ctx", *launch.LAUNCH_OPTIONS)}
    values["batch_size"] = _batch_size(values["batch_size"])
    values["log"] = tuple(values["log"] or ())
    exclude = values["exclude"]
    values["exclude"] = os.path.abspath(os.path.expanduser(exclude)) if exclude else None  # config.json: from anywhere
    return values


def run_config(values: dict[str, Any]) -> RunConfig:
    """The resolved config, or a one-line usage error."""
    try:
        return RunConfig(**values).resolved()
    except ConfigError as exc:
        raise fail(str(exc)) from None


def _spawn(argv: list[str], nproc: int, nnodes: str, node_rank: int, endpoint: str | None, timeout: float) -> None:
    """Run ``argv`` on ``nproc`` workers through torchrun (``tui.launch``) and exit with the job's code."""
    if nproc < 1:
        raise fail(f"--nproc-per-node must be at least 1 (got {nproc})")
    if not timeout > 0:
        raise fail(f"--dist-timeout must be a positive number of seconds (got {timeout:g}); try 600")
    raise typer.Exit(launch.launch(argv, nproc, nnodes, node_rank, endpoint, timeout))


def _batch_size(text: str) -> int | str:
    """``--batch-size``: a whole number or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise fail(f"--batch-size must be a whole number or auto (got {text!r})") from None


def _resume_events(
    ctx: typer.Context, ref: str, runs_dir: str, values: dict[str, Any]
) -> Callable[[threading.Event], Iterator[Any]]:
    """The engine's events for ``--resume`` (given a stop event), refusing options that would change the run."""
    from core.runs.resumption import RESUME_OVERRIDES
    from core.training.resume import resume

    sources = {name: ctx.get_parameter_source(name) for name in values}
    given = {name for name, source in sources.items() if source is not None and source.name != "DEFAULT"}
    refused = sorted(given - set(RESUME_OVERRIDES) - {"runs_dir"})
    if refused:
        flags = ", ".join("--" + n.replace("_", "-") for n in refused)
        raise fail(f"--resume continues a run with its own settings; drop {flags} (allowed: "
                   + ", ".join("--" + n.replace("_", "-") for n in RESUME_OVERRIDES) + ")")
    overrides = {name: values[name] for name in given & set(RESUME_OVERRIDES)}
    return lambda stop: resume(ref, runs_dir=runs_dir, overrides=overrides, stop=stop)


def _train_until_done(make_events: Callable[[threading.Event], Iterator[Any]], as_json: bool) -> None:
    """Run a training generator under ``SignalStop`` and map how it ended to an exit code."""
    with SignalStop() as stopper:
        try:
            last = consume(make_events(stopper.event), as_json)
        except KeyboardInterrupt:
            typer.echo("tlwork: interrupted", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
    from core.events import RunStopped

    if isinstance(last, RunStopped):
        raise typer.Exit(EXIT_STOPPED)


@app.command("eval")
def eval_command(
    model: str = typer.Argument(..., help="a run directory or name, a bundle (model.json), 'last', or hf:ID_OR_PATH"),
    dataset: Optional[str] = typer.Option(None, help="dataset to score (its test split); default: the run's own validation split"),
    data_dir: str = typer.Option("data", help="where CIFAR-10/100 are found"),
    batch_size: Optional[int] = typer.Option(None, help="images per batch (default: the run's)"),
    device: str = typer.Option("auto", help="auto, cuda, cuda:N, mps or cpu"),
    runs_dir: str = typer.Option("runs", help="where runs are looked up"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object with top1, top5, per_class, confusion"),
) -> None:
    """Score a model: top-1, top-5, per-class accuracy and the confusion matrix."""
    from core.events import EvaluationEnded
    from core.inference.evaluate import evaluate

    if batch_size is not None and batch_size < 1:
        raise fail(f"--batch-size must be at least 1 (got {batch_size})")
    events = evaluate(model, dataset, data_dir=data_dir, runs_dir=runs_dir, batch_size=batch_size, device=device)
    if as_json:
        result = consume((e for e in events if isinstance(e, EvaluationEnded)), as_json=False)
        if result is None:
            raise fail("evaluation produced no result", EXIT_ERROR)
        typer.echo(json.dumps(evaluation_record(result)))
        return
    result = consume(events, as_json=False)
    if isinstance(result, EvaluationEnded):
        print_evaluation(result)


def evaluation_record(result: Any) -> dict[str, Any]:
    """The ``--json`` object of ``tlwork eval``."""
    return {
        "model": result.model,
        "dataset": result.dataset,
        "split": result.split,
        "images": result.images,
        "loss": result.loss,
        "top1": result.top1,
        "top5": result.top5,
        "per_class": dict(zip(result.class_names, result.per_class)),
        "confusion": [list(r) for r in result.confusion],
        "class_names": list(result.class_names),
    }


def print_evaluation(result: Any) -> None:
    """Top-1/top-5, a per-class table and the confusion matrix as text."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    console.print(
        f"top-1 {100 * result.top1:.2f}%  top-5 {100 * result.top5:.2f}%  loss {result.loss:.4f}  "
        f"({result.images} images, {result.dataset} {result.split})"
    )
    per = Table("class", "accuracy", "images", title="per class", title_justify="left")
    for name, acc, row in zip(result.class_names, result.per_class, result.confusion):
        per.add_row(name, f"{100 * acc:.1f}%", str(sum(row)))
    console.print(per)
    short = [n[:5] for n in result.class_names]
    conf = Table("true \\ pred", *short, title="confusion matrix (rows: true class)", title_justify="left")
    for name, row in zip(result.class_names, result.confusion):
        conf.add_row(name, *[str(v) for v in row])
    console.print(conf)
    pairs = result.most_confused(5)
    if pairs:
        console.print("most confused: " + "; ".join(f"{t} -> {p} ({n})" for t, p, n in pairs))


@app.command()
def runs(
    runs_dir: str = typer.Option("runs", help="where runs are looked up"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per run per line"),
) -> None:
    """List past runs with their status and key figures, newest first."""
    from dataclasses import asdict

    from core.runs.store import list_runs

    rows = list_runs(runs_dir)
    if as_json:
        for r in rows:
            typer.echo(json.dumps(asdict(r) | {"model": r.model}))
        return
    if not rows:
        typer.echo(f"no runs under {runs_dir}/ yet; start one with `tlwork run --dataset demo`")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "status", "mode", "backbone", "dataset", "epochs", "val acc", "best", "model")
    for r in rows:
        acc = f"{100 * r.val_accuracy:.2f}%" if r.val_accuracy is not None else "-"
        best = f"{100 * r.best_val_accuracy:.2f}%" if r.best_val_accuracy is not None else "-"
        table.add_row(r.name, r.status, r.mode, r.backbone, r.dataset, f"{r.epochs_done}/{r.epochs}", acc, best, r.model)
    # Off a terminal (a pipe, a log) rich would squeeze the table into 80 columns and elide
    # the run names that `tlwork eval` needs; print it at its natural width instead.
    Console(highlight=False, width=None if sys.stdout.isatty() else 1000).print(table)


@app.command()
def backbones(as_json: bool = typer.Option(False, "--json", help="JSON lines")) -> None:
    """List the built-in backbones, modes, augmentations and schedulers."""
    groups = {
        "backbones": registry.BACKBONES + registry.BACKBONE_PREFIXES,
        "modes": registry.MODES,
        "augmentations": registry.AUGMENTATIONS,
        "schedulers": registry.SCHEDULERS,
        "optimizers": registry.OPTIMIZERS,
        "datasets": registry.DATASETS,
    }
    for group, choices in groups.items():
        if as_json:
            for c in choices:
                typer.echo(json.dumps({"group": group, "name": c.name, "label": c.label, "description": c.description}))
            continue
        typer.echo(f"{group}:")
        for c in choices:
            typer.echo(f"  {c.name:<22} {c.description}")


from tui.classify_cmd import classify as _classify  # noqa: E402 - imports neither torch nor transformers

app.command("classify")(_classify)
from tui.checkdata_cmd import check_data as _check_data  # noqa: E402 - imports no torch

app.command("check-data")(_check_data)
from tui.serve_cmd import serve as _serve  # noqa: E402 - imports textual-serve only when it runs

app.command("serve")(_serve)

from tui.export_cmd import export as _export  # noqa: E402 - imports torch only when it runs

app.command("export")(_export)
from tui.mistakes_cmd import mistakes as _mistakes  # noqa: E402 - imports torch only when it runs

app.command("mistakes")(_mistakes)
from tui.lrfind_cmd import lr_find_command as _lr_find  # noqa: E402 - imports torch only when it runs

app.command("lr-find")(_lr_find)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.stderr.write("tlwork: interrupted\n")
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":  # ``python -m tui.cli`` (what --nproc-per-node and torchrun -m start)
    main()
