"""``fit()``: the one training loop behind sweep trials, ablations and exported runs."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .tasks.base import SCHEDULES, EvalResult, Task, TaskRun


class Reporter(Protocol):
    """Receives each epoch's evaluation; may raise ``optuna.TrialPruned`` to stop the run."""

    def report(self, epoch: int, result: EvalResult) -> None: ...


class Monitor(Protocol):
    """Hooks the health monitor implements (see ``sweeper.health.HealthMonitor``)."""

    def watch(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
              scaler: torch.amp.GradScaler | None = None) -> None: ...

    def check_data(self, outputs: Mapping[str, torch.Tensor]) -> None: ...

    def after_backward(self, loss: torch.Tensor, grad_norm: torch.Tensor | None = None, *,
                       step: int | None = None) -> None: ...

    def after_eval(self, epoch: int, metrics: Mapping[str, float],
                   outputs: Mapping[str, torch.Tensor] | None = None) -> None: ...


@dataclass
class FitResult:
    """Outcome of ``fit()``: best and last metric, per-epoch history, cost."""

    metric: str
    best: float
    best_epoch: int
    last: float
    epochs_run: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_device(name: str) -> torch.device:
    """The device ``--device`` names, refused with one ``UserError`` line unless this machine
    has it (before a run folder is made)."""
    from .errors import UserError

    if name == "auto":
        return resolve_device(name)
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"--device {name}: not a device torch knows; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"--device {name}: no CUDA GPU is visible to torch on this machine; use auto or cpu")
        if dev.index is not None and dev.index >= count:
            raise UserError(f"--device {name}: GPU {dev.index} does not exist; this machine has GPUs 0-{count - 1}")
        return dev
    if dev.type == "mps" and torch.backends.mps.is_available():
        return dev
    raise UserError(f"--device {name}: this machine cannot train on {dev.type}; use auto, cpu or cuda[:N]")


