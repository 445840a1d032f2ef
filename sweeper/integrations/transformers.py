"""Hugging Face ``Trainer``: the health monitor, pruning with reasons and per-evaluation
reports for a ``transformers.Trainer``, in one line::

    trainer = Trainer(..., callbacks=[SweeperCallback(run)])   # run: what sweep(config, run) got

In a script that sweeper runs as a command, ``SweeperCallback()`` picks up
``sweeper.current_run()``; when the script runs on its own there is no run and the
callback does nothing. A callback is handed neither the loss nor the gradient norm the
``Trainer`` computes, nor the evaluation's logits; what it feeds sweeper, and from where:

- at ``on_train_begin``: ``run.watch(model, optimizer, scaler=...)``: the model, the torch
  optimizer inside accelerate's wrapper (the ``Trainer`` has created it by then) and the
  wrapper's GradScaler under fp16;
- at each optimizer step, from ``on_pre_optimizer_step`` (after the ``Trainer`` clipped the
  gradients, before the step): the step's training loss, kept by a forward hook on the
  model from each training forward's ``outputs.loss`` and combined over accumulated
  micro-batches as the ``Trainer`` combines them for its backward and its logged ``loss``;
  and the **pre-clip** gradient norm, the one the ``Trainer`` logs as ``grad_norm``. Where
  ``max_grad_norm > 0`` the gradients are clipped in place before any step hook, so the
  callback measures each gradient as it is accumulated (a post-accumulate-grad hook per
  trainable tensor: one norm kernel each per backward, no host sync) and hands their total,
  divided by the GradScaler's scale under fp16, to ``after_backward``; with clipping off the
  monitor reads the gradients in its optimizer step pre-hook, which is the same norm;
- at each ``on_evaluate`` during ``train()``: the metrics with the ``Trainer``'s ``eval_``
  prefix removed (``eval_accuracy`` -> ``accuracy``, ``eval_loss`` -> ``loss``, which the
  monitor reads as progress), without ``epoch`` and the speed metrics; a study may name its
  metric either way (``accuracy`` or ``eval_accuracy``). The epoch passed to ``report``
  is the evaluation's index in the trial (0, 1, ...): with ``eval_strategy="epoch"`` the
  0-based epoch, with ``"steps"`` the pruner counts evaluations. With the ``compute_metrics``
  it wraps (``compute_metrics=callback.compute_metrics(fn)``), the evaluation's logits and
  labels as ``outputs`` for the class-collapse and chance checks; without it, none.

A verdict or the pruner raises from the hook; the ``Trainer`` does not catch exceptions
from callbacks, so ``HealthPruned`` / ``optuna.TrialPruned`` (``SystemExit`` in a command
run) leave ``trainer.train()`` as they are (the callback removes its hooks first). One
training process per trial: under DDP (``world_size > 1``) the callback refuses to start.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from accelerate.optimizer import AcceleratedOptimizer
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import EvalPrediction

from .run import Run, current_run

PREFIX = "eval_"
# the speed of an evaluation, not a result (NAME_runtime, ... for each of a dict of eval datasets)
SPEED = ("runtime", "samples_per_second", "steps_per_second", "model_preparation_time")
IGNORE_INDEX = -100  # the label transformers' losses skip (padding of token-level labels)

MetricsFn = Callable[..., dict[str, float]]
LossFn = Callable[..., torch.Tensor]


class SweeperCallback(TrainerCallback):
    """Connects a ``transformers.Trainer`` to a sweeper trial (see the module docstring).

    Args:
        run: the ``Run`` a function task gets (``sweep(config, run)``); None (the default)
            takes ``sweeper.current_run()``, the run of a script sweeper started as a
            command, and does nothing at all when there is none.
        keep_best: keep the model's weights at its best evaluation (``run.keep_best``): the
            study keeps its ``checkpoints.keep`` best trials' files, and ``sweeper train
            --from-checkpoint`` starts the model from them.

    Attributes:
        evaluations: evaluations reported so far (the next report's epoch).

    For the class-collapse check, let it see the evaluation's outputs:
    ``Trainer(..., compute_metrics=callback.compute_metrics(my_metrics), callbacks=[callback])``.
    Where the ``Trainer`` computes the loss outside the model with ``compute_loss_func``,
    wrap that too (``compute_loss_func=callback.compute_loss(my_loss)``).
    """

    def __init__(self, run: Run | None = None, *, keep_best: bool = False) -> None:
        self.run = run if run is not None else current_run()
        self.keep_best = keep_best
        self.evaluations = 0
        self._training = False
        self._hooks: list[RemovableHandle] = []
        self._losses: list[tuple[torch.Tensor, bool]] = []  # per micro-batch: loss, normalized over the step
        self._loss_fn = False  # compute_loss() wraps the Trainer's loss: the model returns none
        self._warned = False
        self._norms: dict[int, torch.Tensor] = {}  # per trainable tensor: its accumulated gradient's norm
        self._measure_norms = False
        self._scaler: torch.amp.GradScaler | None = None
        self._outputs: dict[str, torch.Tensor] | None = None
        self._batches: list[EvalPrediction] = []
        self._pending: dict[str, float] = {}  # an evaluation round's metrics, until it is reported
        self._pending_outputs: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ wrappers

    def compute_metrics(self, fn: MetricsFn | None = None) -> MetricsFn:
        """``fn`` (a ``Trainer`` ``compute_metrics``, or None for no metrics but the loss) that
        first keeps the evaluation's ``predictions`` and ``label_ids`` for the next report:
        logits (N x C, N positive-class logits, or N x T x C for token labels, where the
        labels' -100 entries are left out) or class ids that ``preprocess_logits_for_metrics``
        made, with integer labels; other shapes and float labels (regression) are not passed.
        Works with ``batch_eval_metrics=True`` too (the batches are concatenated)."""

        def wrapped(eval_pred: EvalPrediction, **kwargs: Any) -> dict[str, float]:
            if self.run is not None:
                if "compute_result" in kwargs:  # batch_eval_metrics: one call per batch
                    self._batches.append(eval_pred)
                    if kwargs["compute_result"]:
                        self._outputs = _batch_outputs(self._batches)
                        self._batches = []
                else:
                    self._outputs = _outputs(eval_pred.predictions, eval_pred.label_ids)
            return fn(eval_pred, **kwargs) if fn is not None else {}

        return wrapped

    def compute_loss(self, fn: LossFn) -> LossFn:
        """``fn`` (a ``Trainer`` ``compute_loss_func``) whose training losses the monitor sees;
        needed only there, as the model then returns no loss of its own."""
        self._loss_fn = True

        def wrapped(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> torch.Tensor:
            loss = fn(outputs, labels, num_items_in_batch=num_items_in_batch)
            if self._training and torch.is_grad_enabled() and isinstance(loss, torch.Tensor):
                self._losses.append((loss.detach(), True))  # the Trainer does not divide it by the accumulation
            return loss

        return wrapped

    # ------------------------------------------------------------------ training

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
                       **kwargs: Any) -> None:
        """Hand the model and its optimizer to the monitor; hook the loss and the gradients."""
        if self.run is None or model is None:
            return
        if args.world_size > 1:
            raise RuntimeError(f"SweeperCallback: the Trainer runs {args.world_size} processes; a trial is judged "
                               "and reported from one (run each trial in one process, and trials side by side "
                               "with `sweeper run --workers N`)")
        self._close()
        self._training, self._losses, self._norms, self._measure_norms = True, [], {}, False
        self._pending, self._pending_outputs = {}, None
        scaler = getattr(optimizer, "scaler", None)  # accelerate's AcceleratedOptimizer under fp16
        self._scaler = scaler if isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled() else None
        self.run.watch(model, _torch_optimizer(optimizer), scaler=self._scaler)
        if self.keep_best:
            self.run.keep_best(model)
        if not self.run.monitored:  # health off: the steps are not judged, only the evaluations reported
            return
        self._hooks.append(model.register_forward_hook(self._on_forward, with_kwargs=True))
        # clipping rewrites the gradients before any step hook: measure them as they accumulate
        self._measure_norms = args.max_grad_norm is not None and args.max_grad_norm > 0
        if self._measure_norms:
            for i, p in enumerate(q for q in model.parameters() if q.requires_grad):
                self._hooks.append(p.register_post_accumulate_grad_hook(self._norm_hook(i)))

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                      **kwargs: Any) -> None:
        """A new optimizer step (its first micro-batch): report an evaluation round of several
        datasets; forget the last step's gradient norms."""
        if self._training:
            self._norms.clear()
            self._report()

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                              **kwargs: Any) -> None:
        """One step for the monitor: the step's loss and its pre-clip gradient norm."""
        if not self._training or self.run is None or not self.run.monitored:
            return
        if not self._losses:
            if not self._warned:
                self._warned = True
                warnings.warn("SweeperCallback saw no training loss: the model returned none, as where the Trainer "
                              "computes it (label_smoothing_factor, compute_loss_func: pass compute_loss_func="
                              "callback.compute_loss(fn)); the per-step health checks are off", RuntimeWarning,
                              stacklevel=2)
            return
        losses = torch.stack([loss.float().mean() for loss, _ in self._losses])
        # as the Trainer backpropagates: a loss normalized over the step's items is summed over its
        # micro-batches, a per-batch mean is divided by their number
        loss = losses.sum() if all(normalized for _, normalized in self._losses) else losses.mean()
        self._losses = []
        norm = None
        if self._measure_norms and self._norms:
            norms = list(self._norms.values())
            norm = torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]))
            scale = getattr(self._scaler, "_scale", None)
            if isinstance(scale, torch.Tensor):
                norm = norm / scale.to(norm.device)  # the gradients were scaled; the Trainer unscaled them to clip
        self._call(self.run.after_backward, loss, norm)

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    metrics: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        """Report an evaluation that ran during ``train()`` (with the outputs ``compute_metrics``
        kept); one outside training (``trainer.evaluate()`` after it) is not reported. The
        ``Trainer`` evaluates a dict of datasets one by one (``eval_NAME_loss``, ...): their
        metrics are merged and reported when the next step begins or training ends."""
        outputs, self._outputs = self._outputs, None
        if not self._training or self.run is None:
            return
        values = self._metrics(metrics or {})
        if outputs is not None and (self._pending_outputs is None or self.run.metric in values):
            self._pending_outputs = outputs  # of the dataset the study's metric comes from
        self._pending.update(values)
        if f"{PREFIX}loss" in (metrics or {}):  # the evaluation of the one eval dataset
            self._report()

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        """Report an evaluation round still pending; remove the hooks."""
        if self._training:
            try:
                self._report()
            finally:
                self._training = False
                self._close()

    # ------------------------------------------------------------------ internals

    def _on_forward(self, module: nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        """Forward hook: keep the loss of a training forward (not of evaluation batches)."""
        if self._loss_fn or not (module.training and torch.is_grad_enabled()):
            return
        if isinstance(output, Mapping):
            loss = output.get("loss")
        elif isinstance(output, tuple | list) and output and kwargs.get("labels") is not None:
            loss = output[0]  # return_dict=False: the loss comes first, as the Trainer reads it
        else:
            loss = None
        if isinstance(loss, torch.Tensor):
            # the Trainer passes num_items_in_batch to a model that takes loss kwargs and then does
            # not divide its loss by the gradient accumulation steps
            self._losses.append((loss.detach(), kwargs.get("num_items_in_batch") is not None))

    def _norm_hook(self, i: int) -> Callable[[torch.Tensor], None]:
        def hook(p: torch.Tensor) -> None:
            g = p.grad
            if g is not None:
                if g.is_sparse:
                    g = g.coalesce().values()
                self._norms[i] = torch.linalg.vector_norm(g.detach(), dtype=torch.float32)
        return hook

    def _metrics(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """The Trainer's evaluation metrics as the study sees them (see the module docstring)."""
        out: dict[str, float] = {}
        for key, value in metrics.items():
            name = key.removeprefix(PREFIX)
            if name == "epoch" or name.endswith(SPEED) or isinstance(value, bool) or not isinstance(
                    value, int | float | np.number):
                continue
            out[name] = float(value)
        assert self.run is not None
        if self.run.metric.startswith(PREFIX) and self.run.metric.removeprefix(PREFIX) in out:
            out[self.run.metric] = out[self.run.metric.removeprefix(PREFIX)]
        return out

    def _report(self) -> None:
        """Report the evaluation round's metrics, if any (a round without the study's metric is
        one error)."""
        if not self._pending or self.run is None:
            return
        values, outputs = self._pending, self._pending_outputs
        self._pending, self._pending_outputs = {}, None
        if self.run.metric not in values:
            self._training = False
            self._close()
            raise KeyError(f"SweeperCallback: the evaluation gave {', '.join(values)} (the Trainer's eval_ prefix "
                           f"removed); the study's metric is {self.run.metric!r}: return it from compute_metrics")
        epoch = self.evaluations
        self.evaluations += 1
        self._call(self.run.report, epoch, values, outputs)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        """Call ``run``: a verdict or a prune raises out of the Trainer, without the hooks."""
        try:
            fn(*args)
        except BaseException:
            self._training = False
            self._close()
            raise

    def _close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()


def _torch_optimizer(optimizer: Any) -> torch.optim.Optimizer | None:
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer`` (which steps it, or
    lets the GradScaler skip it)."""
    while isinstance(optimizer, AcceleratedOptimizer):
        optimizer = optimizer.optimizer
    return optimizer if isinstance(optimizer, torch.optim.Optimizer) else None


def _tensor(x: Any) -> torch.Tensor | None:
    if isinstance(x, tuple):  # several model outputs: the logits come first
        x = x[0] if x else None
    if isinstance(x, list):  # eval_do_concat_batches=False: one array per batch
        try:
            x = np.concatenate([np.asarray(b) for b in x]) if x else None
        except ValueError:
            return None
    if x is None:
        return None
    return x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _outputs(predictions: Any, label_ids: Any) -> dict[str, torch.Tensor] | None:
    """``{"logits" | "predictions": ..., "targets": ...}`` from an ``EvalPrediction``'s arrays,
    or None where they are not class scores against class labels."""
    p, t = _tensor(predictions), _tensor(label_ids)
    if p is None or t is None or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        return None
    t = t.long()
    if p.is_floating_point():
        if p.ndim == t.ndim + 1 and p.ndim >= 3:  # token labels: N x T x C against N x T
            p, t = p.reshape(-1, p.shape[-1]), t.reshape(-1)
        elif p.ndim == 2 and p.shape[1] == 1 and t.ndim == 1:
            p = p[:, 0]
        if not ((p.ndim == 2 and t.ndim == 1) or (p.ndim == 1 and t.ndim == 1)) or len(p) != len(t):
            return None
        keep = t != IGNORE_INDEX
        return {"logits": p[keep].float(), "targets": t[keep]}
    if p.shape != t.shape:
        return None
    keep = t.reshape(-1) != IGNORE_INDEX
    return {"predictions": p.reshape(-1).long()[keep], "targets": t.reshape(-1)[keep]}


def _batch_outputs(batches: list[EvalPrediction]) -> dict[str, torch.Tensor] | None:
    """The outputs of an evaluation that ``batch_eval_metrics`` handed over batch by batch."""
    parts = [_outputs(b.predictions, b.label_ids) for b in batches]
    first = parts[0] if parts else None
    if first is None or any(part is None or part.keys() != first.keys() for part in parts):
        return None
    return {k: torch.cat([part[k] for part in parts if part is not None]) for k in first}


__all__ = ["SweeperCallback"]
