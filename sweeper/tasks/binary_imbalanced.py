"""``binary_imbalanced``: F1 on a rare positive class seen through two modalities.

The data is real and needs no download: scikit-learn's 1,797 handwritten digits
(8x8). The question is "is this digit a 9?", and 9s are rare: the positives of
each split are subsampled to ``positive_share`` (6%) of it. Two modalities, two
sensors that each see half of the digit: the top four rows and the bottom four
rows, each a sequence of four 8-pixel tokens with its own pixel noise
(``noise``). Neither half settles the question alone: the top of a 9 is the top
of a 4 or an 8, its bottom that of a 3 or a 5. Train and validation digits are
disjoint source images (a third of them for validation); everything is
deterministic for ``data_seed``.

The model is a small transformer (``width``, ``depth``, ``heads``) over a
class token and both modalities' tokens, each with a learned position and
modality embedding. ``modality_dropout`` hides one modality (picked at random)
from a sample's attention during training. Besides the binary head, an
auxiliary head names the digit (10 classes), weighted by ``aux_weight``. The
loss is ``ce``, ``focal`` or ``class_weighted``; ``weighted_sampler`` draws each
epoch's batches with replacement so both classes are drawn equally often. The
metric is the positive class's F1 on the validation split; ``fit()`` adds the
lr ``schedule`` (``plateau`` against ``cosine_restarts``) and early stop
``patience``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import WeightedRandomSampler

from ..losses import classification_loss
from .base import (
    FIT_DEFAULTS,
    FIT_KEY_TYPES,
    PROBABILITY_BELOW_1,
    SEED,
    EvalResult,
    KeyType,
    ShuffledRun,
    Task,
    TaskRun,
    integer,
    number,
)
from .ctc_digits import _digit_images, split_sources

POSITIVE_DIGIT = 9
LOSSES = ("ce", "focal", "class_weighted")
ROWS = 4  # tokens per modality: the half image's rows
PIXELS = 8  # features per token


@lru_cache(maxsize=4)
def build_halves(data_seed: int, positive_share: float, noise: float) -> dict[str, tuple[torch.Tensor, ...]]:
    """``{"train"|"val": (top, bottom, label, digit)}``: top and bottom (N, 4, 8), cached per process."""
    images, digits = _digit_images()
    train_src, val_src = split_sources(data_seed, val_fraction=1 / 3)
    rng = np.random.default_rng(data_seed + 3)
    out = {}
    for split, src in (("train", train_src), ("val", val_src)):
        pos, neg = src[digits[src] == POSITIVE_DIGIT], src[digits[src] != POSITIVE_DIGIT]
        # keep positives so that they make up positive_share of the split
        n_pos = max(1, min(len(pos), round(positive_share * len(neg) / (1 - positive_share))))
        keep = np.sort(np.concatenate([neg, rng.choice(pos, n_pos, replace=False)]))
        x = images[keep] + noise * rng.standard_normal(images[keep].shape).astype(np.float32)
        x = torch.from_numpy(x.astype(np.float32))
        digit = torch.from_numpy(digits[keep])
        out[split] = (x[:, :ROWS], x[:, ROWS:], (digit == POSITIVE_DIGIT).long(), digit)
    return out


def binary_scores(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Precision, recall and F1 of the positive class (1); 0 where undefined."""
    tp = int(((pred == 1) & (target == 1)).sum())
    fp = int(((pred == 1) & (target == 0)).sum())
    fn = int(((pred == 0) & (target == 1)).sum())
    return {"precision": tp / (tp + fp) if tp else 0.0, "recall": tp / (tp + fn) if tp else 0.0,
            "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0}


class FusionTransformer(nn.Module):
    """A class token plus both modalities' row tokens through a pre-norm transformer encoder."""

    def __init__(self, width: int, depth: int, heads: int, dropout: float, aux: bool = True) -> None:
        super().__init__()
        self.embed = nn.ModuleList([nn.Linear(PIXELS, width) for _ in range(2)])
        self.position = nn.Parameter(torch.zeros(2, ROWS, width))  # per modality and row
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.normal_(self.position, std=0.02)
        nn.init.normal_(self.cls, std=0.02)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 2)
        # no auxiliary head without its loss: a head no loss reaches is what dead_gradients reports
        self.aux_head = nn.Linear(width, 10) if aux else None

    def forward(self, top: torch.Tensor, bottom: torch.Tensor,
                hidden: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(binary logits, digit logits or None); ``hidden`` (B, 2) bool marks modalities a sample may not see."""
        tokens = [self.embed[m](x) + self.position[m] for m, x in enumerate((top, bottom))]
        x = torch.cat([self.cls.expand(len(top), -1, -1), *tokens], dim=1)
        mask = None
        if hidden is not None:
            keep_cls = torch.zeros(len(top), 1, dtype=torch.bool, device=top.device)
            mask = torch.cat([keep_cls, hidden.repeat_interleave(ROWS, dim=1)], dim=1)
        z = self.norm(self.encoder(x, src_key_padding_mask=mask)[:, 0])
        return self.head(z), self.aux_head(z) if self.aux_head is not None else None


def config_error(config: Mapping[str, Any]) -> str | None:
    """Why ``config`` cannot run (``Task.config_error``), else None."""
    width, heads = config["width"], config["heads"]
    return f"width must be a multiple of heads, got width {width} and heads {heads}" if width % heads else None


class _Run(ShuffledRun):
    def __init__(self, config: Mapping[str, Any], device: torch.device) -> None:
        if error := config_error(config):
            raise ValueError(error)
        width, heads = int(config["width"]), int(config["heads"])
        self.device = device
        self.batch_size = int(config["batch_size"])
        self.loss_name = str(config["loss"])
        self.gamma = float(config["focal_gamma"])
        self.aux_weight = float(config["aux_weight"])
        self.modality_dropout = float(config["modality_dropout"])
        data = build_halves(int(config["data_seed"]), float(config["positive_share"]), float(config["noise"]))
        self.train = tuple(t.to(device) for t in data["train"])
        self.val = tuple(t.to(device) for t in data["val"])
        label = data["train"][2]
        counts = torch.bincount(label, minlength=2)
        self.counts = counts.to(device)
        # the sampler's weights: each class drawn with equal probability
        self.sample_weights = (1.0 / counts.double())[label] if bool(config["weighted_sampler"]) else None
        self.model = FusionTransformer(width, int(config["depth"]), heads, float(config["dropout"]),
                                       aux=self.aux_weight > 0).to(device)
        self._generator = torch.Generator().manual_seed(int(config["seed"]))

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train[2]) / self.batch_size)

    def train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, ...]]:
        n = len(self.train[2])
        if self.sample_weights is None:
            order = torch.randperm(n, generator=self._generator)
        else:
            order = torch.tensor(list(WeightedRandomSampler(self.sample_weights, n, generator=self._generator)))
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size].to(self.device)
            hidden = None
            if self.modality_dropout > 0:
                drop = torch.rand(len(idx), generator=self._generator) < self.modality_dropout
                which = torch.randint(0, 2, (len(idx),), generator=self._generator)
                hidden = (F.one_hot(which, 2).bool() & drop[:, None]).to(self.device)
            yield (*(t[idx] for t in self.train), hidden)

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        top, bottom, label, digit, hidden = batch
        logits, aux = self.model(top, bottom, hidden)
        main = classification_loss(self.loss_name, logits, label, class_counts=self.counts, gamma=self.gamma)
        return main if aux is None else main + self.aux_weight * F.cross_entropy(aux, digit)

    def evaluate(self) -> EvalResult:
        top, bottom, label, _digit = self.val
        logits, _aux = self.model(top, bottom)
        pred = logits.argmax(-1)
        metrics = {
            **binary_scores(pred.cpu(), label.cpu()),
            "accuracy": float((pred == label).float().mean()),
            "loss": float(F.cross_entropy(logits, label)),
            "predicted_positive": float((pred == 1).float().mean()),
        }
        return EvalResult(metrics=metrics, outputs={"logits": logits.detach(), "targets": label})


class BinaryImbalanced(Task):
    """Is this handwritten digit a 9 (6% of samples), from its top and bottom halves; metric: F1."""

    name = "binary_imbalanced"
    metric = "f1"
    direction = "maximize"
    # an all-negative model (F1 0) is class_collapse's to report
    chance_metric = None

    @property
    def defaults(self) -> Mapping[str, Any]:
        return {
            **FIT_DEFAULTS,
            "dropout": 0.1,            # inside the transformer layers
            "width": 64,               # model dimension
            "depth": 2,                # transformer layers
            "heads": 4,                # attention heads (must divide width)
            "modality_dropout": 0.0,   # chance a training sample loses one modality
            "aux_weight": 0.5,         # weight of the auxiliary which-digit loss; 0 = off
            "loss": "ce",              # ce, focal or class_weighted
            "focal_gamma": 2.0,        # focusing exponent of the focal loss
            "weighted_sampler": False,  # draw both classes equally often
            "epochs": 20,              # training epochs
            "batch_size": 64,          # samples per step
            "data_seed": 0,            # which digits are kept and their noise (same for every trial)
            "positive_share": 0.06,    # share of 9s in each split
            "noise": 0.3,              # pixel noise of both sensors (pixels are 0-1)
        }

    @property
    def key_types(self) -> Mapping[str, KeyType]:
        return {
            **FIT_KEY_TYPES, "dropout": PROBABILITY_BELOW_1, "width": integer(1), "depth": integer(1),
            "heads": integer(1), "modality_dropout": number(0, 1), "aux_weight": number(0),
            "loss": KeyType("str", choices=LOSSES), "focal_gamma": number(0),
            "weighted_sampler": KeyType("bool"), "data_seed": SEED,
            "positive_share": number(0, 1, low_open=True, high_open=True), "noise": number(0),
        }

    def config_error(self, config: Mapping[str, Any]) -> str | None:
        return config_error(config)

    def setup(self, config: Mapping[str, Any], device: torch.device) -> TaskRun:
        return _Run(config, device)
