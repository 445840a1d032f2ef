"""``HealthMonitor``: cheap signals after each backward, detectors every K steps and per eval."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from statistics import median
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .detectors import Detector, EvalSignals, StepWindow, build_detectors, label_evidence
from .probes import SequenceProbes
from .verdict import HealthPruned, Verdict

SAMPLES_PER_TENSOR = 1024  # weights sampled per parameter tensor to measure what a window did to them


class HealthMonitor:
    """Watches one training run and raises ``HealthPruned`` when a detector fires.

    Usable in any PyTorch loop::

        monitor = HealthMonitor(model, optimizer=optimizer)    # scaler=... under AMP
        for step, batch in enumerate(loader):
            loss = ...; loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # pre-clip norm
            monitor.after_backward(loss, norm)          # no host sync here
            optimizer.step(); optimizer.zero_grad()
        monitor.after_eval(epoch, {"loss": val_loss}, {"logits": logits, "targets": y})

    ``after_backward`` writes the loss and gradient norm into buffers on the device;
    every ``check_every`` steps (and at each evaluation) one read brings them to the host,
    with what the window did to the weights (a sample of each tensor), and the step
    detectors judge the window. Evaluations are judged with the structural probes that
    ``watch`` put on the model's sequence layers (forward hooks active only outside
    training steps).

    What each argument adds:

    - ``optimizer``: gradient norms read where the optimizer sees them (a step pre-hook:
      unscaled under a GradScaler, absent on the steps it skips) instead of computed after
      ``backward``; steps the optimizer applied; its learning rates; and which parameters
      it holds (those it does not hold are frozen on purpose, unless there is evidence of
      a module rebuilt after it was created).
    - ``scaler``: the GradScaler's scale, which tells a calibrating scaler from one that
      skips every step.
    - ``grad_norm`` in ``after_backward``: the pre-clip norm (what the pre-hook cannot see
      once gradients are clipped).

    Args:
        model: the module whose trainable parameters are watched (or call ``watch``).
        optimizer, scaler: see above.
        detectors: per-detector options by reason code (``{"grad_explosion":
            {"factor": 100}, "blank_output": False}``); unnamed ones use defaults.
        check_every: steps between host reads.
        warmup_epochs: the run's warmup, which grace periods count from.
        metric, chance_metric: the task metric and its chance value, for ``chance_plateau``.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        scaler: torch.amp.GradScaler | None = None,
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
        self._optimizer: torch.optim.Optimizer | None = None
        self._scaler: torch.amp.GradScaler | None = None
        self._hooks: list[RemovableHandle] = []
        self._probes: SequenceProbes | None = None
        self._held: set[int] = set()
        self._unheld: list[tuple[str, nn.Parameter]] = []  # trainable, not held by the optimizer
        self._unheld_why = ""
        self._frozen: list[tuple[str, nn.Parameter]] = []  # not trainable at watch time, not held
        self._buf: torch.Tensor | None = None  # (check_every, 3): loss, grad norm, norm observed
        self._filled = 0
        self._row_has_norm = False
        self._first_step = 0
        self._next_step = 0
        self._applied = 0  # optimizer steps seen by the pre-hook
        self._applied_at_start = 0
        self._peek_none: list[bool] = []
        self._peek: torch.Tensor | None = None
        self._norms: deque[float] = deque(maxlen=1000)
        self._loss_medians: list[float] = []
        self._start_loss = math.nan
        self._snap: torch.Tensor | None = None
        self._seg: torch.Tensor | None = None
        self._strides: list[int] = []
        self._initial_weight_norm = math.nan
        self._weight_norm = math.nan
        self._start_norm = math.nan
        self._first_loss = math.nan
        self._best_val_loss: float | None = None
        self._best_auc: float | None = None
        if model is not None:
            self.watch(model, optimizer, scaler=scaler)

    # ---------------------------------------------------------------- what is watched

    def watch(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
              scaler: torch.amp.GradScaler | None = None) -> None:
        """Watch ``model``'s trainable parameters (those ``optimizer`` holds, when given) and
        probe its sequence layers; see the class docstring for what ``optimizer`` and
        ``scaler`` add."""
        self.close()
        named = list(model.named_parameters())
        trainable = [(n, p) for n, p in named if p.requires_grad]
        watched = trainable
        self._optimizer, self._scaler = optimizer, scaler
        self._unheld, self._unheld_why, self._frozen = [], "", []
        if optimizer is not None:
            held = [p for group in optimizer.param_groups for p in group["params"]]
            self._held = {id(p) for p in held}
            mine = {id(p) for _, p in named}
            foreign = sum(1 for p in held if id(p) not in mine)
            watched = [(n, p) for n, p in trainable if id(p) in self._held]
            self._unheld = [(n, p) for n, p in trainable if id(p) not in self._held]
            self._frozen = [(n, p) for n, p in named if not p.requires_grad and id(p) not in self._held]
            if self._unheld and not watched:
                self._unheld_why = (f"it holds none of the model's {len(trainable)} trainable tensors: was the "
                                    "model built again after the optimizer was created?")
                watched = trainable
            elif self._unheld and foreign:
                self._unheld_why = (f"it holds {foreign} tensors that are not the model's: was a module replaced "
                                    "after the optimizer was created?")
            self._hooks.append(optimizer.register_step_pre_hook(self._on_optimizer_step))
        self._params = [(_module(name), p) for name, p in watched]
        self._strides = [max(1, math.ceil(p.numel() / SAMPLES_PER_TENSOR)) for _, p in self._params]
        self._snap = self._sample()
        if self._snap is not None:
            counts = [math.ceil(p.numel() / s) for (_, p), s in zip(self._params, self._strides, strict=True)]
            self._seg = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)).to(self._snap.device)
            self._initial_weight_norm = self._weight_norm = float(self._snap.norm())  # once, at start
        self._probes = SequenceProbes(model)

    def close(self) -> None:
        """Remove the hooks ``watch`` put on the model and the optimizer."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        if self._probes is not None:
            self._probes.close()
            self._probes = None

    def _sample(self) -> torch.Tensor | None:
        """A fixed strided sample of every watched tensor's elements, as one float32 vector."""
        if not self._params:
            return None
        device = self._params[0][1].device
        views = [p.detach().reshape(-1)[::s].to(device, torch.float32)
                 for (_, p), s in zip(self._params, self._strides, strict=True)]
        return torch.cat(views)

    # ---------------------------------------------------------------- per step

    def after_backward(self, loss: torch.Tensor, grad_norm: torch.Tensor | None = None, *,
                       step: int | None = None) -> None:
        """Record one step (call after ``backward()``, before ``optimizer.step()``); a full
        window is judged at the next call, once its last optimizer step has run."""
        step = self._next_step if step is None else step
        self._next_step = step + 1
        if self._filled == self.check_every:
            self._check_window(flush=False)
        if self._buf is None:
            self._buf = torch.zeros(self.check_every, 3, device=loss.device)
        if self._filled == 0:
            self._start_window(step)
        row = self._filled
        # device-side writes: no CPU <-> GPU synchronization on this path
        self._buf[row, 0] = loss.detach().float()
        self._row_has_norm = grad_norm is not None or self._optimizer is None
        if grad_norm is None and self._optimizer is None:
            grads = [p.grad for _, p in self._params if p.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=loss.device)
        if grad_norm is not None:
            self._buf[row, 1] = grad_norm.detach().float()
            self._buf[row, 2] = 1.0
        self._filled += 1

    def _start_window(self, step: int) -> None:
        self._first_step = step
        self._applied_at_start = self._applied
        assert self._buf is not None
        self._buf[:, 2].zero_()
        # which watched parameters have a gradient now, and its largest entry: read at the check
        grads = [p.grad for _, p in self._params]
        self._peek_none = [g is None for g in grads]
        present = [g.detach() for g in grads if g is not None]
        self._peek = None
        if present:
            try:
                peaks = torch._foreach_norm(present, math.inf)
            except RuntimeError:  # sparse gradients, mixed devices
                peaks = [(g._values() if g.is_sparse else g).abs().amax().float() for g in present]
            self._peek = torch.stack([x.to(self._buf.device) for x in peaks])

    def _on_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Step pre-hook: the optimizer applies a step; read the gradients as it sees them."""
        self._applied += 1
        if self._filled == 0 or self._row_has_norm or self._buf is None:
            return
        grads = [p.grad for _, p in self._params if p.grad is not None]
        if grads:
            self._buf[self._filled - 1, 1] = torch.nn.utils.get_total_norm(grads).float()
            self._buf[self._filled - 1, 2] = 1.0
        self._row_has_norm = True

    def _check_window(self, *, flush: bool) -> None:
        """Judge the steps since the last check: one host read, then the step detectors."""
        assert self._buf is not None
        n = self._filled
        self._filled = 0
        applied = self._applied - self._applied_at_start if self._optimizer is not None else None
        parts: dict[str, torch.Tensor] = {"rows": self._buf[:n]}
        current = self._sample()
        if current is not None and self._snap is not None and self._seg is not None:
            zeros = torch.zeros(len(self._params), device=current.device)
            parts["moved"] = zeros.index_add(0, self._seg, (current - self._snap) ** 2)  # per tensor
            parts["weights"] = zeros.index_add(0, self._seg, current ** 2)
        if self._peek is not None:
            parts["peaks"] = self._peek
        scale = getattr(self._scaler, "_scale", None)
        if isinstance(scale, torch.Tensor):
            parts["scale"] = scale
        if applied == 0 and not flush:  # no step applied in the window: are the gradients non-finite?
            grads = [p.grad for _, p in self._params if p.grad is not None]
            if grads:
                parts["unapplied"] = torch.nn.utils.get_total_norm(grads)
        read = _read(parts, self._buf.device)  # note: the one host sync per window
        if current is not None:
            self._snap = current
        window = self._window(read, n, applied, flush)
        self.checks += 1
        for det in self.detectors:
            verdict = det.on_window(window)
            if verdict is not None:
                self._fire(verdict)

    def _window(self, read: Mapping[str, list[float]], n: int, applied: int | None, flush: bool) -> StepWindow:
        """The ``StepWindow`` of what ``_check_window`` read, and the run's running state."""
        rows = [read["rows"][3 * i:3 * i + 3] for i in range(n)]
        losses = [r[0] for r in rows]
        norms: list[float | None] = [r[1] if r[2] else None for r in rows]
        modules = [m for m, _ in self._params]
        update, weight_norm, stalled, moved = math.nan, math.nan, {}, 0
        if "weights" in read:
            before = self._weight_norm
            weight_norm = self._weight_norm = math.sqrt(sum(read["weights"]))
            update = math.sqrt(sum(read["moved"])) / before if before > 0 else math.nan
            for m, d, missing in zip(modules, read["moved"], self._peek_none, strict=True):
                if d > 0:
                    moved += 1
                elif not missing:
                    stalled[m] = stalled.get(m, 0) + 1
        no_grad: dict[str, int] = {}
        zero_grad: dict[str, int] = {}
        peaks = iter(read.get("peaks", []))
        for m, missing in zip(modules, self._peek_none, strict=True):
            if missing:
                no_grad[m] = no_grad.get(m, 0) + 1
            elif next(peaks) == 0.0:
                zero_grad[m] = zero_grad.get(m, 0) + 1
        for m in zero_grad:  # an all-zero gradient moves nothing either: dead_gradients' to report
            stalled.pop(m, None)
        unheld, why = self._unheld_parameters(flush)
        finite = [x for x in losses if math.isfinite(x)]
        if not self._loss_medians and finite:
            self._start_loss = median(finite)  # a whole window: one odd batch does not set the start
            self._first_loss = finite[0]
        if not self._norms:
            first = [x for x in norms if x is not None and math.isfinite(x)][:3]
            self._start_norm = min(first) if first else math.nan
        window = StepWindow(
            first_step=self._first_step, last_step=self._first_step + n - 1, losses=losses, grad_norms=norms,
            previous_norms=list(self._norms), no_grad=no_grad, zero_grad=zero_grad, n_params=len(self._params),
            checks=self.checks + 1, weight_norm=weight_norm, initial_weight_norm=self._initial_weight_norm,
            update_ratio=update, stalled=stalled, moved=moved, applied_steps=applied,
            # (an lr held as a tensor costs a read of its own: rare)
            lrs=[float(g["lr"]) for g in self._optimizer.param_groups] if self._optimizer is not None else None,
            loss_scale=read["scale"][0] if "scale" in read else None, earlier_losses=list(self._loss_medians),
            start_loss=self._start_loss, first_loss=self._first_loss, start_norm=self._start_norm, modules=modules,
            unheld=unheld, unheld_why=why,
            skipped_nonfinite="unapplied" in read and not math.isfinite(read["unapplied"][0]),
        )
        self._norms.extend(x for x in norms if x is not None and math.isfinite(x))
        if finite:
            self._loss_medians.append(median(finite))
        return window

    def _unheld_parameters(self, flush: bool) -> tuple[dict[str, int], str]:
        """Trainable tensors with a gradient that the optimizer does not hold, when there is
        evidence that this is a mistake (judged after a backward, not at a flush)."""
        if flush or self._optimizer is None:
            return {}, ""
        why = self._unheld_why
        found = [name for name, p in self._unheld if why and p.grad is not None]
        unfrozen = [name for name, p in self._frozen if p.requires_grad and p.grad is not None]
        if unfrozen:
            why = why or "they became trainable after the optimizer was created"
        counts: dict[str, int] = {}
        for name in found + unfrozen:
            counts[_module(name)] = counts.get(_module(name), 0) + 1
        return counts, why if counts else ""

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
            self._check_window(flush=True)
        outputs = outputs or {}
        logits, targets = outputs.get("logits"), outputs.get("targets")
        evidence = label_evidence(logits, targets) if logits is not None and targets is not None else None
        signals = EvalSignals(epoch=epoch, step=max(self._next_step - 1, 0), metrics=metrics, outputs=outputs,
                              warmup_epochs=self.warmup_epochs, metric=self.metric, chance_metric=self.chance_metric,
                              best_loss=self._best_val_loss, evidence=evidence, best_auc=self._best_auc,
                              sequence_shares=self._probes.read() if self._probes is not None else ())
        if evidence is not None:
            self._best_auc = evidence.auc if self._best_auc is None else max(self._best_auc, evidence.auc)
        loss = metrics.get("loss")
        if loss is not None and math.isfinite(loss):
            self._best_val_loss = loss if self._best_val_loss is None else min(self._best_val_loss, loss)
        for det in self.detectors:
            verdict = det.on_eval(signals)
            if verdict is not None:
                self._fire(verdict)

    def _fire(self, verdict: Verdict) -> None:
        self.verdict = verdict
        raise HealthPruned(verdict)


def _module(parameter_name: str) -> str:
    """The module a parameter belongs to (``encoder.0`` for ``encoder.0.weight``)."""
    return parameter_name.rpartition(".")[0] or parameter_name


def _read(parts: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, list[float]]:
    """Every tensor of ``parts`` brought to the host in one transfer, as lists of floats."""
    flat = [t.detach().float().flatten().to(device) for t in parts.values()]
    values = torch.cat(flat).tolist()
    out, pos = {}, 0
    for name, t in zip(parts, flat, strict=True):
        out[name] = values[pos:pos + t.numel()]
        pos += t.numel()
    return out
