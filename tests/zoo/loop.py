"""One user-style training loop with the monitor hooked in as the README shows, and the
switches the zoo's loop bugs need (no ``zero_grad``, a per-step scheduler, AMP, ...)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sweeper.health import HealthMonitor, HealthPruned
from sweeper.health.verdict import Verdict

from .data import Split

Batch = torch.Tensor  # the indices of one batch; the case's loss slices its data with them
LossFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]
EvalFn = Callable[[nn.Module], tuple[dict[str, float], dict[str, torch.Tensor]]]


@dataclass
class Outcome:
    """How a run ended: its verdict (None when not pruned), the epoch the verdict came in,
    the epochs evaluated and each evaluation's metrics."""

    verdict: Verdict | None = None
    verdict_epoch: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)


def watch(monitor: HealthMonitor | None, model: nn.Module, optimizer: torch.optim.Optimizer | None,
          scaler: torch.amp.GradScaler | None = None) -> None:
    """``monitor.watch(model, optimizer, scaler=...)`` where the monitor takes them, else ``watch(model)``."""
    if monitor is None:
        return
    accepted = inspect.signature(monitor.watch).parameters
    kwargs: dict[str, Any] = {}
    if optimizer is not None and "optimizer" in accepted:
        kwargs["optimizer"] = optimizer
    if scaler is not None and "scaler" in accepted:
        kwargs["scaler"] = scaler
    monitor.watch(model, **kwargs)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, monitor: HealthMonitor | None, *, data: Split,
          loss_fn: LossFn, evaluate: EvalFn, epochs: int, batch_size: int = 32, clip: float | None = None,
          hand_norm: bool = False, hand_optimizer: bool = True, scaler: torch.amp.GradScaler | None = None,
          amp_dtype: torch.dtype | None = None, accumulate: int = 1, zero_grad: bool = True,
          scheduler: Any = None, train_mode: Callable[[int], bool] = lambda epoch: True,
          at_epoch: Callable[[int], None] | None = None, watched: nn.Module | None = None) -> Outcome:
    """Train ``model`` as a user's loop does, with the monitor's two calls; stop on ``HealthPruned``.

    ``watched``: the module handed to the monitor when it is not the one trained (a model
    rebuilt after its optimizer was created)."""
    out = Outcome()
    watch(monitor, watched if watched is not None else model, optimizer if hand_optimizer else None, scaler)
    generator = torch.Generator().manual_seed(int(torch.initial_seed()) % 2**31)
    micro = 0
    epoch = 0
    try:
        for epoch in range(epochs):
            if at_epoch is not None:
                at_epoch(epoch)
            if train_mode(epoch):
                model.train()
            order = torch.randperm(len(data.x), generator=generator)
            for start in range(0, len(order) - batch_size + 1, batch_size):
                idx = order[start:start + batch_size]
                with torch.autocast("cpu", dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss = loss_fn(model, idx)
                scaled = loss / accumulate
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
                micro += 1
                stepping = micro % accumulate == 0
                norm = None
                if stepping and clip is not None:
                    if scaler is not None:
                        scaler.unscale_(optimizer)
                    norm = nn.utils.clip_grad_norm_(model.parameters(), clip)  # the pre-clip norm
                if monitor is not None:
                    monitor.after_backward(loss, norm if hand_norm else None)
                if stepping:
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    if zero_grad:
                        optimizer.zero_grad()
                    if scheduler is not None:
                        scheduler.step()
            model.eval()
            with torch.no_grad():
                metrics, outputs = evaluate(model)
            out.history.append(metrics)
            if monitor is not None:
                monitor.after_eval(epoch, metrics, outputs)
    except HealthPruned as e:
        out.verdict, out.verdict_epoch = e.verdict, epoch
    return out


# ---------------------------------------------------------------- losses and evaluations


def classify_loss(data: Split, *, reduction: str = "mean", scale: float = 1.0, label_smoothing: float = 0.0,
                  weight: torch.Tensor | None = None, targets: torch.Tensor | None = None) -> LossFn:
    y = data.y if targets is None else targets

    def loss(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        return scale * nn.functional.cross_entropy(model(data.x[idx]), y[idx], reduction=reduction,
                                                   label_smoothing=label_smoothing, weight=weight)
    return loss


def classify_eval(data: Split, *, f1: bool = False) -> EvalFn:
    """Validation cross-entropy and accuracy (or the positive class's F1); logits and targets."""

    def evaluate(model: nn.Module) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        logits = model(data.vx).float()
        metrics = {"loss": float(nn.functional.cross_entropy(logits, data.vy)),
                   "accuracy": float((logits.argmax(1) == data.vy).float().mean())}
        if f1:
            pred = logits.argmax(1)
            tp = float(((pred == 1) & (data.vy == 1)).sum())
            metrics["f1"] = 2 * tp / max(float((pred == 1).sum() + (data.vy == 1).sum()), 1.0)
        return metrics, {"logits": logits, "targets": data.vy}
    return evaluate


def regression_loss(data: Split, *, reduction: str = "mean", target_scale: float = 1.0) -> LossFn:
    def loss(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(model(data.x[idx]).squeeze(-1), target_scale * data.y[idx],
                                      reduction=reduction)
    return loss


def regression_eval(data: Split, *, target_scale: float = 1.0) -> EvalFn:
    def evaluate(model: nn.Module) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        pred = model(data.vx).squeeze(-1) / target_scale
        mse = float(nn.functional.mse_loss(pred, data.vy))
        return {"loss": mse, "mse": mse}, {}
    return evaluate


def _trim(data: Split, idx: torch.Tensor, *, val: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = (data.vlengths if val else data.lengths)
    assert lengths is not None
    lengths = lengths[idx]
    x = (data.vx if val else data.x)[idx, :int(lengths.max())]
    return x, lengths


def tag_loss(data: Split) -> LossFn:
    def loss(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        x, lengths = _trim(data, idx)
        logits = model(x, lengths)
        valid = torch.arange(x.shape[1])[None, :] < lengths[:, None]
        return nn.functional.cross_entropy(logits[valid], data.y[idx, :x.shape[1]][valid])
    return loss


def tag_eval(data: Split) -> EvalFn:
    """Per-column tagging: frame accuracy; logits and targets of the valid columns."""

    def evaluate(model: nn.Module) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        idx = torch.arange(len(data.vx))
        x, lengths = _trim(data, idx, val=True)
        logits = model(x, lengths)
        valid = torch.arange(x.shape[1])[None, :] < lengths[:, None]
        logits, y = logits[valid], data.vy[:, :x.shape[1]][valid]
        return ({"loss": float(nn.functional.cross_entropy(logits, y)),
                 "accuracy": float((logits.argmax(1) == y).float().mean())}, {"logits": logits, "targets": y})
    return evaluate


def ctc_loss(data: Split) -> LossFn:
    assert data.targets is not None

    def loss(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        x, lengths = _trim(data, idx)
        labels = [data.targets[i] for i in idx.tolist()]  # type: ignore[index]
        targets = torch.tensor([t for lab in labels for t in lab])
        target_lengths = torch.tensor([len(lab) for lab in labels])
        return nn.functional.ctc_loss(model(x, lengths), targets, lengths, target_lengths, zero_infinity=True)
    return loss


def ctc_eval(data: Split) -> EvalFn:
    """CTC: validation loss and greedy-decoded WER (a user's loop reports metrics only)."""
    from sweeper.tasks.ctc_digits import greedy_decode, word_error_rate

    assert data.vtargets is not None

    def evaluate(model: nn.Module) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        idx = torch.arange(len(data.vx))
        x, lengths = _trim(data, idx, val=True)
        log_probs = model(x, lengths)
        targets = torch.tensor([t for lab in data.vtargets for t in lab])  # type: ignore[union-attr]
        target_lengths = torch.tensor([len(lab) for lab in data.vtargets])  # type: ignore[arg-type]
        loss = float(nn.functional.ctc_loss(log_probs, targets, lengths, target_lengths, zero_infinity=True))
        wer = word_error_rate(greedy_decode(log_probs, lengths), data.vtargets)  # type: ignore[arg-type]
        return {"loss": loss, "wer": wer}, {}
    return evaluate


def lm_loss(data: Split) -> LossFn:
    def loss(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(model(data.x[idx]).flatten(0, 1), data.y[idx].flatten())
    return loss


def lm_eval(data: Split) -> EvalFn:
    def evaluate(model: nn.Module) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        logits = model(data.vx).flatten(0, 1)
        y = data.vy.flatten()
        return ({"loss": float(nn.functional.cross_entropy(logits, y)),
                 "accuracy": float((logits.argmax(1) == y).float().mean())}, {"logits": logits, "targets": y})
    return evaluate


def final(history: list[Mapping[str, float]], key: str) -> float:
    return history[-1][key] if history else math.nan
