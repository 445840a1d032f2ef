"""Detectors: one small class per pathology, each returning a ``Verdict`` or ``None``.

Step detectors read a window of training steps (losses, pre-clip gradient
norms, parameters without gradient) every ``check_every`` steps; eval detectors
read one evaluation (metrics and the task's outputs). Options are dataclass
fields, so the study YAML's ``health:`` section sets them by name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from statistics import median
from typing import Any, ClassVar

import torch

from .verdict import Reason, Verdict


@dataclass
class StepWindow:
    """What the monitor read from the device at one check."""

    first_step: int
    last_step: int
    losses: list[float]
    grad_norms: list[float]
    previous_norms: Sequence[float]  # the norms of earlier windows (running level)
    no_grad: Mapping[str, int]  # module -> trainable parameters whose .grad is None this check
    zero_grad: Mapping[str, int]  # module -> trainable parameters whose gradient is all zeros
    n_params: int
    checks: int  # how many checks so far, this one included
    weight_norm: float = math.nan  # total norm of the watched parameters now
    initial_weight_norm: float = math.nan  # ... when the monitor started watching


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
        """Option name -> type, for validating the YAML."""
        return {f.name: type(f.default) for f in fields(cls) if f.init and f.name != "enabled"}


@dataclass
class NonfiniteLoss(Detector):
    """Loss or gradient norm became NaN/Inf (training loss, or validation loss)."""

    reason: ClassVar[Reason] = Reason.NONFINITE_LOSS

    def on_window(self, w: StepWindow) -> Verdict | None:
        for i, (loss, norm) in enumerate(zip(w.losses, w.grad_norms, strict=True)):
            if not math.isfinite(loss) or not math.isfinite(norm):
                step = w.first_step + i
                what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {norm}"
                return Verdict(self.reason, f"{what} at step {step}", step)
        return None

    def on_eval(self, e: EvalSignals) -> Verdict | None:
        bad = {k: v for k, v in e.metrics.items() if not math.isfinite(v)}
        if bad:
            shown = ", ".join(f"{k}={v}" for k, v in bad.items())
            return Verdict(self.reason, f"validation {shown} after epoch {e.epoch}", e.step, e.epoch)
        return None


@dataclass
class GradExplosion(Detector):
    """Exploding gradients or updates: the pre-clip gradient norm above ``ceiling``, or
    above ``factor`` x its running median for ``patience`` checks in a row (clipping
    hides an explosion from the update, not from this); or the parameter norm grown
    ``max_weight_growth`` x since the start (the updates blew the weights up)."""

    reason: ClassVar[Reason] = Reason.GRAD_EXPLOSION
    ceiling: float = 1.0e4
    factor: float = 50.0
    patience: int = 2
    max_weight_growth: float = 20.0
    _strikes: int = field(default=0, init=False, repr=False)

    def on_window(self, w: StepWindow) -> Verdict | None:
        growth = w.weight_norm / w.initial_weight_norm if w.initial_weight_norm > 0 else math.nan
        if math.isfinite(growth) and growth > self.max_weight_growth:
            return Verdict(self.reason, f"parameter norm grew {growth:.0f}x, from {w.initial_weight_norm:.3g} to "
                                        f"{w.weight_norm:.3g}, by step {w.last_step}: the updates exploded "
                                        f"(limit {self.max_weight_growth:g}x; gradient norm peaked at "
                                        f"{max(w.grad_norms):.3g})", w.last_step)
        finite = [n for n in w.grad_norms if math.isfinite(n)]
        if not finite:
            return None
        peak = max(finite)
        if peak > self.ceiling:
            step = w.first_step + w.grad_norms.index(peak)
            return Verdict(self.reason, f"gradient norm {peak:.3g} at step {step} is above the ceiling "
                                        f"{self.ceiling:.3g}", step)
        if len(w.previous_norms) < 10:
            return None
        level = median(w.previous_norms)
        now = median(finite)
        if level > 0 and now > self.factor * level:
            self._strikes += 1
            if self._strikes >= self.patience:
                return Verdict(self.reason, f"gradient norm median {now:.3g} over steps {w.first_step}-"
                                            f"{w.last_step} is {now / level:.0f}x its running median "
                                            f"{level:.3g} (limit {self.factor:g}x for {self.patience} checks)",
                               w.last_step)
        else:
            self._strikes = 0
        return None


@dataclass
class VanishingGradients(Detector):
    """Gradient norm below ``threshold`` for ``patience`` checks in a row."""

    reason: ClassVar[Reason] = Reason.VANISHING_GRADIENTS
    threshold: float = 1.0e-7
    patience: int = 3
    _strikes: int = field(default=0, init=False, repr=False)

    def on_window(self, w: StepWindow) -> Verdict | None:
        finite = [n for n in w.grad_norms if math.isfinite(n)]
        if all(loss == 0.0 for loss in w.losses):
            return None  # a zero loss has zero gradients: a problem of the loss (or data), not of their flow
        if finite and max(finite) < self.threshold:
            self._strikes += 1
            if self._strikes >= self.patience:
                return Verdict(self.reason, f"gradient norm at most {max(finite):.3g} over steps "
                                            f"{w.first_step}-{w.last_step}, below {self.threshold:g} for "
                                            f"{self.patience} checks", w.last_step)
        else:
            self._strikes = 0
        return None


@dataclass
class DeadGradients(Detector):
    """Trainable parameters that got no (or an all-zero) gradient at ``patience`` checks
    in a row: the module ran under ``torch.no_grad()``, was detached, or is unused.
    All-zero gradients count only while the loss is not zero (a zero loss is another problem)."""

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
        names = ", ".join(f"{m} ({n})" for m, n in sorted(dead.items(), key=lambda kv: -kv[1])[:5])
        more = f" and {len(dead) - 5} more modules" if len(dead) > 5 else ""
        return Verdict(self.reason, f"{total} of {w.n_params} trainable parameter tensors got no gradient "
                                    f"at {self.patience} checks up to step {w.last_step}: {names}{more}",
                       w.last_step)


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
    """The sequence a temporal model consumes (``outputs["sequence"]``, B x T x D) is
    nearly identical across time: the share of its variance that lies along time,
    within sequences, is below ``min_ratio`` (global pooling copied over every step gives 0)."""

    reason: ClassVar[Reason] = Reason.TEMPORAL_COLLAPSE
    min_ratio: float = 0.02
    patience: int = 1
    _strikes: int = field(default=0, init=False, repr=False)

    def on_eval(self, e: EvalSignals) -> Verdict | None:
        seq, lengths = e.outputs.get("sequence"), e.outputs.get("output_lengths")
        if seq is None or lengths is None:
            return None
        ratio = temporal_variance_ratio(seq, lengths)
        if ratio is None:
            return None
        if ratio < self.min_ratio:
            self._strikes += 1
            if self._strikes >= self.patience:
                return Verdict(self.reason, f"only {ratio:.2%} of the output variance is along time (limit "
                                            f"{self.min_ratio:.0%}) after epoch {e.epoch}: every time step "
                                            "carries nearly the same vector", e.step, e.epoch)
        else:
            self._strikes = 0
        return None


def temporal_variance_ratio(seq: torch.Tensor, lengths: torch.Tensor) -> float | None:
    """Within-sequence (over time) variance / total variance of (B, T, D) outputs."""
    seq = seq.float()
    _batch, steps, _ = seq.shape
    valid = (torch.arange(steps, device=seq.device)[None, :] < lengths.to(seq.device)[:, None]).float()
    counts = valid.sum(1, keepdim=True)
    keep = counts.squeeze(1) >= 2
    if int(keep.sum()) < 2:
        return None
    seq, valid, counts = seq[keep], valid[keep], counts[keep]
    mean_t = (seq * valid[..., None]).sum(1, keepdim=True) / counts[..., None]
    within = (((seq - mean_t) ** 2) * valid[..., None]).sum() / valid.sum()
    grand = (seq * valid[..., None]).sum((0, 1)) / valid.sum()
    total = (((seq - grand) ** 2) * valid[..., None]).sum() / valid.sum()
    return float(within / total) if float(total) > 0 else 0.0


@dataclass
class BlankOutput(Detector):
    """CTC decodes to empty hypotheses for more than ``max_empty`` of sequences at
    epoch >= ``grace_epochs`` after warmup (a healthy run is all blank for an epoch or two)."""

    reason: ClassVar[Reason] = Reason.BLANK_OUTPUT
    max_empty: float = 0.95
    grace_epochs: int = 3

    def on_eval(self, e: EvalSignals) -> Verdict | None:
        empty = e.metrics.get("empty_fraction")
        if empty is None or e.epoch + 1 < math.ceil(e.warmup_epochs) + self.grace_epochs:
            return None
        if empty > self.max_empty:
            return Verdict(self.reason, f"{empty:.0%} of validation hypotheses are empty after epoch {e.epoch} "
                                        f"({self.grace_epochs} epochs past warmup; limit {self.max_empty:.0%})",
                           e.step, e.epoch)
        return None


@dataclass
class ClassCollapse(Detector):
    """Predictions concentrate on few classes compared with the labels: prediction
    entropy below ``min_entropy_ratio`` x label entropy, for ``patience`` evaluations,
    judged from epoch ``grace_epochs`` on and not before warmup has ended. An evaluation
    whose prediction entropy grew by ``recovering`` x since the last one is a slow
    learner, not a collapse, and resets the count.
    Reads ``outputs["predictions"]`` (or the argmax of ``outputs["logits"]``) and ``outputs["targets"]``."""

    reason: ClassVar[Reason] = Reason.CLASS_COLLAPSE
    min_entropy_ratio: float = 0.5
    patience: int = 2
    grace_epochs: int = 0
    recovering: float = 1.1  # entropy up by this factor since the last evaluation: still learning
    _strikes: int = field(default=0, init=False, repr=False)
    _last_entropy: float | None = field(default=None, init=False, repr=False)

    def on_eval(self, e: EvalSignals) -> Verdict | None:
        # never during warmup: at a fraction of the lr, predictions still sit on a few classes
        if e.epoch < max(self.grace_epochs, math.ceil(e.warmup_epochs)):
            return None
        pred, target = e.outputs.get("predictions"), e.outputs.get("targets")
        if pred is None and e.outputs.get("logits") is not None:
            pred = e.outputs["logits"].argmax(-1)
        if pred is None or target is None or len(target) == 0 or len(pred) < 0.1 * len(target):
            return None  # too few predictions to judge (an all-blank CTC model is BlankOutput's)
        n_classes = int(max(int(pred.max()), int(target.max())) + 1)
        p = torch.bincount(pred.long().flatten(), minlength=n_classes).float()
        t = torch.bincount(target.long().flatten(), minlength=n_classes).float()
        h_p, h_t = _entropy(p), _entropy(t)
        # a slow learner spreads its predictions from one evaluation to the next; a collapsed one does not
        last = self._last_entropy
        # (near-zero entropy is a collapse whatever its trend)
        spreading = last is not None and h_p > self.recovering * last and h_p > 0.25 * h_t
        self._last_entropy = h_p
        if h_t <= 0 or h_p >= self.min_entropy_ratio * h_t or spreading:
            self._strikes = 0
            return None
        self._strikes += 1
        if self._strikes < self.patience:
            return None
        share_p, share_t = float(p.max() / p.sum()), float(t.max() / t.sum())
        top = int(p.argmax())
        return Verdict(self.reason, f"predictions use {int((p > 0).sum())} of {int((t > 0).sum())} label classes; "
                                    f"class {top} takes {share_p:.0%} (largest label share {share_t:.0%}); "
                                    f"prediction entropy {h_p:.2f} vs label entropy {h_t:.2f} nats (limit "
                                    f"{self.min_entropy_ratio:g}x) after epoch {e.epoch}", e.step, e.epoch)


def _entropy(counts: torch.Tensor) -> float:
    p = counts / counts.sum()
    p = p[p > 0]
    return max(0.0, float(-(p * p.log()).sum()))  # max: no "-0.00" in the evidence


@dataclass
class ChancePlateau(Detector):
    """Validation loss within ``tolerance`` of chance (the label entropy: ln C when
    balanced), or the metric at the task's chance value, at epoch >= ``grace_epochs``."""

    reason: ClassVar[Reason] = Reason.CHANCE_PLATEAU
    tolerance: float = 0.02
    grace_epochs: int = 3

    def on_eval(self, e: EvalSignals) -> Verdict | None:
        if e.epoch + 1 < math.ceil(e.warmup_epochs) + self.grace_epochs:
            return None
        target = e.outputs.get("targets")
        loss = e.metrics.get("loss")
        # the label entropy is the chance level of a classifier's cross-entropy, so this
        # needs the logits (N x C) that say the outputs are class scores
        if target is not None and loss is not None and e.outputs.get("logits") is not None:
            chance = _entropy(torch.bincount(target.long().flatten()).float())
            if chance > 0 and loss >= chance * (1 - self.tolerance):
                return Verdict(self.reason, f"validation loss {loss:.3f} after epoch {e.epoch} is at the chance "
                                            f"level {chance:.3f} (label entropy; tolerance {self.tolerance:.0%})",
                               e.step, e.epoch)
        if e.metric is not None and e.chance_metric is not None and e.metric in e.metrics:
            value = e.metrics[e.metric]
            scale = max(abs(e.chance_metric), 1e-12)
            if abs(value - e.chance_metric) <= self.tolerance * scale:
                return Verdict(self.reason, f"{e.metric} {value:.3f} after epoch {e.epoch} is at its chance value "
                                            f"{e.chance_metric:g} (tolerance {self.tolerance:.0%})", e.step, e.epoch)
        return None


DETECTORS: dict[str, type[Detector]] = {
    d.reason.value: d
    for d in (NonfiniteLoss, GradExplosion, VanishingGradients, DeadGradients, CTCInfeasible, TemporalCollapse,
              BlankOutput, ClassCollapse, ChancePlateau)
}


DetectorOptions = Mapping[str, Mapping[str, Any] | bool]


def merge_options(base: DetectorOptions, override: DetectorOptions) -> dict[str, Mapping[str, Any] | bool]:
    """``override`` (a study's ``health:``) on top of ``base`` (a task's defaults), per detector."""
    out: dict[str, Mapping[str, Any] | bool] = dict(base)
    for name, opts in override.items():
        prev = out.get(name, True)
        if isinstance(opts, bool) or isinstance(prev, bool):
            out[name] = opts if isinstance(opts, bool) or prev is not False else {**opts}
        else:
            out[name] = {**prev, **opts}
    return out


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
