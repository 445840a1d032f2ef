"""Lightning: the health monitor, pruning with reasons and per-epoch reports for a
``LightningModule`` trained by a ``Trainer``, in one line::

    trainer = Trainer(..., callbacks=[SweeperCallback(run)])   # run: what sweep(config, run) got

In a script that sweeper runs as a command, ``SweeperCallback()`` picks up
``sweeper.current_run()``; when the script runs on its own there is no run and the
callback does nothing. What it feeds sweeper:

- at fit start, ``run.watch(module, optimizer, scaler=...)``: the module, its (first)
  optimizer and the precision plugin's GradScaler, if any;
- at each optimizer step, from ``on_before_optimizer_step`` (where Lightning has unscaled
  the gradients under AMP and not yet clipped them): the gradient norm, computed there,
  and the training loss of the step (the mean over its accumulated batches);
- once per training epoch that ran a validation, after it: ``trainer.callback_metrics``
  as floats (the study's metric must be among them: ``self.log("accuracy", ...)``) and,
  for the class-collapse check, the ``logits`` (or ``predictions``) and ``targets`` that
  ``validation_step`` returns in a dict, concatenated over the validation.

A verdict or the pruner stops the fit by raising from the hook; Lightning tears down and
re-raises, so ``HealthPruned`` / ``optuna.TrialPruned`` (``SystemExit`` in a command run)
reach the code that called ``trainer.fit``. Under DDP every rank runs the monitor; at its
check points the ranks exchange their verdicts, all stop on the first one, and only global
rank 0 writes reports and the verdict.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

from ..health import Verdict
from .run import Run, current_run

OUTPUT_KEYS = ("logits", "predictions", "targets")  # what validation_step may return for the monitor
CHILDREN_WAIT_S = 30.0  # how long rank 0, stopping on a verdict, waits for the ranks it launched


class SweeperCallback(Callback):
    """Connects a Lightning ``Trainer`` to a sweeper trial.

    Args:
        run: the ``Run`` a function task gets (``sweep(config, run)``); None (the default)
            takes ``sweeper.current_run()``, the run of a script sweeper started as a
            command, and does nothing at all when there is none.
        keep_best: keep the module's weights at its best epoch (``run.keep_best``): the study
            keeps its ``checkpoints.keep`` best trials' files, and ``sweeper train
            --from-checkpoint`` starts the module from them.

    Let ``validation_step`` log the study's metric (with ``sync_dist=True`` under DDP, so
    rank 0 reports the whole validation set's value) and, optionally, return
    ``{"logits": logits, "targets": y}`` for the class-collapse check.
    """

    def __init__(self, run: Run | None = None, *, keep_best: bool = False) -> None:
        super().__init__()
        self.run = run if run is not None else current_run()
        self.keep_best = keep_best
        self._optimizer: torch.optim.Optimizer | None = None
        self._scaler: torch.amp.GradScaler | None = None
        self._loss: torch.Tensor | None = None  # the losses backpropagated since the last optimizer step, summed
        self._backwards = 0
        self._outputs: dict[str, list[torch.Tensor]] = {}
        self._evaluated: tuple[dict[str, float], dict[str, torch.Tensor]] | None = None
        self._stopping = False

    # ------------------------------------------------------------------ fit

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Hand the module, its first optimizer and the GradScaler to the health monitor."""
        if self.run is None:
            return
        self._optimizer = trainer.optimizers[0] if trainer.optimizers else None
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self._scaler = scaler if isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled() else None
        self._loss, self._backwards, self._evaluated, self._stopping = None, 0, None, False
        self.run.watch(pl_module, self._optimizer, scaler=self._scaler)
        if self.keep_best:  # every rank loads kept weights; only rank 0 reports, so only it saves
            self.run.keep_best(pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Stopping on a verdict, rank 0 waits for the ranks it launched to stop as well (they
        reached the same verdict), so that none outlives the trial."""
        if not (self._stopping and trainer.is_global_zero):
            return
        for proc in getattr(trainer.strategy.launcher, "procs", None) or []:
            if isinstance(proc, subprocess.Popen):
                try:
                    proc.wait(timeout=CHILDREN_WAIT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()

    # ------------------------------------------------------------------ training steps

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        """Keep the loss of each backward (on the device; unscaled again under AMP)."""
        if self.run is None or not self.run.monitored:
            return
        loss = loss.detach().float()
        scale = self._scale()
        if scale is not None:  # the precision plugin multiplied the loss by it
            loss = loss / scale.to(loss.device)
        self._loss = loss if self._loss is None else self._loss + loss
        self._backwards += 1

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        """One step for the monitor: the step's loss and its gradients' norm, read where the
        optimizer will see them (unscaled, before Lightning clips them)."""
        if self.run is None or optimizer is not self._optimizer or self._loss is None:
            return
        # automatic optimization divided each batch's loss by accumulate_grad_batches
        per_batch = trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1
        loss = self._loss * (per_batch / self._backwards)
        self._loss, self._backwards = None, 0
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else None
        scale = self._scale()
        if norm is not None and scale is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
            norm = norm / scale.to(norm.device)  # an optimizer that unscales in its step(): still scaled here
        checked, verdict = self.run.check_step(loss, norm)
        if checked:
            verdict = self._agree(verdict)
        if verdict is not None:
            self._stop(trainer, verdict)

    def _scale(self) -> torch.Tensor | None:
        """The GradScaler's current scale, on the device (no host read)."""
        scale = getattr(self._scaler, "_scale", None)
        return scale if isinstance(scale, torch.Tensor) else None

    # ------------------------------------------------------------------ evaluations

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._outputs = {}

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Collect the ``logits`` / ``predictions`` / ``targets`` tensors ``validation_step`` returned."""
        if (self.run is None or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING
                or not isinstance(outputs, Mapping)):
            return
        for key in OUTPUT_KEYS:
            value = outputs.get(key)
            if isinstance(value, torch.Tensor):
                self._outputs.setdefault(key, []).append(value.detach())

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Keep this validation's metrics and outputs (the last validation of an epoch is reported)."""
        if self.run is None or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        outputs = {k: torch.cat(v) for k, v in self._outputs.items()}
        self._outputs = {}
        self._evaluated = metrics, outputs

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Judge and report the epoch's validation: every rank judges, rank 0 reports."""
        if self.run is None or self._evaluated is None:
            return
        metrics, outputs = self._evaluated
        self._evaluated = None
        if self.run.metric not in metrics:
            raise KeyError(f"SweeperCallback: the study's metric {self.run.metric!r} was not logged; the trainer has "
                           f"{', '.join(metrics) or 'no metrics'} (log it in validation_step: "
                           f"self.log({self.run.metric!r}, value))")
        epoch = trainer.current_epoch
        verdict = self._agree(self.run.check_eval(epoch, metrics, outputs)) if self.run.monitored else None
        if verdict is not None:
            self._stop(trainer, verdict)
        if trainer.is_global_zero:
            self.run.record(epoch, metrics, outputs)  # may raise optuna.TrialPruned (function mode)

    # ------------------------------------------------------------------ verdicts

    def _agree(self, verdict: Verdict | None) -> Verdict | None:
        """Under DDP, every rank's verdict (or None) at the same check point: the lowest rank's
        verdict stops them all. One exchange per check, none per step."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return verdict
        world = torch.distributed.get_world_size()
        if world == 1:
            return verdict
        found: list[Verdict | None] = [None] * world
        torch.distributed.all_gather_object(found, verdict)
        return next((v for v in found if v is not None), None)

    def _stop(self, trainer: pl.Trainer, verdict: Verdict) -> None:
        self._stopping = True
        assert self.run is not None
        self.run.stop(verdict, write=trainer.is_global_zero)


__all__ = ["SweeperCallback"]
