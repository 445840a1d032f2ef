"""``HealthMonitor``: cheap signals after each backward, detectors every K steps and per eval."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .detectors import Detector, EvalSignals, StepWindow, build_detectors
from .verdict import HealthPruned, Verdict


class HealthMonitor:
    """Watches one training run and raises ``HealthPruned`` when a detector fires.

    Usable in any PyTorch loop::

        monitor = HealthMonitor(model)
        for step, batch in enumerate(loader):
            loss = ...; loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # pre-clip norm
            monitor.after_backward(loss, norm)          # no host sync here
            optimizer.step()
        monitor.after_eval(epoch, {"loss": val_loss}, {"predictions": p, "targets": y})

    ``after_backward`` writes the loss and gradient norm into buffers on the
    device; every ``check_every`` steps (and before each evaluation) one read
    brings them to the host and the step detectors judge the window. Without a
    ``grad_norm`` the monitor computes it (an extra pass over the gradients).

    Args:
        model: the module whose trainable parameters are watched (or call ``watch``).
        detectors: per-detector options by reason code (``{"grad_explosion":
            {"ceiling": 1e5}, "blank_output": False}``); unnamed ones use defaults.
        check_every: steps between host reads.
        warmup_epochs: the run's warmup, which grace periods count from.
        metric, chance_metric: the task metric and its chance value, for ``chance_plateau``.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        detectors: Mapping[str, Mapping[str, Any] | bool] | None = None,
        check_every: int = 20,
        warmup_epochs: float = 0.0,
        metric: str | None = None,
        chance_metric: float | None = None,
    ) -> None:
        if check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {check_every}")
        self.detectors: list[Detector] = build_detectors(detectors)
        self.check_every = check_every
        self.warmup_epochs = warmup_epochs
        self.metric = metric
        self.chance_metric = chance_metric
        self.verdict: Verdict | None = None
        self.checks = 0
        self._params: list[tuple[str, nn.Parameter]] = []
        self._buf: torch.Tensor | None = None  # (check_every, 2): loss, grad norm
        self._filled = 0
        self._first_step = 0
        self._next_step = 0
        self._norms: deque[float] = deque(maxlen=1000)
        self._initial_weight_norm = math.nan
        if model is not None:
            self.watch(model)

    def watch(self, model: nn.Module) -> None:
        """Watch ``model``'s trainable parameters (for dead gradients)."""
        self._params = [(name.rpartition(".")[0] or name, p) for name, p in model.named_parameters()
                        if p.requires_grad]
        self._initial_weight_norm = self._weight_norm().item() if self._params else math.nan  # once, at start

    def _weight_norm(self) -> torch.Tensor:
        return torch.nn.utils.get_total_norm([p.detach() for _, p in self._params])

    # ---------------------------------------------------------------- per step

    def after_backward(self, loss: torch.Tensor, grad_norm: torch.Tensor | None = None, *,
                       step: int | None = None) -> None:
        """Record one step; every ``check_every`` steps, run the step detectors."""
        step = self._next_step if step is None else step
        self._next_step = step + 1
        if grad_norm is None:
            grads = [p.grad for _, p in self._params if p.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=loss.device)
        if self._buf is None:
            self._buf = torch.empty(self.check_every, 2, device=loss.device)
        if self._filled == 0:
            self._first_step = step
        # device-side writes: no CPU <-> GPU synchronization on this path
        self._buf[self._filled, 0] = loss.detach().float()
        self._buf[self._filled, 1] = grad_norm.detach().float()
        self._filled += 1
        if self._filled == self.check_every:
            self._check_window(step)

    def _check_window(self, last_step: int) -> None:
        assert self._buf is not None
        n = self._filled
        self._filled = 0
        # which watched parameters got no (or an all-zero) gradient at this step, and their size
        peaks = [p.grad.detach().abs().amax().float() if p.grad is not None else None for _, p in self._params]
        present = [x for x in peaks if x is not None]
        parts = [self._buf[:n].flatten()]
        if self._params:
            parts.append(self._weight_norm().float().reshape(1).to(self._buf.device))
        if present:
            parts.append(torch.stack(present).to(self._buf.device))
        values = torch.cat(parts).tolist()  # note: the one host sync per window
        losses, norms = values[0:2 * n:2], values[1:2 * n:2]
        weight_norm = values[2 * n] if self._params else math.nan
        peak_iter = iter(values[2 * n + 1:])
        no_grad: dict[str, int] = {}
        zero_grad: dict[str, int] = {}
        for (module, _), peak in zip(self._params, peaks, strict=True):
            if peak is None:
                no_grad[module] = no_grad.get(module, 0) + 1
            elif next(peak_iter) == 0.0:
                zero_grad[module] = zero_grad.get(module, 0) + 1
        self.checks += 1
        window = StepWindow(first_step=self._first_step, last_step=last_step, losses=losses, grad_norms=norms,
                            previous_norms=list(self._norms), no_grad=no_grad, zero_grad=zero_grad,
                            n_params=len(self._params), checks=self.checks, weight_norm=weight_norm,
                            initial_weight_norm=self._initial_weight_norm)
        self._norms.extend(x for x in norms if x == x)
        for det in self.detectors:
            verdict = det.on_window(window)
            if verdict is not None:
                self._fire(verdict)

    @property
    def steps_seen(self) -> int:
        """Training steps recorded so far."""
        return self._next_step

    # ---------------------------------------------------------------- before training

    def check_data(self, outputs: Mapping[str, torch.Tensor]) -> None:
        """Judge the training data before the first step: a CTC configuration whose
        outputs are too short for its labels is infeasible whatever it learns."""
        for det in self.detectors:
            verdict = det.on_data(outputs)
            if verdict is not None:
                self._fire(verdict)

    # ---------------------------------------------------------------- per evaluation

    def after_eval(self, epoch: int, metrics: Mapping[str, float],
                   outputs: Mapping[str, torch.Tensor] | None = None) -> None:
        """Judge one evaluation (and the steps since the last check)."""
        if self._filled:
            self._check_window(self._next_step - 1)
        signals = EvalSignals(epoch=epoch, step=max(self._next_step - 1, 0), metrics=metrics, outputs=outputs or {},
                              warmup_epochs=self.warmup_epochs, metric=self.metric, chance_metric=self.chance_metric)
        for det in self.detectors:
            verdict = det.on_eval(signals)
            if verdict is not None:
                self._fire(verdict)

    def _fire(self, verdict: Verdict) -> None:
        self.verdict = verdict
        raise HealthPruned(verdict)
