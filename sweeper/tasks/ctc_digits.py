"""``ctc_digits``: read strips of handwritten digits with a CTC sequence model.

Data: scikit-learn's copy of the UCI handwritten digits (1,797 images of 8x8
pixels, shipped with the package, no download). Each strip places 3-7 digits
left to right on a 10-pixel-high canvas with random gaps (0-3 columns) and a
random vertical offset (0-2 pixels), plus a little pixel noise. The model reads
the strip column by column as a sequence of 10-dim vectors. Train and
validation strips are composed from disjoint source images, and everything is
deterministic given ``data_seed``.

Model: a convolutional front end whose strided stages downsample time by
``downsample`` (1, 2, 4, ... 32), a bidirectional LSTM, and a linear layer to
log-probabilities over 11 symbols (CTC blank + 10 digits). Decoding is greedy;
the metric is word error rate over digit tokens.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

from ..losses import CTC_LOSSES, ctc_loss
from .base import (
    FIT_KEY_TYPES,
    PROBABILITY_BELOW_1,
    SCHEDULE_DEFAULTS,
    SEED,
    EvalResult,
    KeyType,
    ShuffledRun,
    Task,
    TaskRun,
    integer,
    number,
)

HEIGHT = 10  # 8 pixel rows plus 2 rows of vertical jitter
DIGIT_WIDTH = 8
MIN_DIGITS = 3  # the shortest strip, in digits

# name -> (conv channels, LSTM hidden size per direction, LSTM layers)
MODEL_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (16, 32, 1),
    "small": (32, 64, 1),
    "medium": (64, 96, 1),
    "large": (96, 128, 2),
}


class Vocabulary:
    """Maps tokens to indices and back; index 0 is the CTC blank."""

    def __init__(self, tokens: Sequence[str], blank: str = "<blank>") -> None:
        self.blank = blank
        self.itos: list[str] = [blank]
        self.stoi: dict[str, int] = {blank: 0}
        for token in tokens:
            self.add(token)

    def add(self, token: str) -> int:
        """Add ``token`` (if new) to both maps and return its index."""
        if token not in self.stoi:
            self.stoi[token] = len(self.itos)
            self.itos.append(token)
        return self.stoi[token]

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        return [self.stoi[t] for t in tokens]

    def decode(self, indices: Sequence[int]) -> list[str]:
        return [self.itos[i] for i in indices if i != 0]


DIGITS = Vocabulary([str(d) for d in range(10)])


def edit_distance(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Levenshtein distance between two token sequences."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def word_error_rate(hypotheses: Sequence[Sequence[Any]], references: Sequence[Sequence[Any]]) -> float:
    """Total edit distance over total reference length (tokens are the 'words')."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    errors = sum(edit_distance(h, r) for h, r in zip(hypotheses, references, strict=True))
    total = sum(len(r) for r in references)
    return errors / max(total, 1)


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """Best path decoding of (T, B, C) log-probabilities: argmax, merge repeats, drop blanks."""
    best = log_probs.argmax(dim=-1).T.cpu().numpy()  # (B, T)
    out = []
    for row, n in zip(best, lengths.cpu().tolist(), strict=True):
        seq, last = [], 0
        for k in row[:n]:
            if k != last and k != 0:
                seq.append(int(k))
            last = k
        out.append(seq)
    return out


@lru_cache(maxsize=1)
def _digit_images() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


@dataclass(frozen=True)
class Strips:
    """Padded strips: ``x`` (N, W, HEIGHT), widths (N,), labels as index lists."""

    x: torch.Tensor
    widths: torch.Tensor
    labels: list[list[int]]


def make_strips(
    n: int,
    *,
    source: np.ndarray,
    rng: np.random.Generator,
    min_digits: int = MIN_DIGITS,
    max_digits: int = 7,
    max_gap: int = 3,
    noise: float = 0.05,
) -> Strips:
    """Compose ``n`` strips from the digit images indexed by ``source``."""
    images, targets = _digit_images()
    max_width = max_digits * (DIGIT_WIDTH + max_gap) + max_gap
    x = np.zeros((n, max_width, HEIGHT), dtype=np.float32)
    widths = np.zeros(n, dtype=np.int64)
    labels: list[list[int]] = []
    for i in range(n):
        count = int(rng.integers(min_digits, max_digits + 1))
        picks = rng.choice(source, size=count)
        col = int(rng.integers(0, max_gap + 1))
        for idx in picks:
            dy = int(rng.integers(0, HEIGHT - 8 + 1))
            x[i, col:col + DIGIT_WIDTH, dy:dy + 8] = images[idx].T  # columns become time steps
            col += DIGIT_WIDTH + int(rng.integers(0, max_gap + 1))
        widths[i] = col
        labels.append([DIGITS.stoi[str(targets[idx])] for idx in picks])
    x += noise * rng.standard_normal(x.shape).astype(np.float32)
    x[np.arange(max_width)[None, :] >= widths[:, None]] = 0.0
    return Strips(torch.from_numpy(x), torch.from_numpy(widths), labels)


