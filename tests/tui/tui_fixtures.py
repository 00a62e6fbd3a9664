"""Scripted stand-ins for the engine, a fixed workspace, and the scenes of every screen.

The behaviour tests, the snapshot tests and ``screenshots/make.py`` all use these, so the
pictures in the README are exactly what the snapshot tests check. Everything is
deterministic: the fake engine yields a fixed event list (waiting on ``stop`` where a scene
needs a run in progress), the workspace has fixed run folders and generated images, memory
figures are injected, and paths are relative to the workspace (the caller changes into it).
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

from core import events as ev
from core.config import RunConfig

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DEMO_CONFIG = RunConfig(dataset="demo", weights="none", image_size=32, batch_size=64, epochs=3)
CPU_MEMORY = {"rss": 812.0, "cpu": 187.0}
CUDA_MEMORY = {"used": 3210.0, "peak": 5120.0, "total": 81559.0, "util": 93.0}


def loss_at(step: int) -> float:
    """A plausible, deterministic loss curve: decay plus a wobble."""
    return 2.3 * math.exp(-0.045 * step) + 0.35 + 0.12 * math.sin(step * 1.7)


@dataclass
class ScriptedEngine:
    """Same signature as ``core.training.train.train``; yields a fixed run's events.

    ``hold_at`` makes it wait after that step until ``stop`` or ``stop_after_epoch`` is set;
    both are then honoured as the real engine does (a checkpoint and ``RunStopped`` after
    the batch, or at the end of the epoch). ``test_scripted_engine`` checks that its event
    sequence is the real engine's.
    """

    batches: int = 13
    hold_at: int | None = None
    device: str = "cpu"
    device_name: str = "CPU (2 threads)"
    calls: list[RunConfig] = field(default_factory=list)
    saw_stop: threading.Event = field(default_factory=threading.Event)

    def __call__(self, config: RunConfig, *, stop: threading.Event | None = None,
                 stop_after_epoch: threading.Event | None = None) -> Iterator[Any]:
        config = config.resolved()
        self.calls.append(config)
        run_dir = f"{config.runs_dir}/{config.name or 'scripted-run'}"
        stages = [("probe", config.probe_epochs, config.probe_lr), ("finetune", config.epochs, config.lr)] \
            if config.mode == "probe-then-finetune" else [({"linear-probe": "probe"}.get(config.mode, config.mode), config.epochs, config.lr or 1e-3)]
        total = config.total_epochs * self.batches
        yield ev.RunStarted(run_dir, config.to_dict(), config.command_line(), self.device, self.device_name, CLASSES,
                            800, 200, config.total_epochs, total, 5_130, 11_181_642,
                            stages=tuple((name, epochs) for name, epochs, _ in stages))
        step, epoch, checkpoint = 0, 0, f"{run_dir}/checkpoint-last.json"
        for stage, epochs, lr in stages:
            if stage == "probe":  # a cached-feature probe extracts its features first, as the real engine does
                for split, n in (("train", 800), ("val", 200)):
                    yield from (ev.ExtractionProgressed(split, done, n, done / 400, (n - done) / 400) for done in (0, n // 2, n))
            # As the real engine says which data path a stage takes (cached features for a probe).
            yield ev.MessageLogged("info", f"stage {stage}: {'features' if stage == 'probe' else 'device'} data path")
            yield ev.StageStarted(stage, epoch + 1, epochs, lr, 5_130 if stage == "probe" else 11_181_642)
            for _ in range(epochs):
                epoch += 1
                yield ev.EpochStarted(epoch, config.total_epochs, stage, self.batches)
                for batch in range(1, self.batches + 1):
                    step += 1
                    yield ev.BatchEnded(epoch, batch, self.batches, step, total, (loss_at(step),), lr * (0.5 if epoch > 2 else 1.0),
                                        412.0, 0.03, step * 0.5, (total - step) * 0.5, stage)
                    if step == self.hold_at:
                        self._hold(stop, stop_after_epoch)
                    if stop is not None and stop.is_set():  # after the batch, as the real engine checks
                        self.saw_stop.set()
                        yield ev.CheckpointSaved(checkpoint, epoch, step, "stop")
                        yield ev.RunStopped(run_dir, checkpoint, epoch, step, "stop requested")
                        return
                rate = 1.0 - loss_at(step) / 3
                yield ev.EpochEnded(epoch, config.total_epochs, stage, loss_at(step) + 0.05, rate - 0.05, loss_at(step) + 0.1,
                                    rate, lr, 6.5, 412.0)
                yield ev.CheckpointSaved(checkpoint, epoch, step, "epoch")
                if stop_after_epoch is not None and stop_after_epoch.is_set() and epoch < config.total_epochs:
                    yield ev.RunStopped(run_dir, checkpoint, epoch, step, "stopped after epoch")
                    return
        bundle = f"{run_dir}/model.json"
        # As the real engine says which epoch the bundle keeps (its accuracy only rises: the last).
        from core.config import KEEPS_LAST_ON_TEST

        if config.val_split <= 0:
            if config.keep == "best":
                yield ev.MessageLogged("info", KEEPS_LAST_ON_TEST)
        else:
            yield ev.MessageLogged("info", f"keeping epoch {epoch} (--keep {config.keep}): val_acc {1.0 - loss_at(step) / 3:.2%}")
        yield ev.CheckpointSaved(bundle, epoch, step, "bundle")
        yield ev.RunFinished(run_dir, bundle, 1.0 - loss_at(step) / 3, loss_at(step) + 0.1, 1.0 - loss_at(step) / 3, epoch, 19.5,
                             epoch, config.keep)

    @staticmethod
    def _hold(*events: threading.Event | None) -> None:
        """Wait (at most 30 s) until any of ``events`` is set, as a slow batch would."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(e is not None and e.is_set() for e in events):
            time.sleep(0.01)


