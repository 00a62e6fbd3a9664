"""``--log mlflow``: the run as an MLflow run, through ``mlflow.MlflowClient``.

Params are config.json's values; metrics are the same figures TensorBoard gets, with their
steps; the bundle (model.json, model.safetensors, config.json) and the confusion matrix are
artifacts. The tracking URI is ``--mlflow-uri`` or MLflow's own default (the
``MLFLOW_TRACKING_URI`` variable, else its local store), the experiment ``--mlflow-experiment``
or MLflow's default. The run's id, experiment and URI go into ``RUN/mlflow.json``, so
``tlwork run --resume`` logs on into the same MLflow run, at the same URI, from any folder.

Every call runs on a background thread in order (``tracking.Worker``): an unreachable server
costs the run nothing but one warning once MLflow's retries give up; ``HTTP_DEFAULTS`` makes
that take seconds, not MLflow's minutes, unless ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` or
``MLFLOW_HTTP_REQUEST_TIMEOUT`` say otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from core import events as ev
from core.config import RunConfig
from core.runs.store import read_json, write_json
from core.training.tracking import Tracker, Worker, batch_steps, epoch_figures, final_figures, hyper_parameters

MLFLOW_FILE = "mlflow.json"
"""The run directory's record of its MLflow run: ``run_id``, ``experiment_id``, ``tracking_uri``."""
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
"""tlwork's patience with a tracking server unless these are set: MLflow's own (7 retries with
exponential back-off, 120 s timeouts) keep a run waiting over 4 minutes for a server that is down."""
BUNDLE_FILES = ("model.json", "model.safetensors", "config.json")
"""What goes under the MLflow run's ``bundle/`` artifacts: enough to load the model again."""


def absolute_uri(uri: str) -> str:
    """A relative ``sqlite:///`` path made absolute, so a resume from another folder finds the same store."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and uri != prefix + ":memory:":
        return prefix + str(Path(uri[len(prefix):]).expanduser().resolve())
    return uri


class MLflow(Tracker):
    """An MLflow run fed from the engine's events, on a background thread."""

    name = "mlflow"

    def __init__(self, config: RunConfig, run_dir: Path) -> None:
        super().__init__()
        self.config = config
        self.run_dir = run_dir
        self.client: Any = None
        self.run_id = ""
        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        self.worker = Worker("tlwork-mlflow")
        self.closed = False

    def _call(self, what: str, call: Any, *args: Any) -> None:
        self.worker.submit(self.guard, what, call, *args)

    def feed(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunStarted):
            self._call(f"starting a run at {self._uri_hint()}", self._start, event)
        elif isinstance(event, ev.BatchEnded):
            metrics = [("batch/loss", loss, step) for step, loss in batch_steps(event)]
            self._call("logging batch metrics", self._log, [*metrics, ("batch/lr", event.lr, event.step)])
        elif isinstance(event, ev.EpochEnded):
            self._call("logging epoch metrics", self._log, [(k, v, event.epoch) for k, v in epoch_figures(event).items()])

    def finished(self, event: ev.RunFinished, picture: Path | None) -> None:
        self._call("logging the final metrics", self._log, [(k, v, event.epochs) for k, v in final_figures(event).items()])
        self._call("uploading the bundle", self._artifacts, picture)

    def close(self, status: str, stop: threading.Event | None, patience: float | None) -> Iterator[str]:
        if self.closed:
            return
        self.closed = True
        self._call("ending the run", self._end, status)
        for waiting in self.worker.finish(stop, patience):
            if waiting:
                yield f"mlflow: waiting for {self._uri_hint()} to take the last metrics and the bundle (stop to skip)"
            else:
                self.warnings.put(f"mlflow: stopped waiting for {self._uri_hint()}; the MLflow run may lack its last "
                                  "figures (metrics.jsonl has every figure)")

    def _uri_hint(self) -> str:
        return self.config.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or "MLflow's default tracking URI"

    def _start(self, event: ev.RunStarted) -> None:
        import mlflow
        from mlflow import MlflowClient

        for name in ("mlflow", "alembic"):  # database set-up chatter at INFO would land on the terminal
            logger = logging.getLogger(name)
            logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
        record = read_json(self.run_dir / MLFLOW_FILE) if (self.run_dir / MLFLOW_FILE).is_file() else {}
        uri = str(record.get("tracking_uri") or absolute_uri(self.config.mlflow_uri or mlflow.get_tracking_uri()))
        self.client = MlflowClient(tracking_uri=uri)
        if record.get("run_id") and self._reopen(str(record["run_id"])):
            return
        experiment = self._experiment_id()
        run = self.client.create_run(experiment, run_name=self.run_dir.name, tags={
            "tlwork.run_dir": str(self.run_dir.resolve()), "tlwork.command_line": event.command_line,
        })
        self.run_id = run.info.run_id
        write_json(self.run_dir / MLFLOW_FILE, {"run_id": self.run_id, "experiment_id": experiment, "tracking_uri": uri})
        from mlflow.entities import Param

        params = [Param(k, str(v) if isinstance(v, str) else json.dumps(v)) for k, v in hyper_parameters(event.config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per call
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def _reopen(self, run_id: str) -> bool:
        """Continue the run this run directory logged to; False (and a warning) when it is gone."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                raise
            self.warnings.put(f"mlflow: run {run_id} from {MLFLOW_FILE} is gone; logging to a new MLflow run")
            return False
        self.run_id = run_id
        self.client.update_run(run_id, status="RUNNING")
        return True

    def _experiment_id(self) -> str:
        name = self.config.mlflow_experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME")
        if name is None:
            return os.environ.get("MLFLOW_EXPERIMENT_ID", "0")  # "0" is MLflow's "Default" experiment
        found = self.client.get_experiment_by_name(name)
        return found.experiment_id if found is not None else self.client.create_experiment(name)

    def _log(self, figures: list[tuple[str, float, int]]) -> None:
        from mlflow.entities import Metric

        if not self.run_id:
            return
        stamp = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), stamp, int(step)) for k, v, step in figures])

    def _artifacts(self, picture: Path | None) -> None:
        if not self.run_id:
            return
        for name in BUNDLE_FILES:
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name), "bundle")
        if picture is not None:
            self.client.log_artifact(self.run_id, str(picture))

    def _end(self, status: str) -> None:
        if self.run_id:
            self.client.set_terminated(self.run_id, status)