def split_sources(data_seed: int, val_fraction: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint train/validation index sets over the source digit images."""
    images, _ = _digit_images()
    order = np.random.default_rng(data_seed).permutation(len(images))
    n_val = round(len(images) * val_fraction)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


@lru_cache(maxsize=4)
def build_dataset(data_seed: int, n_train: int, n_val: int, max_digits: int) -> tuple[Strips, Strips]:
    """Train and validation strips, cached per process (trials share them)."""
    train_src, val_src = split_sources(data_seed)
    rng = np.random.default_rng(data_seed + 1)
    train = make_strips(n_train, source=train_src, rng=rng, max_digits=max_digits)
    val = make_strips(n_val, source=val_src, rng=rng, max_digits=max_digits)
    return train, val


def required_frames(labels: Sequence[int]) -> int:
    """Fewest CTC frames that can emit ``labels``: one each, plus a blank between repeats."""
    return len(labels) + sum(a == b for a, b in itertools.pairwise(labels))


def downsampled_length(width: torch.Tensor, downsample: int) -> torch.Tensor:
    """Output frames of the front end for inputs of ``width`` columns."""
    length = width
    for _ in range(int(math.log2(downsample))):
        length = (length - 1) // 2 + 1  # conv k=3, stride 2, padding 1
    return length


class CTCRecognizer(nn.Module):
    """Conv front end (time downsampling) -> BiLSTM -> linear -> log-probabilities."""

    def __init__(self, *, size: str, downsample: int, dropout: float, n_classes: int) -> None:
        super().__init__()
        channels, hidden, layers = MODEL_SIZES[size]
        self.downsample = downsample
        stages: list[nn.Module] = [nn.Conv1d(HEIGHT, channels, 3, padding=1), nn.BatchNorm1d(channels), nn.ReLU()]
        for _ in range(int(math.log2(downsample))):
            stages += [nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.BatchNorm1d(channels), nn.ReLU()]
        self.frontend = nn.Sequential(*stages)
        self.dropout = nn.Dropout(dropout)
        self.encoder = nn.LSTM(
            channels, hidden, num_layers=layers, bidirectional=True, batch_first=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.head = nn.Linear(2 * hidden, n_classes)

    def forward(self, x: torch.Tensor, widths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, W, H) -> log-probabilities (T, B, C) and output lengths (B,)."""
        lengths = downsampled_length(widths, self.downsample)
        h = self.frontend(x.transpose(1, 2)).transpose(1, 2)  # (B, T, C)
        h = self.dropout(h)
        packed = nn.utils.rnn.pack_padded_sequence(
            h, lengths.cpu().clamp(min=1), batch_first=True, enforce_sorted=False
        )
        out, _ = self.encoder(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=h.shape[1])
        logits = self.head(self.dropout(out))
        return logits.log_softmax(-1).transpose(0, 1), lengths


class _CTCDigitsRun(ShuffledRun):
    def __init__(self, config: Mapping[str, Any], device: torch.device) -> None:
        self.device = device
        self.batch_size = int(config["batch_size"])
        self.loss_name = str(config["loss"])
        self.smoothing = float(config["label_smoothing"])
        train, val = build_dataset(
            int(config["data_seed"]), int(config["train_strips"]), int(config["val_strips"]),
            int(config["max_digits"]),
        )
        self.train, self.val = train, val
        self.val_required = torch.tensor([required_frames(lab) for lab in val.labels])
        self.val_tokens = torch.tensor([t for lab in val.labels for t in lab], dtype=torch.long)
        self.model = CTCRecognizer(
            size=str(config["model_size"]), downsample=int(config["downsample"]),
            dropout=float(config["dropout"]), n_classes=len(DIGITS),
        ).to(device)
        self._generator = torch.Generator().manual_seed(int(config["seed"]))

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train.labels) / self.batch_size)

    def _batch(self, strips: Strips, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        widths = strips.widths[idx]
        w = int(widths.max())
        x = strips.x[idx, :w]
        labels = [strips.labels[i] for i in idx.tolist()]
        targets = torch.tensor([t for lab in labels for t in lab], dtype=torch.long)
        target_lengths = torch.tensor([len(lab) for lab in labels], dtype=torch.long)
        return (x.to(self.device), widths.to(self.device), targets.to(self.device),
                target_lengths.to(self.device))

    def train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, ...]]:
        order = torch.randperm(len(self.train.labels), generator=self._generator)
        for start in range(0, len(order), self.batch_size):
            yield self._batch(self.train, order[start:start + self.batch_size])

    def preflight(self) -> Mapping[str, torch.Tensor]:
        # known from the strip widths alone: no forward pass needed
        return {
            "output_lengths": downsampled_length(self.train.widths, self.model.downsample),
            "required_lengths": torch.tensor([required_frames(lab) for lab in self.train.labels]),
        }

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, widths, targets, target_lengths = batch
        log_probs, lengths = self.model(x, widths)
        return ctc_loss(self.loss_name, log_probs, targets, lengths, target_lengths, smoothing=self.smoothing)

    def evaluate(self) -> EvalResult:
        hyps: list[list[int]] = []
        losses, n_frames, n_blank = [], 0, 0
        lengths_all: list[torch.Tensor] = []
        order = torch.arange(len(self.val.labels))
        for start in range(0, len(order), 256):
            x, widths, targets, target_lengths = self._batch(self.val, order[start:start + 256])
            log_probs, lengths = self.model(x, widths)
            losses.append(float(ctc_loss("ctc", log_probs, targets, lengths, target_lengths)) * len(widths))
            hyps += greedy_decode(log_probs, lengths)
            lengths_all.append(lengths.cpu())
            valid = torch.arange(log_probs.shape[0], device=lengths.device)[:, None] < lengths[None, :]
            n_frames += int(valid.sum())
            n_blank += int(((log_probs.argmax(-1) == 0) & valid).sum())
        wer = word_error_rate(hyps, self.val.labels)
        metrics = {
            "wer": wer,
            "loss": sum(losses) / len(self.val.labels),
            "blank_fraction": n_blank / max(n_frames, 1),
            "empty_fraction": sum(1 for h in hyps if not h) / len(hyps),
        }
        outputs = {
            # what the health detectors read: frames per sequence, frames its labels need
            # (one per label plus a blank between repeats), decoded vs reference tokens (the
            # monitor's own probes measure the LSTM's input for temporal collapse)
            "output_lengths": torch.cat(lengths_all),
            "required_lengths": self.val_required,
            "predictions": torch.tensor([t for h in hyps for t in h], dtype=torch.long),
            "targets": self.val_tokens,
        }
        return EvalResult(metrics=metrics, outputs=outputs)