@dataclass
class Held:
    """``engine`` as it is, except that its first call pauses after its first ``after`` event.

    It waits there until ``stop`` (or any other ``threading.Event`` it was passed, such as
    ``stop_after_epoch``) is set, as a slow batch would: a key pressed while ``held`` is set
    lands while the engine is certainly mid-way, however fast this machine is. Nothing else
    about the engine changes; it is the real engine that has to honour the stop.
    """

    engine: Callable[..., Iterator[Any]]
    after: type
    calls: list[tuple[list[Any], threading.Event]] = field(default_factory=list)
    held: threading.Event = field(default_factory=threading.Event)  # set once it waits

    def __call__(self, *args: Any, stop: threading.Event | None = None, **kwargs: Any) -> Iterator[Any]:
        events: list[Any] = []
        ended = threading.Event()  # set once the engine's generator is finished or closed
        self.calls.append((events, ended))
        hold = len(self.calls) == 1
        releases = [e for e in (stop, *kwargs.values()) if isinstance(e, threading.Event)]
        try:
            for event in self.engine(*args, stop=stop, **kwargs):
                events.append(event)
                yield event
                if hold and isinstance(event, self.after):
                    hold = False
                    self.held.set()
                    deadline = time.monotonic() + 30
                    while not any(e.is_set() for e in releases) and time.monotonic() < deadline:
                        time.sleep(0.01)
        finally:
            ended.set()


CONFUSION = tuple(
    tuple(14 if t == p else (3 if (t, p) in ((3, 5), (5, 3), (1, 9), (9, 1)) else (1 if (t * 7 + p) % 9 == 0 else 0)) for p in range(10))
    for t in range(10)
)


def fake_evaluate(ref: str, dataset: str | None = None, *, data_dir: str = "data", runs_dir: str = "runs",
                  batch_size: int | None = None, device: str = "auto", stop: threading.Event | None = None) -> Iterator[Any]:
    """Same signature as ``core.inference.evaluate.evaluate``; a fixed CIFAR-10 result."""
    name = Path(ref).name
    split = "validation" if dataset is None else "test"
    yield ev.EvaluationStarted(name, dataset or "demo", split, 200, 4)
    for i in range(1, 5):
        if stop is not None and stop.is_set():
            yield ev.EvaluationStopped(name, i - 1, 4)
            return
        yield ev.EvalBatchEnded(i, 4, 850.0)
    per_class = tuple(row[i] / sum(row) for i, row in enumerate(CONFUSION))
    images = sum(map(sum, CONFUSION))
    top1 = sum(CONFUSION[i][i] for i in range(10)) / images
    yield ev.EvaluationEnded(name, dataset or "demo", split, images, 0.8731, top1, 0.968, CLASSES, per_class, CONFUSION)


