"""``classify_many``: many classes, few samples each, unevenly spread.

The data is real and needs no download: scikit-learn's 1,797 handwritten digits
(8x8), composed into two-digit numbers. Class ``k`` is the number ``10 + k`` (10,
11, ..., 69 for the default 60 classes); a sample is an image of its tens digit
beside an image of its ones digit (8x16 pixels, 128 features) with a little pixel
noise. Each class gets between ``min_per_class`` and ``max_per_class`` training
samples (3-13, 8 on average: the imbalance a class-weighted loss is for) and
``val_per_class`` validation samples, composed from disjoint source images.
Everything is deterministic for ``data_seed``.

The model is an MLP (``width`` x ``depth``, ReLU, dropout); the metric is
validation accuracy (chance: 1 / classes). With 60 classes and so few samples a
high learning rate sends the predictions to a handful of classes: the class
collapse the health monitor watches for.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

from ..losses import CLASSIFICATION_LOSSES, classification_loss
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

FEATURES = 8 * 16


@lru_cache(maxsize=4)
def build_numbers(data_seed: int, classes: int, min_per_class: int, max_per_class: int,
                  val_per_class: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_val, y_val): two-digit-number images, cached per process."""
    images, digits = _digit_images()
    train_src, val_src = split_sources(data_seed)
    rng = np.random.default_rng(data_seed + 2)
    by_digit = {split: {d: src[digits[src] == d] for d in range(10)}
                for split, src in (("train", train_src), ("val", val_src))}

    def compose(split: str, number: int, n: int) -> np.ndarray:
        tens, ones = by_digit[split][number // 10], by_digit[split][number % 10]
        left, right = images[rng.choice(tens, n)], images[rng.choice(ones, n)]
        x = np.concatenate([left, right], axis=2).reshape(n, FEATURES)
        return x + 0.05 * rng.standard_normal(x.shape).astype(np.float32)

    counts = rng.integers(min_per_class, max_per_class + 1, size=classes)
    xs, ys, vxs, vys = [], [], [], []
    for k in range(classes):
        xs.append(compose("train", 10 + k, int(counts[k])))
        ys.append(np.full(int(counts[k]), k))
        vxs.append(compose("val", 10 + k, val_per_class))
        vys.append(np.full(val_per_class, k))
    return (torch.from_numpy(np.concatenate(xs)).float(), torch.from_numpy(np.concatenate(ys)),
            torch.from_numpy(np.concatenate(vxs)).float(), torch.from_numpy(np.concatenate(vys)))


def macro_f1(pred: torch.Tensor, target: torch.Tensor, classes: int) -> float:
    """Mean over classes of F1 (a class never predicted nor present counts as 0)."""
    f1 = []
    for c in range(classes):
        tp = int(((pred == c) & (target == c)).sum())
        fp = int(((pred == c) & (target != c)).sum())
        fn = int(((pred != c) & (target == c)).sum())
        f1.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(f1) / classes


class MLP(nn.Module):
    def __init__(self, width: int, depth: int, dropout: float, classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = FEATURES
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU(), nn.Dropout(dropout)]
            d = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def config_error(config: Mapping[str, Any]) -> str | None:
    """Why ``config`` cannot run (``Task.config_error``), else None."""
    low, high = config["min_per_class"], config["max_per_class"]
    if low > high:
        return f"min_per_class must be <= max_per_class, got {low} and {high}"
    return None


class _Run(ShuffledRun):
    def __init__(self, config: Mapping[str, Any], device: torch.device) -> None:
        self.device = device
        if error := config_error(config):
            raise ValueError(error)
        self.classes = int(config["classes"])
        self.batch_size = int(config["batch_size"])
        self.loss_name = str(config["loss"])
        self.gamma = float(config["focal_gamma"])
        x, y, vx, vy = build_numbers(int(config["data_seed"]), self.classes, int(config["min_per_class"]),
                                     int(config["max_per_class"]), int(config["val_per_class"]))
        self.x, self.y, self.vx, self.vy = x.to(device), y.to(device), vx.to(device), vy.to(device)
        self.counts = torch.bincount(self.y, minlength=self.classes)
        self.model = MLP(int(config["width"]), int(config["depth"]), float(config["dropout"]),
                         self.classes).to(device)
        self._generator = torch.Generator().manual_seed(int(config["seed"]))

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.y), generator=self._generator).to(self.device)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            yield self.x[idx], self.y[idx]

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return classification_loss(self.loss_name, self.model(x), y, class_counts=self.counts, gamma=self.gamma)

    def evaluate(self) -> EvalResult:
        logits = self.model(self.vx)
        pred = logits.argmax(-1)
        metrics = {
            "accuracy": float((pred == self.vy).float().mean()),
            "macro_f1": macro_f1(pred.cpu(), self.vy.cpu(), self.classes),
            "loss": float(nn.functional.cross_entropy(logits, self.vy)),
            "classes_predicted": float(len(torch.unique(pred))),
        }
        return EvalResult(metrics=metrics, outputs={"logits": logits.detach(), "targets": self.vy})


class ClassifyMany(Task):
    """60 two-digit numbers from a few handwritten samples each; metric: validation accuracy."""

    name = "classify_many"
    metric = "accuracy"
    direction = "maximize"

    chance_metric = 1.0 / 60  # accuracy of a guess, for the default 60 classes

    @property
    def defaults(self) -> Mapping[str, Any]:
        return {
            **FIT_DEFAULTS,
            "dropout": 0.2,           # after each hidden layer
            "width": 256,             # hidden units per layer
            "depth": 2,               # hidden layers
            "loss": "ce",             # one of CLASSIFICATION_LOSSES
            "focal_gamma": 2.0,       # focusing exponent of the focal loss
            "epochs": 30,             # training epochs
            "batch_size": 32,         # samples per step
            "data_seed": 0,           # which samples are composed (same for every trial)
            "classes": 60,            # two-digit numbers 10 .. 10 + classes - 1
            "min_per_class": 3,       # training samples per class: uniform in [min, max]
            "max_per_class": 13,
            "val_per_class": 8,       # validation samples per class
        }

    @property
    def key_types(self) -> Mapping[str, KeyType]:
        return {
            **FIT_KEY_TYPES, "dropout": PROBABILITY_BELOW_1, "width": integer(1), "depth": integer(0),
            "loss": KeyType("str", choices=CLASSIFICATION_LOSSES), "focal_gamma": number(0),
            "data_seed": SEED, "classes": integer(2, 90),  # the two-digit numbers 10-99
            "min_per_class": integer(1), "max_per_class": integer(1), "val_per_class": integer(1),
        }

    def config_error(self, config: Mapping[str, Any]) -> str | None:
        return config_error(config)

    def setup(self, config: Mapping[str, Any], device: torch.device) -> TaskRun:
        return _Run(config, device)
