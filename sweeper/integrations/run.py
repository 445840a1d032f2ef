"""``Run``: what a user's own training function gets besides its config.

A study that names ``task: my_module:train`` calls ``train(config, run)`` for every
trial; a handful of calls on ``run`` give that loop the health monitor and the pruner::

    def train(config: dict, run: sweeper.Run) -> float:
        model, optimizer = ..., ...
        run.watch(model, optimizer)           # what the monitor watches (+ scaler=... under AMP)
        for epoch in range(config["epochs"]):
            for x, y in loader:
                loss = ...; loss.backward()
                run.after_backward(loss)      # may stop the trial (HealthPruned)
                optimizer.step(); optimizer.zero_grad()
            run.report(epoch, {"accuracy": acc, "loss": val_loss},
                       outputs={"predictions": pred, "targets": y_val})  # may prune
        return acc

The same function runs under ``sweeper train`` with an exported config, outside
any study: ``report`` then prints and records each epoch, and nothing prunes.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn, Protocol

import torch
from torch import nn

from ..health import HealthMonitor, HealthPruned, Verdict
from ..tasks.base import EvalResult
from ..train import Monitor, Reporter, load_weights, resolve_device, save_weights
from .command import REPORT_ENV, RUN_ENV


class _Sink(Protocol):
    def report(self, epoch: int, result: EvalResult) -> None: ...


class Run:
    """The trial (or training run) a user's function is called for.

    Attributes:
        config: the trial's full config (also the function's first argument).
        device: ``cuda`` when the worker has a GPU, else ``cpu`` (``config["device"]``
            overrides it where the study sets one).
        metric, direction: what the study optimizes; ``report`` must include ``metric``.
        history: one dict of metrics per reported epoch.
    """

    def __init__(self, config: Mapping[str, Any], *, metric: str, direction: str,
                 reporter: Reporter | _Sink | None = None, monitor: Monitor | None = None,
                 device: str = "auto", checkpoint_dir: str | Path | None = None,
                 init_from: str | Path | None = None) -> None:
        self.config = dict(config)
        self.metric = metric
        self.direction = direction
        self.device = resolve_device(str(config.get("device", device)))
        self.history: list[dict[str, float]] = []
        self.best = math.nan
        self.best_epoch = -1
        self._reporter = reporter
        self._monitor = monitor
        self._step = 0
        self._sink: _JsonLines | None = reporter if isinstance(reporter, _JsonLines) else None
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.init_from = None if init_from is None else Path(init_from)
        self._kept: nn.Module | None = None

    @property
    def monitored(self) -> bool:
        """Whether a health monitor judges this run (not when the study turns ``health`` off, nor
        under ``sweeper train``): integrations skip measuring what only the monitor reads."""
        return self._monitor is not None

    def watch(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
              scaler: torch.amp.GradScaler | None = None) -> None:
        """Hand the model to the health monitor: its trainable parameters are watched and its
        sequence layers probed. ``optimizer`` adds gradients read where it sees them (unscaled
        under AMP, none on skipped steps), the steps it applies, its learning rates and which
        parameters it holds; ``scaler``, a GradScaler's scale (see ``HealthMonitor``)."""
        if self._monitor is not None:
            self._monitor.watch(model, optimizer, scaler=scaler)

    def keep_best(self, model: nn.Module) -> None:
        """Opt in to keeping weights: from now on, each ``report`` whose metric is the best so
        far saves ``model``'s state dict as the trial's ``best.pt`` when the study keeps
        checkpoints (``checkpoints.keep``; the K best trials' files stay). Under ``sweeper train
        --from-checkpoint`` it first loads those weights into ``model``."""
        self._kept = model
        if self.init_from is not None:
            load_weights(model, self.init_from, next(model.parameters(), torch.zeros(())).device)

    def after_backward(self, loss: torch.Tensor, grad_norm: torch.Tensor | None = None) -> None:
        """Call after each ``loss.backward()`` (before ``optimizer.step()``); pass the norm
        ``clip_grad_norm_`` returned if you clip. Raises ``HealthPruned`` when the
        monitor finds the run sick; let it propagate."""
        if self._monitor is not None:
            try:
                self._monitor.after_backward(loss.detach(), None if grad_norm is None else grad_norm.detach(),
                                             step=self._step)
            except HealthPruned as e:
                self._stop(e)
        self._step += 1

    def report(self, epoch: int, metrics: Mapping[str, float],
               outputs: Mapping[str, torch.Tensor] | None = None) -> None:
        """Call after each evaluation with plain floats (the study's metric among them) and,
        for the class-collapse check, ``outputs={"predictions": ..., "targets": ...}``.
        Raises ``optuna.TrialPruned`` or ``HealthPruned`` to stop the trial; let it propagate."""
        if self.metric not in metrics:
            raise KeyError(f"run.report() got {', '.join(metrics) or 'no metric'}; the study's metric is "
                           f"{self.metric!r}")
        values = {k: float(v) for k, v in metrics.items()}
        self.history.append({"epoch": float(epoch), **values})
        value = values[self.metric]
        if self.best_epoch < 0 or (value < self.best if self.direction == "minimize" else value > self.best):
            self.best, self.best_epoch = value, epoch
            if self._kept is not None and self.checkpoint_dir is not None:
                save_weights(self.checkpoint_dir / "best.pt", self._kept, self.config, epoch, value)
        if self._monitor is not None:
            try:
                self._monitor.after_eval(epoch, values, dict(outputs or {}))
            except HealthPruned as e:
                self._stop(e)
        if self._reporter is not None:
            self._reporter.report(epoch, EvalResult(metrics=values, outputs=dict(outputs or {})))

    def _stop(self, e: HealthPruned) -> None:
        """In-process, the verdict propagates as ``HealthPruned``; in a command run it is written
        for sweeper and the script exits (``SystemExit``, so ``finally`` blocks run)."""
        if self._sink is None:
            raise e
        v = e.verdict
        self._sink.write({"health": {"reason": v.reason.value, "detail": v.detail, "step": v.step, "epoch": v.epoch}})
        print(f"sweeper: stopped by the health monitor: {v.reason.value}: {v.detail}", file=sys.stderr)
        raise SystemExit(0)

    # -- for integrations whose processes judge together (Lightning under DDP): each process
    #    judges, they agree on one verdict, then every process stops or none does

    def check_step(self, loss: torch.Tensor, grad_norm: torch.Tensor | None = None) -> tuple[bool, Verdict | None]:
        """``after_backward`` that returns instead of stopping: whether the health monitor judged
        its window of steps on this call (every ``check_every`` steps, so at the same calls in
        every process) and the verdict it reached, None when it found nothing."""
        verdict = None
        checks = getattr(self._monitor, "checks", None)
        if self._monitor is not None:
            try:
                self._monitor.after_backward(loss.detach(), None if grad_norm is None else grad_norm.detach(),
                                             step=self._step)
            except HealthPruned as e:
                verdict = e.verdict
        self._step += 1
        if self._monitor is None:
            return False, None
        return checks is None or getattr(self._monitor, "checks", None) != checks, verdict

    def check_eval(self, epoch: int, metrics: Mapping[str, float],
                   outputs: Mapping[str, torch.Tensor] | None = None) -> Verdict | None:
        """The health monitor's verdict on one evaluation (and on the steps since its last
        check), returned instead of stopping; nothing is recorded (``record`` does that)."""
        if self._monitor is None:
            return None
        try:
            self._monitor.after_eval(epoch, {k: float(v) for k, v in metrics.items()}, dict(outputs or {}))
        except HealthPruned as e:
            return e.verdict
        return None

    def record(self, epoch: int, metrics: Mapping[str, float],
               outputs: Mapping[str, torch.Tensor] | None = None) -> None:
        """``report`` without the health checks, for an evaluation ``check_eval`` judged: the
        history, the best value and the study (which may raise ``optuna.TrialPruned``)."""
        monitor, self._monitor = self._monitor, None
        try:
            self.report(epoch, metrics, outputs)
        finally:
            self._monitor = monitor

    def stop(self, verdict: Verdict, *, write: bool = True) -> NoReturn:
        """Stop the trial for ``verdict`` as ``after_backward`` does: ``HealthPruned``, or in a
        command run the verdict written and ``SystemExit``. ``write=False`` in the processes
        whose verdict another one writes (DDP ranks other than 0): a command run exits
        without writing."""
        e = HealthPruned(verdict)
        if write:
            self._stop(e)
        elif self._sink is not None:
            raise SystemExit(0)
        raise e


class _JsonLines:
    """The report file of a command run: one JSON object a line, flushed at once."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, msg: Mapping[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(msg) + "\n")

    def report(self, epoch: int, result: EvalResult) -> None:
        self.write({"epoch": epoch, "metrics": result.metrics})


def current_run() -> Run | None:
    """The ``Run`` of a script that sweeper started as a command (``task: {command: ...}``),
    or None when the script runs on its own. Its ``watch``, ``after_backward`` and ``report``
    reach the study as in a function task; the config arrives as the command's arguments."""
    path = os.environ.get(REPORT_ENV)
    if not path:
        return None
    spec = json.loads(os.environ.get(RUN_ENV) or "{}")
    health = spec.get("health")
    monitor = HealthMonitor(**health) if health else None  # the options the study's sweep would use
    if threading.current_thread() is threading.main_thread():
        # pruning stops the script with SIGTERM: exit through `finally` blocks, not mid-write
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return Run({}, metric=spec["metric"], direction=spec["direction"], reporter=_JsonLines(Path(path)),
               monitor=monitor, checkpoint_dir=spec.get("checkpoint_dir"), init_from=spec.get("init_from"))


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)