def fake_classify(model_ref: str, inputs: list[str], *, top_k: int = 5, batch_size: int = 32, device: str = "auto",
                  runs_dir: str = "runs", stop: threading.Event | None = None) -> Iterator[Any]:
    """Same signature as ``core.inference.classify.classify``; predictions depend only on the file name."""
    yield ev.ClassificationStarted(Path(model_ref).name, len(inputs), top_k)
    done = failed = 0
    for path in inputs:
        if stop is not None and stop.is_set():
            yield ev.ClassificationStopped(Path(model_ref).name, done, failed, 0.42)
            return
        p = Path(path)
        if not p.is_file() or p.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            failed += 1
            yield ev.ImageFailed(path, "not an image file" if p.is_file() else "no such file")
            continue
        first = next((i for i, c in enumerate(CLASSES) if c in p.stem), len(p.stem) % 10)
        order = [first] + [i for i in range(10) if i != first]
        probs = [0.71, 0.12, 0.07, 0.04, 0.02][:top_k]
        done += 1
        yield ev.ImageClassified(path, tuple((CLASSES[i], pr) for i, pr in zip(order, probs)))
    yield ev.ClassificationEnded(Path(model_ref).name, done, failed, 0.42)


def fake_lr_find(config: RunConfig, *, stop: threading.Event | None = None, **kwargs: Any) -> Iterator[Any]:
    """Same signature as ``core.training.lrfind.lr_find``; a fixed curve per stage (flat, a descent, a blow-up)."""
    stages = [("probe", "linear-probe")] + ([("finetune", "finetune")] if config.mode == "probe-then-finetune" else [])
    for k, (stage, mode) in enumerate(stages):
        lrs = tuple(1e-7 * 10 ** (8 * i / 99) for i in range(84))
        losses = tuple(2.44 - (0.56 / (1 + math.exp(-2.2 * (math.log10(lr) + 3.2 + k)))) +
                       (1.8 * max(0.0, math.log10(lr) + 1.2) ** 2) for lr in lrs)
        for step in (20, 60, 84):
            if stop is not None and stop.is_set():
                yield ev.LrFindStopped(stage, step)
                return
            yield ev.LrFindProgressed(stage, step, 100, lrs[step - 1], losses[step - 1])
        best = 3.4e-3 / 10 ** k
        yield ev.LrFound(stage, mode, lrs, losses, best, "steepest",
                         f"steepest descent: the smoothed loss falls fastest per decade at {best:.2g}", 2.1e-4, best, True)


MISTAKES = (("photos/cat.png", "cat", "dog", 0.81, 3.62), ("photos/ship.png", "ship", "airplane", 0.64, 2.95),
            ("photos/frog.png", "frog", "frog", 0.41, 0.89))


def fake_mistakes(ref: str, dataset: str | None = None, *, top: int = 20, true: str | None = None, pred: str | None = None,
                  stop: threading.Event | None = None, **kwargs: Any) -> Iterator[Any]:
    """Same signature as ``core.inference.mistakes.find_mistakes``; three fixed images of the workspace."""
    yield ev.EvaluationStarted(Path(ref).name, dataset or "demo", "validation", 200, 4)
    rows = [r for r in MISTAKES if (true is None or r[1] == true) and (pred is None or r[2] == pred)][:top]
    found = tuple(ev.Mistake(path, t, p, prob, loss, i, ((p, prob), (t, 0.9 - prob if t != p else 0.2), ("bird", 0.05)))
                  for i, (path, t, p, prob, loss) in enumerate(rows))
    yield ev.MistakesFound(Path(ref).name, dataset or "demo", "validation", 200, len(found), CLASSES, found)


def fake_overlay(ref: str, path: str) -> Any:
    """Same signature as ``tui.engines.overlay``: the image under a fixed left-to-right heat gradient."""
    from PIL import Image

    with Image.open(path) as img:
        base = img.convert("RGB")
    heat = Image.linear_gradient("L").rotate(90).resize(base.size)
    red = Image.merge("RGB", (heat, Image.new("L", base.size, 40), heat.point(lambda v: 255 - v)))
    return Image.blend(base, red, 0.5)


