"""Detectors: one small class per pathology, each returning a ``Verdict`` or ``None``.

Step detectors read a window of training steps every ``check_every`` steps: losses,
gradient norms, which parameters got gradients, and what the window did to the
weights. Eval detectors read one evaluation: metrics, the task's outputs and the
structural probes. Options are dataclass fields, so the study YAML's ``health:``
section sets them by name.

The rules are scale-free: they compare a run with its own earlier state (its early
gradient level, its starting loss, its weights), never with absolute numbers that a
healthy run with another loss scale, optimizer or precision crosses. And a run that
shows evidence of learning (the loss reaching new lows, outputs ranking the labels
better than before) is not called collapsed or stuck.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from statistics import median
from typing import Any, ClassVar, get_type_hints

import torch

from .probes import Share
from .verdict import Reason, Verdict


@dataclass
class StepWindow:
    """What the monitor read from the device at one check."""

    first_step: int
    last_step: int
    losses: list[float]
    grad_norms: list[float | None]  # per step; None where no norm was observed (a skipped step, a micro-batch)
    previous_norms: Sequence[float]  # the finite norms of earlier windows (the run's own level)
    no_grad: Mapping[str, int]  # module -> watched parameters whose .grad was None (at the window's first step)
    zero_grad: Mapping[str, int]  # module -> watched parameters whose gradient was all zeros
    n_params: int
    checks: int  # how many checks so far, this one included
    weight_norm: float = math.nan  # norm of the watched weights (sampled) now
    initial_weight_norm: float = math.nan  # ... when the monitor started watching
    update_ratio: float = math.nan  # |change of the weights over the window| / |weights before it| (sampled)
    stalled: Mapping[str, int] = field(default_factory=dict)  # module -> tensors with a gradient that did not change
    moved: int = 0  # watched tensors whose weights changed over the window
    applied_steps: int | None = None  # optimizer steps in the window (None: no optimizer handed)
    lrs: Sequence[float] | None = None  # the optimizer's learning rates, one per parameter group
    loss_scale: float | None = None  # the GradScaler's scale (None: no scaler handed)
    earlier_losses: Sequence[float] = ()  # the median training loss of each earlier window
    start_loss: float = math.nan  # the training loss at the start of the run (median of its first window)
    first_loss: float = math.nan  # the loss of the run's first step (the model as initialised)
    start_norm: float = math.nan  # the gradient norm at the start (smallest of the first 3 observed)
    modules: Sequence[str] = ()  # the modules of the watched tensors
    unheld: Mapping[str, int] = field(default_factory=dict)  # module -> tensors with gradients the optimizer lacks
    unheld_why: str = ""  # the evidence that leaving them out is a mistake
    skipped_nonfinite: bool = False  # no optimizer step in the window and the gradients are non-finite

    @property
    def loss_median(self) -> float:
        finite = [x for x in self.losses if math.isfinite(x)]
        return median(finite) if finite else math.nan

    def best_before(self) -> float:
        """The lowest training loss the run had reached before this window."""
        known = [x for x in (*self.earlier_losses, self.start_loss) if math.isfinite(x)]
        return min(known) if known else math.nan

    def improving(self, margin: float = 0.01) -> bool:
        """The loss reached a new low (by ``margin``) in this window: evidence of learning."""
        now, best = self.loss_median, self.best_before()
        if not (math.isfinite(now) and math.isfinite(best)):
            return False
        return now < best - margin * abs(best)


@dataclass
class EvalSignals:
    """One evaluation, plus what the detectors need to judge it."""

    epoch: int
    step: int
    metrics: Mapping[str, float]
    outputs: Mapping[str, torch.Tensor]
    warmup_epochs: float = 0.0
    metric: str | None = None
    chance_metric: float | None = None
    best_loss: float | None = None  # the lowest validation loss of the earlier evaluations
    evidence: LabelEvidence | None = None  # what a classifier's outputs say about the labels
    best_auc: float | None = None  # the highest AUC of the earlier evaluations
    sequence_shares: Sequence[Share] = ()  # the structural probes, in the order the layers ran

    def loss_falling(self, progress: float) -> bool:
        """The validation loss reached a new low, below the earlier ones by ``progress`` (relative)."""
        loss = self.metrics.get("loss")
        best = self.best_loss
        if loss is None or best is None or not (math.isfinite(loss) and math.isfinite(best)):
            return False
        return loss < best - progress * abs(best)

    def learning(self, progress: float) -> bool:
        """Evidence that the model is still learning: the validation loss at a new low by
        ``progress`` (relative), or the outputs ranking the labels better than chance and
        better than ever before (macro AUC up by ``progress``)."""
        ev = self.evidence
        return self.loss_falling(progress) or (
            ev is not None and ev.informative and self.best_auc is not None and ev.auc > self.best_auc + progress)

    def during_warmup(self) -> bool:
        return self.epoch < math.ceil(self.warmup_epochs)


@dataclass
class Detector:
    """Base: override ``on_window`` and/or ``on_eval``."""

    reason: ClassVar[Reason]
    enabled: bool = True

    def on_window(self, w: StepWindow) -> Verdict | None:
        return None

    def on_eval(self, e: EvalSignals) -> Verdict | None:
        return None

    def on_data(self, outputs: Mapping[str, torch.Tensor]) -> Verdict | None:
        """Judge the training data before the first step (``HealthMonitor.check_data``)."""
        return None

    @classmethod
    def options(cls) -> dict[str, type]:
        """Option name -> type (float, int or bool; an optional number reads as float), for the YAML."""
        hints = get_type_hints(cls)
        out: dict[str, type] = {}
        for f in fields(cls):
            if not f.init or f.name == "enabled":
                continue
            hint = hints[f.name]
            out[f.name] = int if hint is int else bool if hint is bool else float
        return out

    @classmethod
    def optional(cls) -> set[str]:
        """Options that accept null (off)."""
        hints = get_type_hints(cls)
        return {f.name for f in fields(cls) if f.init and type(None) in getattr(hints[f.name], "__args__", ())}


# ====================================================================== step detectors


@dataclass
class NonfiniteLoss(Detector):
    """The training loss became NaN/Inf; or the gradients stayed non-finite while the loss
    did not, for ``max_skipped`` steps in a row (a GradScaler skips such steps while it
    calibrates; one that skips forever never trains); or the GradScaler's scale fell below
    ``min_loss_scale`` (it halves at every skip: from its default 2^16, 2^-24 takes 40
    skips in a row). Also a non-finite validation metric."""

    reason: ClassVar[Reason] = Reason.NONFINITE_LOSS
    max_skipped: int = 40
    min_loss_scale: float = 2.0 ** -24
    _skipped: int = field(default=0, init=False, repr=False)

    def on_window(self, w: StepWindow) -> Verdict | None:
        for i, loss in enumerate(w.losses):
            if not math.isfinite(loss):
                step = w.first_step + i
                return Verdict(self.reason, f"loss {loss} at step {step}", step)
        if w.loss_scale is not None and w.loss_scale < self.min_loss_scale:
            return Verdict(self.reason, f"the GradScaler's scale fell to {w.loss_scale:.3g} by step {w.last_step} "
                                        f"(limit {self.min_loss_scale:.3g}): the gradients overflow at any scale, "
                                        "so every step is skipped", w.last_step)
        if w.skipped_nonfinite:
            self._skipped += len(w.losses)
        else:
            for i, norm in enumerate(w.grad_norms):
                if norm is None:
                    continue
                if math.isfinite(norm):
                    self._skipped = 0
                    continue
                self._skipped += 1
                if self._skipped >= self.max_skipped:
                    step = w.first_step + i
                    return Verdict(self.reason, f"gradient norm {norm} at step {step}, non-finite for "
                                                f"{self._skipped} steps in a row while the loss stayed finite "
                                                f"(limit {self.max_skipped}): every step is skipped or corrupt",
                                   step)
        if self._skipped >= self.max_skipped:
            return Verdict(self.reason, f"no optimizer step for {self._skipped} steps up to step {w.last_step}: "
                                        "the gradients are non-finite while the loss is finite (a GradScaler "
                                        "skips every step)", w.last_step)
        return None

    def on_eval(self, e: EvalSignals) -> Verdict | None:
        bad = {k: v for k, v in e.metrics.items() if not math.isfinite(v)}
        if bad:
            shown = ", ".join(f"{k}={v}" for k, v in bad.items())
            return Verdict(self.reason, f"validation {shown} after epoch {e.epoch}", e.step, e.epoch)
        return None


@dataclass
class GradExplosion(Detector):
    """The updates are unstable, judged against the run's own start, never against absolute
    numbers a healthy summed loss or loss scale crosses: the training loss (window median)
    at ``max_loss_rise`` x its first window's for ``patience`` checks; the parameter norm
    grown ``max_weight_growth`` x (an order of magnitude) while the loss is worse than where
    it started (``max_loss_rise`` x the first step's loss, or above the first window's), or
    while the gradient norm spiked ``factor`` x its start with the loss no better than at
    its start (growth from a tiny initialisation with the loss holding or falling is
    learning); a window that changed the weights by more than ``max_update`` x their norm,
    after which gradients that had flowed are all zero (the steps killed the units); or the
    gradient-norm median ``factor`` x its running median for ``patience`` checks with no new
    low of the loss. ``ceiling``: an absolute gradient-norm limit, off unless set."""

    reason: ClassVar[Reason] = Reason.GRAD_EXPLOSION
    factor: float = 50.0
    patience: int = 2
    max_update: float = 1.0
    max_weight_growth: float = 10.0
    max_loss_rise: float = 2.0
    ceiling: float | None = None
    _strikes: int = field(default=0, init=False, repr=False)
    _rising: int = field(default=0, init=False, repr=False)
    _alive: set[str] = field(default_factory=set, init=False, repr=False)
    _big_update: str = field(default="", init=False, repr=False)

    def on_window(self, w: StepWindow) -> Verdict | None:
        finite = [n for n in w.grad_norms if n is not None and math.isfinite(n)]
        peak = max(finite) if finite else math.nan
        if self.ceiling is not None and finite and peak > self.ceiling:
            step = w.first_step + w.grad_norms.index(peak)
            return Verdict(self.reason, f"gradient norm {peak:.3g} at step {step} is above the ceiling "
                                        f"{self.ceiling:.3g}", step)
        verdict = self._judge(w, finite, peak)
        self._alive |= _alive_modules(w)
        if math.isfinite(w.update_ratio) and w.update_ratio > self.max_update:
            self._big_update = (f"steps {w.first_step}-{w.last_step} changed the weights by {w.update_ratio:.3g}x "
                                "their norm")
        return verdict

    def _judge(self, w: StepWindow, finite: list[float], peak: float) -> Verdict | None:
        loss_now, start = w.loss_median, w.start_loss
        spike = peak / w.start_norm if finite and w.start_norm > 0 else math.nan
        peak_text = f"; gradient norm peaked at {peak:.3g}" + (f", {spike:.3g}x its start" if spike == spike else "")
        self._rising = self._rising + 1 if start > 0 and loss_now > self.max_loss_rise * start else 0
        if self._rising >= self.patience:
            return Verdict(self.reason, f"training loss {loss_now:.3g} over steps {w.first_step}-{w.last_step} is "
                                        f"{loss_now / start:.3g}x its start {start:.3g} (limit {self.max_loss_rise:g}x "
                                        f"for {self.patience} checks{peak_text}): the run diverges", w.last_step)
        growth = w.weight_norm / w.initial_weight_norm if w.initial_weight_norm > 0 else math.nan
        # worse than where it started: above its first step's loss (the model as initialised), or
        # above its first window's (its first window may already hold the blow-up)
        worse = loss_now > self.max_loss_rise * w.first_loss > 0 or loss_now > 1.1 * start > 0
        spiked = spike > self.factor and not loss_now < 0.9 * start
        if growth > self.max_weight_growth and (worse or spiked):
            return Verdict(self.reason, f"parameter norm grew {growth:.0f}x, from {w.initial_weight_norm:.3g} to "
                                        f"{w.weight_norm:.3g}, by step {w.last_step} (limit "
                                        f"{self.max_weight_growth:g}x) while the loss got no better: {loss_now:.3g} "
                                        f"over steps {w.first_step}-{w.last_step}, {w.first_loss:.3g} at the first "
                                        f"step{peak_text}", w.last_step)
        killed = sorted(m for m in w.zero_grad if m in self._alive)
        if killed and self._big_update:
            return Verdict(self.reason, f"{self._big_update}, and the gradients of {', '.join(killed[:5])} have been "
                                        f"all zero since (by step {w.last_step}): the updates killed their units",
                           w.last_step)
        if w.improving():
            self._strikes = 0
            return None
        level = median(w.previous_norms) if len(w.previous_norms) >= 10 else math.nan
        if finite and level > 0 and median(finite) > self.factor * level:
            self._strikes += 1
            if self._strikes >= self.patience:
                return Verdict(self.reason, f"gradient norm median {median(finite):.3g} over steps {w.first_step}-"
                                            f"{w.last_step} is {median(finite) / level:.0f}x its running median "
                                            f"{level:.3g} with no new low of the loss (limit {self.factor:g}x for "
                                            f"{self.patience} checks)", w.last_step)
        else:
            self._strikes = 0
        return None


def _alive_modules(w: StepWindow) -> set[str]:
    """Modules whose watched tensors all had a non-zero gradient at this check."""
    dead = set(w.zero_grad) | set(w.no_grad)
    return {m for m in w.modules if m not in dead}


@dataclass
class VanishingGradients(Detector):
    """The updates are too small to change the model: over a window the weights moved by
    less than ``min_update`` x their norm (but not by nothing: that is ``stalled_updates``),
    with no new low of the loss, for ``patience`` checks. ``threshold``: an absolute
    gradient-norm floor, off unless set (a loss scaled down is not a vanishing gradient
    for a scale-free optimizer such as Adam)."""

    reason: ClassVar[Reason] = Reason.VANISHING_GRADIENTS
    min_update: float = 1.0e-6
    patience: int = 3
    threshold: float | None = None
    _strikes: int = field(default=0, init=False, repr=False)

    def on_window(self, w: StepWindow) -> Verdict | None:
        if all(loss == 0.0 for loss in w.losses):
            return None  # a zero loss has zero gradients: a problem of the loss (or data), not of their flow
        finite = [n for n in w.grad_norms if n is not None and math.isfinite(n)]
        what = None
        if self.threshold is not None and finite and max(finite) < self.threshold:
            what = f"gradient norm at most {max(finite):.3g}, below {self.threshold:g},"
        elif 0 < w.update_ratio < self.min_update and not w.improving() and w.applied_steps != 0 \
                and not (w.loss_median < 1e-3 * abs(w.start_loss)):
            top = f"; gradient norm at most {max(finite):.3g}" if finite else ""
            what = f"the weights moved by {w.update_ratio:.2g}x their norm (limit {self.min_update:g}{top}),"
        if what is None:
            self._strikes = 0
            return None
        self._strikes += 1
        if self._strikes < self.patience:
            return None
        return Verdict(self.reason, f"{what} over steps {w.first_step}-{w.last_step} with no new low of the loss, "
                                    f"for {self.patience} checks", w.last_step)


@dataclass
class DeadGradients(Detector):
    """Trainable parameters (those the optimizer holds, when it is handed) that got no (or
    an all-zero) gradient at ``patience`` checks in a row: the module ran under
    ``torch.no_grad()``, was detached, or is unused. All-zero gradients count only while
    the loss is not zero (a zero loss is another problem)."""

    reason: ClassVar[Reason] = Reason.DEAD_GRADIENTS
    patience: int = 2
    _seen: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    def on_window(self, w: StepWindow) -> Verdict | None:
        counts = dict(w.no_grad)
        if any(loss != 0.0 for loss in w.losses):
            for m, n in w.zero_grad.items():
                counts[m] = counts.get(m, 0) + n
        self._seen = {m: self._seen.get(m, 0) + 1 for m in counts}
        dead = {m: n for m, n in counts.items() if self._seen[m] >= self.patience}
        if not dead:
            return None
        total = sum(dead.values())
        return Verdict(self.reason, f"{total} of {w.n_params} trainable parameter tensors got no gradient "
                                    f"at {self.patience} checks up to step {w.last_step}: {_modules(dead)}",
                       w.last_step)


@dataclass
class StalledUpdates(Detector):
    """Gradients are there but the parameters do not change: the optimizer does not hold
    them (a model or module rebuilt after the optimizer was created, parameters unfrozen
    after it) or its lr is 0. Judged from what each window did to the weights: every
    watched tensor with a gradient unchanged for ``patience`` checks in a row while the
    optimizer stepped; or, with the optimizer handed, trainable parameters it does not hold
    alongside evidence that this is a mistake."""

    reason: ClassVar[Reason] = Reason.STALLED_UPDATES
    patience: int = 2
    _strikes: int = field(default=0, init=False, repr=False)

    def on_window(self, w: StepWindow) -> Verdict | None:
        if w.unheld and w.unheld_why:
            n = sum(w.unheld.values())
            return Verdict(self.reason, f"{n} trainable parameter tensors get gradients but the optimizer does not "
                                        f"hold them ({w.unheld_why}): {_modules(w.unheld)}", w.last_step)
        finite = all(math.isfinite(x) for x in w.losses)
        if (w.moved or not w.stalled or w.applied_steps == 0 or not finite
                or all(loss == 0.0 for loss in w.losses)):
            self._strikes = 0
            return None
        self._strikes += 1
        if self._strikes < self.patience:
            return None
        if w.lrs is not None and all(lr == 0 for lr in w.lrs):
            cause = "the optimizer's learning rate is 0 in every parameter group (a schedule returning 0?)"
        elif w.lrs is not None:
            shown = ", ".join(f"{lr:.3g}" for lr in w.lrs[:4])
            cause = f"learning rate {shown}: too small to change a weight, or the optimizer does not step them"
        else:
            cause = ("is an optimizer stepping these parameters? (one built for another copy of the model, or a "
                     "learning rate of 0)")
        n = sum(w.stalled.values())
        return Verdict(self.reason, f"{n} parameter tensors with gradients did not change at all over steps "
                                    f"{w.first_step}-{w.last_step} ({self.patience} checks): {cause}: "
                                    f"{_modules(w.stalled)}", w.last_step)


def _modules(counts: Mapping[str, int], shown: int = 5) -> str:
    names = ", ".join(f"{m} ({n})" for m, n in sorted(counts.items(), key=lambda kv: -kv[1])[:shown])
    return names + (f" and {len(counts) - shown} more modules" if len(counts) > shown else "")


# ====================================================================== before training and per evaluation


@dataclass
class CTCInfeasible(Detector):
    """More than ``max_fraction`` of sequences have fewer output frames than their
    labels need (length + repeats); ``zero_infinity`` CTC hides them as zero loss."""

    reason: ClassVar[Reason] = Reason.CTC_INFEASIBLE
    max_fraction: float = 0.02

    def on_data(self, outputs: Mapping[str, torch.Tensor]) -> Verdict | None:
        return self._judge(outputs, "training", step=0, epoch=None)

    def on_eval(self, e: EvalSignals) -> Verdict | None:
        return self._judge(e.outputs, "validation", step=e.step, epoch=e.epoch)

    def _judge(self, outputs: Mapping[str, torch.Tensor], split: str, *, step: int,
               epoch: int | None) -> Verdict | None:
        frames, needed = outputs.get("output_lengths"), outputs.get("required_lengths")
        if frames is None or needed is None or len(frames) == 0:
            return None
        short = frames < needed
        fraction = float(short.float().mean())
        if fraction <= self.max_fraction:
            return None
        n = int(short.sum())
        return Verdict(self.reason, f"{n} of {len(frames)} {split} sequences ({fraction:.0%}) have fewer output "
                                    f"frames than their labels need (median {float(frames[short].float().median()):g} "
                                    f"frames for {float(needed[short].float().median()):g} needed; limit "
                                    f"{self.max_fraction:.0%})", step, epoch)


@dataclass
class TemporalCollapse(Detector):
    """A layer that consumes sequences gets nearly the same vector at every time step: the
    share of its input's variance that lies along time (within sequences) is below
    ``min_ratio`` while a layer upstream of it had at least ``upstream`` x that share (or
    it is below 1e-6, an exact copy). The layers are found and measured automatically
    during evaluation (``SequenceProbes``); ``outputs["sequence"]`` (B x T x D with
    ``output_lengths``) is judged the same way."""

    reason: ClassVar[Reason] = Reason.TEMPORAL_COLLAPSE
    min_ratio: float = 0.02
    upstream: float = 10.0
    patience: int = 1
    _strikes: int = field(default=0, init=False, repr=False)

    def on_eval(self, e: EvalSignals) -> Verdict | None:
        found = self._collapsed(e)
        if found is None:
            self._strikes = 0
            return None
        self._strikes += 1
        if self._strikes < self.patience:
            return None
        return Verdict(self.reason, f"{found} after epoch {e.epoch}", e.step, e.epoch)

    def _collapsed(self, e: EvalSignals) -> str | None:
        best_upstream: Share | None = None
        for s in e.sequence_shares:
            if s.share < self.min_ratio and (
                    s.share < 1e-6 or (best_upstream is not None and best_upstream.share >= self.upstream * s.share)):
                where = (f", against {best_upstream.share:.0%} at {best_upstream.module} upstream"
                         if best_upstream is not None else "")
                return (f"only {s.share:.2%} of the input variance of {s.module} lies along time (limit "
                        f"{self.min_ratio:.0%}{where}): every time step gets nearly the same vector; look between "
                        f"them for a pooling or mean over time copied back (expand/repeat)")
            if best_upstream is None or s.share > best_upstream.share:
                best_upstream = s
        seq, lengths = e.outputs.get("sequence"), e.outputs.get("output_lengths")
        if seq is not None and lengths is not None:
            ratio = temporal_variance_ratio(seq, lengths)
            if ratio is not None and ratio < self.min_ratio:
                return (f"only {ratio:.2%} of the output variance is along time (limit {self.min_ratio:.0%}): "
                        "every time step carries nearly the same vector")
        return None


def temporal_variance_ratio(seq: torch.Tensor, lengths: torch.Tensor) -> float | None:
    """Within-sequence (over time) variance / total variance of (B, T, D) outputs."""
    from .probes import _variance_sums

    valid = torch.arange(seq.shape[1], device=seq.device)[None, :] < lengths.to(seq.device)[:, None]
    if int(((valid.sum(1)) >= 2).sum()) < 2:
        return None
    within, total = _variance_sums(seq, valid)
    return float(within / total) if float(total) > 0 else 0.0


@dataclass
class BlankOutput(Detector):
    """CTC decodes to empty hypotheses for more than ``max_empty`` of sequences at
    epoch >= ``grace_epochs`` after warmup (a healthy run is all blank for an epoch or
    two), while the validation loss no longer falls by ``progress`` an evaluation."""

    reason: ClassVar[Reason] = Reason.BLANK_OUTPUT
    max_empty: float = 0.95
    grace_epochs: int = 3
    progress: float = 0.02

    def on_eval(self, e: EvalSignals) -> Verdict | None:
        empty = e.metrics.get("empty_fraction")
        if empty is None or e.epoch + 1 < math.ceil(e.warmup_epochs) + self.grace_epochs or e.loss_falling(
                self.progress):
            return None
        if empty > self.max_empty:
            return Verdict(self.reason, f"{empty:.0%} of validation hypotheses are empty after epoch {e.epoch} "
                                        f"({self.grace_epochs} epochs past warmup, validation loss no longer "
                                        f"falling; limit {self.max_empty:.0%})", e.step, e.epoch)
        return None


@dataclass
class ClassCollapse(Detector):
    """Predictions concentrate on few classes compared with the labels: prediction
    entropy below ``min_entropy_ratio`` x label entropy, for ``patience`` evaluations from
    epoch ``grace_epochs`` on, never during warmup, and either at least ``min_missed`` of
    the samples belong to classes the predictions leave out (the total variation between
    predicted and label class frequencies: accuracy can be at most 1 minus it) or, with
    ``logits``, outputs that rank the labels no better than chance. On skewed labels a
    sound model's argmax sits on the majority class (6% positives, an uncertain posterior
    below 0.5): that is a decision threshold, not a collapse, while its outputs still
    rank the minority class. Nor is it a collapse when, with ``logits``, the outputs
    order the labels with macro AUC at least ``max_auc``: they depend on the input, and
    only a bias holds the argmax on one class (a transformer's plateau, where logits differ
    by 1e-4 yet rank every pair right). An evaluation does not count when the
    model shows it is still learning: validation loss at a new low by ``progress``
    (relative), outputs ranking the labels better than before (with ``logits``: macro AUC
    up by ``progress``), or prediction entropy up by ``recovering`` x (a slow learner
    spreading its predictions).
    Reads ``outputs["predictions"]`` (or the argmax of ``outputs["logits"]``) and ``outputs["targets"]``."""

    reason: ClassVar[Reason] = Reason.CLASS_COLLAPSE
    min_entropy_ratio: float = 0.5
    min_missed: float = 0.5
    patience: int = 2
    grace_epochs: int = 0
    recovering: float = 1.1
    progress: float = 0.02
    max_auc: float = 0.9
    _strikes: int = field(default=0, init=False, repr=False)
    _last_entropy: float | None = field(default=None, init=False, repr=False)

    def on_eval(self, e: EvalSignals) -> Verdict | None:
        # never during warmup: at a fraction of the lr, predictions still sit on a few classes
        if e.epoch < self.grace_epochs or e.during_warmup():
            return None
        pred, target = e.outputs.get("predictions"), e.outputs.get("targets")
        logits = e.outputs.get("logits")
        if pred is None and logits is not None:
            pred = logits.argmax(-1) if logits.dim() > 1 and logits.shape[-1] > 1 else (logits.flatten() > 0).long()
        if pred is None or target is None or len(target) == 0 or len(pred) < 0.1 * len(target):
            return None  # too few predictions to judge (an all-blank CTC model is BlankOutput's)
        n_classes = int(max(int(pred.max()), int(target.max())) + 1)
        p = torch.bincount(pred.long().flatten().cpu(), minlength=n_classes).float()
        t = torch.bincount(target.long().flatten().cpu(), minlength=n_classes).float()
        h_p, h_t = _entropy(p), _entropy(t)
        last = self._last_entropy
        # (near-zero entropy is a collapse whatever its trend)
        spreading = last is not None and h_p > self.recovering * last and h_p > 0.25 * h_t
        self._last_entropy = h_p
        missed = 0.5 * float((p / p.sum() - t / t.sum()).abs().sum())
        ranks = e.evidence is not None and e.evidence.informative
        # outputs that order the labels this well depend on the input: what concentrates the
        # argmax is a bias (a plateau's near-equal logits, a decision threshold), not a collapse
        separates = e.evidence is not None and e.evidence.auc >= self.max_auc
        if h_t <= 0 or h_p >= self.min_entropy_ratio * h_t or spreading or separates or e.learning(self.progress) or (
                missed < self.min_missed and (ranks or e.evidence is None)):
            self._strikes = 0
            return None
        self._strikes += 1
        if self._strikes < self.patience:
            return None
        share_p, share_t = float(p.max() / p.sum()), float(t.max() / t.sum())
        top = int(p.argmax())
        auc = f"; macro AUC {e.evidence.auc:.2f}, no better than before" if e.evidence else ""
        if missed >= self.min_missed:
            left = f"{missed:.0%} of samples are of classes it leaves out"
        else:
            left = f"the outputs rank the labels no better than chance (AUC sd {e.evidence.auc_sd:.3f})"
        return Verdict(self.reason, f"predictions use {int((p > 0).sum())} of {int((t > 0).sum())} label classes; "
                                    f"class {top} takes {share_p:.0%} (largest label share {share_t:.0%}); "
                                    f"prediction entropy {h_p:.2f} vs label entropy {h_t:.2f} nats (limit "
                                    f"{self.min_entropy_ratio:g}x); {left} after epoch {e.epoch}, validation loss "
                                    f"not falling{auc}", e.step, e.epoch)


def _entropy(counts: torch.Tensor) -> float:
    p = counts / counts.sum()
    p = p[p > 0]
    return max(0.0, float(-(p * p.log()).sum()))  # max: no "-0.00" in the evidence


@dataclass
class ChancePlateau(Detector):
    """The model is at chance: with ``logits``, for ``patience`` evaluations, its outputs rank
    the labels no better than chance (macro one-vs-rest AUC not 3 sds above 0.5) and there
    is evidence against information (log-loss above the label prior's by a standard error,
    or a ranking 2 sds against the labels), with no new low of the validation loss by
    ``progress``; or the
    task's metric at its chance value at epoch >= warmup + ``grace_epochs``, the
    validation loss no longer falling. (Outputs that do not vary at all are class_collapse's.)"""

    reason: ClassVar[Reason] = Reason.CHANCE_PLATEAU
    tolerance: float = 0.02
    patience: int = 2
    grace_epochs: int = 3
    progress: float = 0.02
    _strikes: int = field(default=0, init=False, repr=False)

    def on_eval(self, e: EvalSignals) -> Verdict | None:
        if e.during_warmup():
            return None
        ev = e.evidence
        if ev is not None:
            if ev.informative or not ev.uninformed or e.learning(self.progress):
                self._strikes = 0
            else:
                self._strikes += 1
                if self._strikes >= self.patience:
                    return Verdict(self.reason, f"the outputs carry no information about the labels after epoch "
                                                f"{e.epoch}, for {self.patience} evaluations: macro AUC {ev.auc:.3f} "
                                                f"(chance 0.5, sd {ev.auc_sd:.3f}), log-loss {ev.excess:.3g} nats a "
                                                f"sample above the label prior's (se {ev.excess_se:.2g}), validation "
                                                "loss not falling", e.step, e.epoch)
        if e.metric is not None and e.chance_metric is not None and e.metric in e.metrics \
                and e.epoch + 1 >= math.ceil(e.warmup_epochs) + self.grace_epochs and not e.loss_falling(self.progress):
            value = e.metrics[e.metric]
            scale = max(abs(e.chance_metric), 1e-12)
            if abs(value - e.chance_metric) <= self.tolerance * scale:
                return Verdict(self.reason, f"{e.metric} {value:.3f} after epoch {e.epoch} is at its chance value "
                                            f"{e.chance_metric:g} (tolerance {self.tolerance:.0%})", e.step, e.epoch)
        return None



@dataclass(frozen=True)
class LabelEvidence:
    """What a classifier's validation outputs say about the labels, each with its standard
    error were the outputs independent of the labels: ``auc``, the macro one-vs-rest AUC of
    the class scores (chance 0.5), and ``excess``, the mean log-loss per sample above that
    of the label prior (0: no better than always predicting the label frequencies)."""

    auc: float
    auc_sd: float
    excess: float
    excess_se: float

    @property
    def informative(self) -> bool:
        """The outputs rank the labels better than chance, by 3 sds."""
        return self.auc > 0.5 + 3 * self.auc_sd

    @property
    def uninformed(self) -> bool:
        """Evidence against information: the outputs' log-loss is above the label prior's by a
        standard error (outputs that vary without information cost log-loss; a weak learner's
        do not), or they rank the labels backwards (AUC 2 sds below 0.5)."""
        return self.excess > self.excess_se + 1e-6 or self.auc < 0.5 - 2 * self.auc_sd


def label_evidence(logits: torch.Tensor, targets: torch.Tensor, *, max_samples: int = 4096,
                   max_classes: int = 100) -> LabelEvidence | None:
    """``LabelEvidence`` of ``logits`` (N x C class scores, or N single logits of the positive
    class) against ``targets`` (N), or None when they cannot say (one class, a shape mismatch).
    At most ``max_samples`` samples; the AUC over the ``max_classes`` most frequent classes."""
    import numpy as np
    from scipy.stats import rankdata

    y = targets.detach().long().flatten().cpu()
    s = logits.detach().float().cpu()
    if s.dim() == 1 or (s.dim() == 2 and s.shape[1] == 1):
        s = torch.stack([torch.zeros(len(s)), s.flatten()], 1)  # a positive-class logit: softmax of (0, x)
    if s.dim() != 2 or len(s) != len(y) or len(y) < 4 or int(y.max()) >= s.shape[1] or int(y.min()) < 0:
        return None
    s, y = torch.log_softmax(s[:max_samples], 1), y[:max_samples]
    counts = torch.bincount(y, minlength=s.shape[1])
    classes = [c for c in counts.argsort(descending=True).tolist()[:max_classes] if 0 < counts[c] < len(y)]
    if not classes:
        return None
    scores, labels = s[:, classes].numpy().astype(np.float64), y.numpy()
    ranks = rankdata(scores, axis=0)
    aucs, variances = [], []
    for j, c in enumerate(classes):
        pos = labels == c
        n1, n0 = int(pos.sum()), int((~pos).sum())
        aucs.append((ranks[pos, j].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
        variances.append((n1 + n0 + 1) / (12 * n1 * n0))
    prior = (counts.double() / len(y)).log()
    excess = (prior[y] - s.double().gather(1, y[:, None]).squeeze(1)).numpy()  # model log-loss - prior's
    return LabelEvidence(float(np.mean(aucs)), float(math.sqrt(sum(variances)) / len(classes)),
                         float(excess.mean()), float(excess.std(ddof=1) / math.sqrt(len(excess))))


DETECTORS: dict[str, type[Detector]] = {
    d.reason.value: d
    for d in (NonfiniteLoss, GradExplosion, VanishingGradients, DeadGradients, StalledUpdates, CTCInfeasible,
              TemporalCollapse, BlankOutput, ClassCollapse, ChancePlateau)
}


DetectorOptions = Mapping[str, Mapping[str, Any] | bool]


def build_detectors(config: DetectorOptions | None = None) -> list[Detector]:
    """Fresh detectors (they keep per-run state), with options from ``config``."""
    config = config or {}
    out = []
    for name, cls in DETECTORS.items():
        opts = config.get(name, True)
        if opts is False:
            continue
        det = cls(**({} if opts is True else dict(opts)))
        if det.enabled:
            out.append(det)
    return out