def lr_lambda(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.01,
              schedule: str = "cosine", restart_steps: int = 0, restart_mult: int = 2) -> float:
    """The lr multiplier at ``step``: linear warmup from 0 to 1 over ``warmup_steps``, then

    - ``cosine``: one cosine decay to ``min_ratio`` at ``total_steps``;
    - ``cosine_restarts``: SGDR, cosine decays to ``min_ratio`` restarting at the peak, the
      first after ``restart_steps``, each period ``restart_mult`` times the last;
    - ``plateau``: 1 (``ReduceLROnPlateau`` lowers the lr from there, per evaluation).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "plateau":
        return 1.0
    t, period = step - warmup_steps, max(total_steps - warmup_steps, 1)
    if schedule == "cosine_restarts":
        period = max(restart_steps, 1)
        while t >= period:
            t, period = t - period, period * max(restart_mult, 1)
    progress = t / period
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _better(a: float, b: float, direction: str) -> bool:
    return a < b if direction == "minimize" else a > b


def fit(
    config: Mapping[str, Any],
    task: Task,
    reporter: Reporter | None = None,
    *,
    monitor: Monitor | None = None,
    checkpoint_dir: Path | None = None,
    device: str = "auto",
    best_dir: Path | None = None,
    init_from: Path | None = None,
) -> FitResult:
    """Train ``task`` with ``config`` and return the best validation metric.

    The loop: AdamW; linear warmup for ``warmup_epochs`` then the ``schedule``
    (``cosine`` decay over ``epochs``, the default; ``cosine_restarts`` every
    ``restart_epochs``, each period ``restart_mult`` x longer; ``plateau``: halve
    the lr after ``plateau_patience`` evaluations without improvement); gradient
    clipping at ``clip_norm`` (``None`` = off) whose pre-clip norm goes to the
    monitor; evaluation every epoch, reported to ``reporter`` (which may prune);
    early stop after ``patience`` epochs without improvement (``None`` = off).
    With ``checkpoint_dir`` it writes ``last.pt`` and ``best.pt`` (each holding
    the config) every epoch and resumes from ``last.pt`` when one is there; with
    ``best_dir`` (a sweep trial) only ``best.pt``, the weights of the best epoch.
    ``init_from`` starts the model from a ``best.pt`` (a kept trial's weights).
    """
    started = time.perf_counter()
    seed_everything(int(config["seed"]))
    dev = resolve_device(device)
    run = task.setup(config, dev)
    model = run.model
    if init_from is not None:
        load_weights(model, init_from, dev)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=float(config["lr"]), weight_decay=float(config["weight_decay"]))
    epochs = int(config["epochs"])
    steps_per_epoch = run.steps_per_epoch
    warmup_steps = round(float(config["warmup_epochs"]) * steps_per_epoch)
    schedule = str(config.get("schedule", "cosine"))
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    restart_steps = round(float(config.get("restart_epochs", 5)) * steps_per_epoch)
    restart_mult = int(config.get("restart_mult", 2))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_lambda(s, warmup_steps=warmup_steps, total_steps=epochs * steps_per_epoch,
                            schedule=schedule, restart_steps=restart_steps, restart_mult=restart_mult),
    )
    # after warmup the plateau schedule halves the lr when the metric stalls; the warmup
    # LambdaLR then stops stepping, or it would set the lr back to its peak
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min" if task.direction == "minimize" else "max", factor=0.5,
        patience=int(config.get("plateau_patience", 2)), min_lr=1e-6,
    ) if schedule == "plateau" else None
    clip_norm = config.get("clip_norm")
    patience = config.get("patience")
    if monitor is not None:
        monitor.watch(model, optimizer)
        monitor.check_data(run.preflight())

    history: list[dict[str, float]] = []
    best, best_epoch, start_epoch = math.nan, -1, 0
    if checkpoint_dir is not None and (checkpoint_dir / "last.pt").exists():
        state = torch.load(checkpoint_dir / "last.pt", map_location=dev, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if plateau is not None:
            plateau.load_state_dict(state["plateau"])
        torch.set_rng_state(state["torch_rng"])
        history, best, best_epoch = state["history"], state["best"], state["best_epoch"]
        start_epoch = state["epoch"] + 1
        run.load_state_dict(state["data"])

    step = start_epoch * steps_per_epoch
    stopped_early = False
    for epoch in range(start_epoch, epochs):
        model.train()
        for batch in run.train_batches(epoch):
            loss = run.loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_norm is not None:
                # returns the norm before clipping: the monitor sees explosions clipping hides
                grad_norm = torch.nn.utils.clip_grad_norm_(params, float(clip_norm))
            else:
                grads = [p.grad for p in params if p.grad is not None]
                grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
            if monitor is not None:
                monitor.after_backward(loss.detach(), grad_norm.detach(), step=step)
            optimizer.step()
            if plateau is None or step < warmup_steps:
                scheduler.step()
            step += 1

        model.eval()
        with torch.no_grad():
            result = run.evaluate()
        value = result.metrics[task.metric]
        row = {"epoch": float(epoch), **result.metrics, "lr": optimizer.param_groups[0]["lr"]}
        history.append(row)
        if plateau is not None and step >= warmup_steps:
            plateau.step(value)
        improved = best_epoch < 0 or _better(value, best, task.direction)
        if improved:
            best, best_epoch = value, epoch
        if checkpoint_dir is not None:
            _save_checkpoint(checkpoint_dir, config, model, optimizer, scheduler, plateau, run, epoch,
                             history, best, best_epoch, improved)
        elif best_dir is not None and improved:
            save_weights(best_dir / "best.pt", model, config, epoch, best)
        if monitor is not None:
            monitor.after_eval(epoch, result.metrics, result.outputs)
        if reporter is not None:
            reporter.report(epoch, result)
        if patience is not None and epoch - best_epoch >= int(patience):
            stopped_early = True
            break

    return FitResult(
        metric=task.metric, best=best, best_epoch=best_epoch,
        last=history[-1][task.metric] if history else math.nan,
        epochs_run=len(history), seconds=time.perf_counter() - started,
        history=history, stopped_early=stopped_early,
    )


def _save_checkpoint(
    folder: Path, config: Mapping[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: Any, plateau: Any, run: TaskRun, epoch: int, history: list[dict[str, float]], best: float,
    best_epoch: int, improved: bool,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "config": dict(config), "epoch": epoch, "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(), "history": history, "best": best, "best_epoch": best_epoch,
        "data": run.state_dict(), "plateau": plateau.state_dict() if plateau is not None else None,
    }
    # write then rename: a kill mid-write never leaves a torn checkpoint
    tmp = folder / "last.pt.tmp"
    torch.save(state, tmp)
    tmp.replace(folder / "last.pt")
    if improved:
        save_weights(folder / "best.pt", model, config, epoch, best)


def save_weights(path: Path, model: torch.nn.Module, config: Mapping[str, Any], epoch: int, metric: float) -> None:
    """``best.pt``: the model's weights with the config, epoch and metric they reached;
    written then renamed, so a kill mid-write leaves the previous file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"config": dict(config), "epoch": epoch, "model": model.state_dict(), "metric": metric}, tmp)
    tmp.replace(path)


def load_weights(model: torch.nn.Module, path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load the weights of a ``best.pt`` (or a bare state dict) into ``model``; returns the file's
    contents. Raises ``ValueError`` naming the file when its weights do not fit the model."""
    state = torch.load(path, map_location=device, weights_only=False)
    weights = state["model"] if isinstance(state, dict) and "model" in state else state
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ValueError(f"{path} does not fit this model ({first})") from None
    return state if isinstance(state, dict) else {"model": weights}