def recording(fn: Any, calls: list[tuple[Any, ...]]) -> Any:
    """``fn``, appending each call's (args, kwargs) to ``calls``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return fn(*args, **kwargs)

    return wrapper


# -- the workspace -------------------------------------------------------------------------------

RUNS = (
    ("20261127-101500-resnet18-linear-probe", "linear-probe", "finished", 3, [2.01, 1.72, 1.58], [1.90, 1.69, 1.61], 1764231300.0),
    ("20261127-113000-resnet18-finetune", "finetune", "finished", 5, [1.95, 1.31, 0.97, 0.80, 0.71], [1.62, 1.20, 1.02, 0.95, 0.93], 1764235800.0),
    ("20261127-120000-resnet18-probe-then-finetune", "probe-then-finetune", "stopped", 4, [2.05, 1.40], [1.85, 1.33], 1764237600.0),
)


def build_workspace(root: Path) -> Path:
    """``runs/`` with three runs (two with models, one stopped) and ``photos/`` with images."""
    from PIL import Image, ImageDraw

    runs = root / "runs"
    for name, mode, status, epochs, train, val, started in RUNS:
        d = runs / name
        d.mkdir(parents=True, exist_ok=True)
        config = RunConfig(mode=mode, dataset="demo", weights="none", image_size=32, batch_size=64,  # type: ignore[arg-type]
                           epochs=epochs - 1 if mode == "probe-then-finetune" else epochs, name=name)
        (d / "config.json").write_text(config.to_json() + "\n")
        (d / "status.json").write_text(json.dumps({"status": status, "started": started, "seconds": 20.0 * len(train)}))
        lines = [json.dumps({"time": started, "event": "epoch_ended", "epoch": i + 1, "train_loss": t, "val_loss": v,
                             "val_accuracy": round(0.9 - v / 3, 4)}) for i, (t, v) in enumerate(zip(train, val))]
        (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        if status == "finished":
            (d / "model.json").write_text(json.dumps({"format": "tlwork-bundle", "version": 1, "class_names": list(CLASSES)}))
    photos = root / "photos"
    photos.mkdir(exist_ok=True)
    for name, colour, shape in (("cat.png", (200, 120, 60), "ellipse"), ("ship.png", (40, 90, 200), "rectangle"), ("frog.png", (60, 170, 70), "ellipse")):
        img = Image.new("RGB", (48, 48), (235, 235, 220))
        draw = ImageDraw.Draw(img)
        getattr(draw, shape)((8, 12, 40, 40), fill=colour)
        draw.rectangle((0, 40, 47, 47), fill=(120, 110, 100))
        img.save(photos / name)
    (photos / "notes.txt").write_text("not an image\n")
    return root


# -- scenes: one per screen state -------------------------------------------------------------

Pilot = Any


async def wait_for(pilot: Pilot, condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Let the app run until ``condition()`` holds (or fail after ``timeout`` seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("timed out waiting for the app")
        await pilot.pause(0.05)
    await pilot.pause()


def make_test_app(engine: ScriptedEngine | None = None, **kwargs: Any) -> Any:
    """The workbench wired to the fakes, in the current directory's workspace."""
    from tui.app import make_app

    options: dict[str, Any] = dict(
        engine=engine or ScriptedEngine(), evaluator=fake_evaluate, classifier=fake_classify, lr_finder=fake_lr_find,
        mistake_finder=fake_mistakes, overlayer=fake_overlay, runs_dir="runs",
        data_dir="data", browse_dir="photos", memory=lambda device: dict(CPU_MEMORY), cursor_blink=False,
    )
    options.update(kwargs)
    return make_app(**options)


@dataclass
class Scene:
    """An app state to picture: how to build the app and how to drive it there."""

    name: str
    size: tuple[int, int]
    build: Callable[[], Any]
    prepare: Callable[[Pilot], Awaitable[None]] | None = None
    press: tuple[str, ...] = ()


async def _to_training(pilot: Pilot, config: RunConfig = DEMO_CONFIG, until: str = "hold") -> None:
    app = pilot.app
    await app.start_run(config)
    engine = app.engine
    if until == "hold":
        await wait_for(pilot, lambda: app.training.last_batch is not None and app.training.last_batch.step == engine.hold_at)
    else:
        await wait_for(pilot, lambda: app.training.state == until)


def runs_listed(screen: Any) -> bool:
    """The screen's list of runs (read in a thread worker) has arrived."""
    if screen.id == "runs":
        return bool(screen.listed)
    return bool(screen.query_one("ModelPicker").listed)


