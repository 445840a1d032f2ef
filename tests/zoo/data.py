"""The zoo's data: scikit-learn's 1,797 handwritten digits (shipped with the package, no
download), split into disjoint train and validation source images and composed into
the shapes the zoo's architectures read. Everything is deterministic."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from sweeper.tasks import ctc_digits


@dataclass(frozen=True)
class Split:
    """Training and validation tensors (inputs, targets; ``lengths`` for sequences)."""

    x: torch.Tensor
    y: torch.Tensor
    vx: torch.Tensor
    vy: torch.Tensor
    lengths: torch.Tensor | None = None
    vlengths: torch.Tensor | None = None
    targets: list[list[int]] | None = None  # CTC label sequences
    vtargets: list[list[int]] | None = None


@lru_cache(maxsize=1)
def _sources() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    images, targets = ctc_digits._digit_images()  # (1797, 8, 8) in [0, 1], digit labels
    train, val = ctc_digits.split_sources(0)
    return images[train], targets[train], images[val], targets[val]


def digits(shape: str = "flat") -> Split:
    """Ten-class digits: ``flat`` (N, 64), ``image`` (N, 1, 8, 8) or ``rows`` (N, 8 steps, 8)."""
    x, y, vx, vy = _sources()
    view = {"flat": (-1, 64), "image": (-1, 1, 8, 8), "rows": (-1, 8, 8)}[shape]
    return Split(torch.from_numpy(x).reshape(view).float(), torch.from_numpy(y),
                 torch.from_numpy(vx).reshape(view).float(), torch.from_numpy(vy))


def rare_positives(share: float = 0.06, positive: int = 9) -> Split:
    """'Is this digit a 9?' with the 9s subsampled to ``share`` of each split (flat inputs)."""
    x, y, vx, vy = _sources()
    rng = np.random.default_rng(0)

    def pick(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        pos, neg = np.flatnonzero(labels == positive), np.flatnonzero(labels != positive)
        n_pos = round(share * len(neg) / (1 - share))
        idx = rng.permutation(np.concatenate([neg, rng.choice(pos, n_pos, replace=False)]))
        return torch.from_numpy(images[idx]).reshape(-1, 64).float(), torch.from_numpy(labels[idx] == positive).long()

    tx, ty = pick(x, y)
    tvx, tvy = pick(vx, vy)
    return Split(tx, ty, tvx, tvy)


def small_digits() -> Split:
    """'Is this digit below 5?' (about half positive; flat inputs, 0/1 targets)."""
    d = digits()
    return Split(d.x, (d.y < 5).long(), d.vx, (d.vy < 5).long())


def regression() -> Split:
    """The digit's value as a number (regression targets 0-9, float)."""
    d = digits("flat")
    return Split(d.x, d.y.float(), d.vx, d.vy.float())


def _strips(n: int, images: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
            max_digits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[list[int]]]:
    """Strips of 2..max_digits digits (columns as time steps, 10 rows), per-column tags
    (0 = gap, 1 + digit) and the digit sequence of each strip (CTC labels 1 + digit)."""
    gap = 2
    width = max_digits * (8 + gap) + gap
    x = np.zeros((n, width, 10), dtype=np.float32)
    tags = np.zeros((n, width), dtype=np.int64)
    lengths = np.zeros(n, dtype=np.int64)
    seqs: list[list[int]] = []
    for i in range(n):
        picks = rng.integers(0, len(images), int(rng.integers(2, max_digits + 1)))
        col = int(rng.integers(0, gap + 1))
        for k in picks:
            dy = int(rng.integers(0, 3))
            x[i, col:col + 8, dy:dy + 8] = images[k].T
            tags[i, col:col + 8] = 1 + labels[k]
            col += 8 + int(rng.integers(0, gap + 1))
        lengths[i] = col
        seqs.append([1 + int(labels[k]) for k in picks])
    x += 0.05 * rng.standard_normal(x.shape).astype(np.float32)
    x[np.arange(width)[None, :] >= lengths[:, None]] = 0.0
    return torch.from_numpy(x), torch.from_numpy(tags), torch.from_numpy(lengths), seqs


@lru_cache(maxsize=2)
def strips(n_train: int = 600, n_val: int = 200, max_digits: int = 4) -> Split:
    """Digit strips for per-column tagging (``y``: tags) and CTC (``targets``)."""
    x, y, vx, vy = _sources()
    rng = np.random.default_rng(1)
    tx, ttags, tlen, tseq = _strips(n_train, x, y, rng, max_digits)
    vxs, vtags, vlen, vseq = _strips(n_val, vx, vy, rng, max_digits)
    return Split(tx, ttags, vxs, vtags, tlen, vlen, tseq, vseq)


def counting_sequences(n_train: int = 1200, n_val: int = 300, steps: int = 12) -> Split:
    """Token sequences for a language model: each starts at a random digit and counts up by
    its own stride (1-3) modulo 10; the next token follows from the last two."""
    rng = np.random.default_rng(2)

    def make(n: int) -> torch.Tensor:
        start = rng.integers(0, 10, (n, 1))
        stride = rng.integers(1, 4, (n, 1))
        return torch.from_numpy((start + stride * np.arange(steps + 1)[None, :]) % 10).long()

    train, val = make(n_train), make(n_val)
    return Split(train[:, :-1], train[:, 1:], val[:, :-1], val[:, 1:])
