"""Loss functions selectable by the ``loss`` parameter.

CTC variants take ``log_probs`` shaped (T, B, C) as ``torch.nn.functional.ctc_loss``
does; classification variants take logits (B, C) and integer targets (B,).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CTC_LOSSES = ("ctc", "ctc_label_smoothing", "focal_ctc")
CLASSIFICATION_LOSSES = ("ce", "focal", "class_weighted", "label_smoothing")


def ctc_loss(
    name: str,
    log_probs: torch.Tensor,
    targets: torch.Tensor,
    input_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    *,
    blank: int = 0,
    smoothing: float = 0.1,
    gamma: float = 2.0,
) -> torch.Tensor:
    """A CTC-family loss by name.

    - ``ctc``: plain CTC, averaged over the batch after dividing each sequence's
      loss by its target length (PyTorch's ``reduction="mean"``).
    - ``ctc_label_smoothing``: ``(1 - smoothing) * ctc + smoothing * KL(u || p)``,
      the KL from the uniform distribution to each valid frame's output, which
      keeps the output distribution from becoming over-confident.
    - ``focal_ctc``: each sequence's loss weighted by ``(1 - p)^gamma`` with
      ``p = exp(-loss)``, so well-recognised sequences count less.

    Infeasible alignments (input shorter than the target needs) give 0 rather
    than infinity (``zero_infinity=True``); the health monitor reports them.
    """
    if name == "ctc":
        return F.ctc_loss(
            log_probs, targets, input_lengths, target_lengths,
            blank=blank, reduction="mean", zero_infinity=True,
        )
    if name == "ctc_label_smoothing":
        base = F.ctc_loss(
            log_probs, targets, input_lengths, target_lengths,
            blank=blank, reduction="mean", zero_infinity=True,
        )
        t_max, _batch, classes = log_probs.shape
        valid = torch.arange(t_max, device=log_probs.device)[:, None] < input_lengths[None, :]
        # KL(u || p) = -log C - mean_c log p_c, per frame
        kl = -log_probs.mean(dim=-1) - torch.log(torch.tensor(float(classes)))
        kl = (kl * valid).sum() / valid.sum().clamp(min=1)
        return (1.0 - smoothing) * base + smoothing * kl
    if name == "focal_ctc":
        per_seq = F.ctc_loss(
            log_probs, targets, input_lengths, target_lengths,
            blank=blank, reduction="none", zero_infinity=True,
        )
        p = torch.exp(-per_seq)
        weighted = (1.0 - p).pow(gamma) * per_seq / target_lengths.clamp(min=1)
        return weighted.mean()
    raise ValueError(f"unknown CTC loss {name!r}; allowed: {', '.join(CTC_LOSSES)}")


def classification_loss(
    name: str,
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    class_counts: torch.Tensor | None = None,
    gamma: float = 2.0,
    smoothing: float = 0.1,
) -> torch.Tensor:
    """A classification loss by name, over logits (B, C) and targets (B,).

    - ``ce``: cross-entropy.
    - ``focal``: cross-entropy weighted by ``(1 - p_target)^gamma`` per sample, so
      samples the model already gets right count less.
    - ``class_weighted``: cross-entropy with each class weighted by the inverse of its
      training count (``class_counts``), normalized to a mean weight of 1.
    - ``label_smoothing``: cross-entropy against targets smoothed by ``smoothing``.
    """
    if name == "ce":
        return F.cross_entropy(logits, targets)
    if name == "focal":
        ce = F.cross_entropy(logits, targets, reduction="none")
        p = torch.exp(-ce)
        return ((1.0 - p).pow(gamma) * ce).mean()
    if name == "class_weighted":
        if class_counts is None:
            raise ValueError("class_weighted needs the training class counts")
        weights = 1.0 / class_counts.clamp(min=1).float()
        return F.cross_entropy(logits, targets, weight=weights * len(weights) / weights.sum())
    if name == "label_smoothing":
        return F.cross_entropy(logits, targets, label_smoothing=smoothing)
    raise ValueError(f"unknown classification loss {name!r}; allowed: {', '.join(CLASSIFICATION_LOSSES)}")