async def _advanced(pilot: Pilot) -> None:
    """Set-up with its advanced part open: EMA with warm-up, MixUp, accumulation and clipping on a fine-tune."""
    from textual.widgets import Checkbox, Collapsible, Input

    screen = pilot.app.screen
    screen.field("mode").set_value("probe-then-finetune")
    screen.query_one("#advanced", Collapsible).collapsed = False
    for ident, value in (("ema", "0.999"), ("mixup", "0.2"), ("accumulate", "2"), ("clip-grad", "1")):
        screen.query_one(f"#{ident}", Input).value = value
    screen.query_one("#ema-warmup", Checkbox).value = True
    await pilot.pause()
    screen.query_one("#clip-grad", Input).focus()
    await pilot.pause()


async def _evaluated(pilot: Pilot) -> None:
    app = pilot.app
    await app.open_evaluate("runs/" + RUNS[1][0])
    await wait_for(pilot, lambda: app.screen.result is not None and runs_listed(app.screen))


async def _classified(pilot: Pilot) -> None:
    app = pilot.app
    await app.open_classify("runs/" + RUNS[1][0])
    app.screen.query_one("#image-path").value = "photos"
    app.screen.action_classify()
    await wait_for(pilot, lambda: len(app.screen.results) == 3 and runs_listed(app.screen))


async def _compared(pilot: Pilot) -> None:
    await _runs(pilot)
    await pilot.press("down", "m", "up", "x")


async def _runs(pilot: Pilot) -> None:
    await pilot.app.switch_mode("runs")
    await wait_for(pilot, lambda: runs_listed(pilot.app.screen))


PTF = RunConfig(mode="probe-then-finetune", dataset="demo", weights="none", image_size=32, batch_size=64, epochs=2)


async def _lr_found(pilot: Pilot) -> None:
    app = pilot.app
    await pilot.press("ctrl+f")
    await wait_for(pilot, lambda: app.screen.id == "lr-find" and app.screen.found and not app.screen.running)


async def _mistakes(pilot: Pilot, gradcam: bool = False) -> None:
    await _evaluated(pilot)
    app = pilot.app
    await pilot.press("m")
    await wait_for(pilot, lambda: app.screen.id == "mistakes" and bool(app.screen.entries) and not app.screen.running)
    if gradcam:
        await pilot.press("g")
        await wait_for(pilot, lambda: not app.screen.workers or all(w.is_finished for w in app.screen.workers))

SCENES: tuple[Scene, ...] = (
    Scene("setup", (110, 34), make_test_app),
    Scene("setup-80x24", (80, 24), make_test_app),
    Scene("setup-demo-invalid", (110, 34), make_test_app, press=("ctrl+t", *["tab"] * 12, "ctrl+u", "0")),
    Scene("setup-advanced", (110, 34), make_test_app, _advanced),
    Scene("training-running", (110, 34), lambda: make_test_app(ScriptedEngine(hold_at=20)), _to_training),
    Scene("training-running-80x24", (80, 24), lambda: make_test_app(ScriptedEngine(hold_at=20)), _to_training),
    Scene("training-cuda", (110, 34), lambda: make_test_app(ScriptedEngine(hold_at=33, device="cuda:0", device_name="NVIDIA H100 80GB HBM3"),
                                                           memory=lambda device: dict(CUDA_MEMORY)),
          lambda pilot: _to_training(pilot, PTF)),
    Scene("training-stop-confirm", (80, 24), lambda: make_test_app(ScriptedEngine(hold_at=20)), _to_training, press=("s",)),
    Scene("training-finished", (110, 34), make_test_app, lambda pilot: _to_training(pilot, PTF, "finished")),
    Scene("evaluate", (110, 34), make_test_app, _evaluated),
    Scene("evaluate-80x24", (80, 24), make_test_app, _evaluated),
    Scene("classify", (110, 34), make_test_app, _classified),
    Scene("classify-80x24", (80, 24), make_test_app, _classified),
    Scene("runs", (110, 34), make_test_app, _runs),
    Scene("runs-compare-80x24", (80, 24), make_test_app, _compared),
    Scene("lr-find", (110, 34), make_test_app, _lr_found),
    Scene("mistakes-80x24", (80, 24), make_test_app, _mistakes),
    Scene("mistakes-gradcam-80x24", (80, 24), make_test_app, lambda pilot: _mistakes(pilot, gradcam=True)),
    Scene("quit-confirm", (80, 24), lambda: make_test_app(ScriptedEngine(hold_at=20)), _to_training, press=("ctrl+q",)),
)
