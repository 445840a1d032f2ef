"""Where a trial's per-epoch metrics go besides the study: TensorBoard and MLflow.

Each tracker sees a trial start (its config), every reported epoch (every metric the
trial reports, not only the study's), and its end (state, value, health reason). They
write as the trial runs, from the worker that runs it, so a sweep can be watched live:

- TensorBoard: ``results/NAME/tb/trial-N/``, one event file per trial: a scalar per
  metric per epoch, the config and the outcome as text, and the hyperparameters with
  the trial's value (TensorBoard's HPARAMS tab).
- MLflow: one run per trial named ``trial-N`` in the study's experiment; params, metrics
  by epoch (``step``), tags ``sweeper.state``, ``health.reason`` and ``health.detail``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    def start(self, number: int, config: Mapping[str, Any]) -> None: ...

    def epoch(self, epoch: int, metrics: Mapping[str, float]) -> None: ...

    def end(self, state: str, value: float | None, attrs: Mapping[str, Any]) -> None: ...


def _flat(config: Mapping[str, Any]) -> dict[str, Any]:
    """Values TensorBoard's hparams and MLflow's params accept (null as the string ``off``)."""
    return {k: ("off" if v is None else v if isinstance(v, bool | int | float | str) else str(v))
            for k, v in config.items()}


class TensorBoardTracker:
    """One ``SummaryWriter`` per trial under ``folder/trial-N``."""

    def __init__(self, folder: Path, metric: str) -> None:
        self.folder = folder
        self.metric = metric
        self._writer: Any = None
        self._config: dict[str, Any] = {}

    def start(self, number: int, config: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(self.folder / f"trial-{number}"))
        self._config = _flat(config)
        self._writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in self._config.items()), 0)

    def epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            self._writer.add_scalar(name, value, epoch)
        self._writer.flush()  # readable while the trial runs

    def end(self, state: str, value: float | None, attrs: Mapping[str, Any]) -> None:
        reason = attrs.get("health.reason")
        text = state.lower() + (f": {reason}: {attrs.get('health.detail', '')}" if reason else "")
        self._writer.add_text("outcome", text, 0)
        if value is not None and math.isfinite(value):
            # run_name="." keeps the hparams beside the scalars, in the trial's own folder
            self._writer.add_hparams(self._config, {f"hparam/{self.metric}": value}, run_name=".")
        self._writer.close()


class MLflowTracker:
    """One MLflow run per trial, opened with the client API (no global active run, so
    a user's own ``mlflow.start_run()`` inside the trial is not disturbed)."""

    def __init__(self, uri: str, experiment: str, study: str) -> None:
        self.uri = uri
        self.experiment = experiment
        self.study = study
        self._client: Any = None
        self._run_id: str | None = None

    def start(self, number: int, config: Mapping[str, Any]) -> None:
        from mlflow import MlflowClient

        self._client = MlflowClient(tracking_uri=self.uri)
        found = self._client.get_experiment_by_name(self.experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            try:
                experiment_id = self._client.create_experiment(self.experiment)
            except Exception:  # another worker created it first
                experiment_id = self._client.get_experiment_by_name(self.experiment).experiment_id
        run = self._client.create_run(experiment_id, run_name=f"trial-{number}",
                                      tags={"sweeper.study": self.study, "sweeper.trial": str(number)})
        self._run_id = run.info.run_id
        from mlflow.entities import Param

        self._client.log_batch(self._run_id, params=[Param(k, str(v)) for k, v in _flat(config).items()])

    def epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._client.log_batch(self._run_id, metrics=[Metric(k, float(v), now, epoch) for k, v in metrics.items()
                                                      if math.isfinite(float(v))])

    def end(self, state: str, value: float | None, attrs: Mapping[str, Any]) -> None:
        self._client.set_tag(self._run_id, "sweeper.state", state.lower())
        for key in ("health.reason", "health.detail", "error"):
            if attrs.get(key):
                self._client.set_tag(self._run_id, key, str(attrs[key])[:5000])
        status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(state, "FAILED")
        self._client.set_terminated(self._run_id, status=status)


class Trackers:
    """Every tracker a study asks for, called together; one that fails is reported once and
    dropped, so a tracker's outage never fails a trial."""

    def __init__(self, trackers: Sequence[Tracker], warn: Any = None) -> None:
        self.trackers = list(trackers)
        self.warn = warn

    def _each(self, method: str, *args: Any) -> None:
        for t in list(self.trackers):
            try:
                getattr(t, method)(*args)
            except Exception as e:
                self.trackers.remove(t)
                if self.warn is not None:
                    self.warn(f"{type(t).__name__} stopped for this trial: {type(e).__name__}: {e}")

    def start(self, number: int, config: Mapping[str, Any]) -> None:
        self._each("start", number, config)

    def epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self._each("epoch", epoch, metrics)

    def end(self, state: str, value: float | None, attrs: Mapping[str, Any]) -> None:
        self._each("end", state, value, attrs)


def tensorboard_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


__all__ = ["MLflowTracker", "TensorBoardTracker", "Tracker", "Trackers", "tensorboard_available"]