class CTCDigits(Task):
    """Handwritten digit strips read by a CTC recognizer; metric: validation WER."""

    name = "ctc_digits"
    metric = "wer"
    direction = "minimize"
    chance_metric = 1.0  # the WER of an empty (or entirely wrong) transcript

    @property
    def defaults(self) -> Mapping[str, Any]:
        return {
            "lr": 3e-3,               # AdamW peak learning rate
            "warmup_epochs": 1,       # linear warmup length, epochs
            "clip_norm": 1.0,         # max gradient norm; null = no clipping
            "weight_decay": 1e-4,     # AdamW decoupled weight decay
            "dropout": 0.1,           # after the front end and before the head
            "model_size": "small",    # preset in MODEL_SIZES
            "loss": "ctc",            # one of CTC_LOSSES
            "label_smoothing": 0.1,   # weight of the smoothing term in ctc_label_smoothing
            "downsample": 4,          # time downsampling of the front end (power of 2)
            "epochs": 8,              # training epochs
            "batch_size": 32,         # strips per step
            "seed": 0,                # python/numpy/torch seed of the run
            "patience": None,         # early stop after this many epochs without improvement
            **SCHEDULE_DEFAULTS,      # lr after warmup: cosine (default), cosine_restarts, plateau
            "data_seed": 0,           # which strips are generated (same for every trial)
            "train_strips": 2000,     # training strips per epoch
            "val_strips": 500,        # validation strips
            "max_digits": 7,          # longest strip, in digits
        }

    @property
    def key_types(self) -> Mapping[str, KeyType]:
        return {
            **FIT_KEY_TYPES,
            "dropout": PROBABILITY_BELOW_1,
            "model_size": KeyType("str", choices=tuple(MODEL_SIZES)),
            "loss": KeyType("str", choices=CTC_LOSSES),
            "label_smoothing": number(0, 1),
            "downsample": KeyType("int", choices=(1, 2, 4, 8, 16, 32)),
            "data_seed": SEED,
            "train_strips": integer(1),
            "val_strips": integer(1),
            "max_digits": integer(MIN_DIGITS),  # every strip holds MIN_DIGITS to max_digits digits
        }

    def setup(self, config: Mapping[str, Any], device: torch.device) -> TaskRun:
        return _CTCDigitsRun(config, device)
