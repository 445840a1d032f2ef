"""The zoo's architectures: MLP, CNN, LSTM/GRU, transformer and CTC models, each with
the switches its sick variants need (a part under ``no_grad``, pooling over time, ...)."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """``depth`` hidden layers of ``width``; ``dropout`` after each; ``frozen_part`` runs the
    first layers under ``no_grad`` (a bug, or a frozen feature extractor)."""

    def __init__(self, inputs: int = 64, classes: int = 10, width: int = 64, depth: int = 2,
                 dropout: float = 0.0, init_scale: float = 1.0, frozen_part: bool = False,
                 detach_features: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(inputs if i == 0 else width, width), nn.ReLU(), nn.Dropout(dropout)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, classes)
        self.frozen_part = frozen_part
        self.detach_features = detach_features
        if init_scale != 1.0:
            with torch.no_grad():
                for p in self.parameters():
                    p.mul_(init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frozen_part:
            with torch.no_grad():
                h = self.body(x)
        else:
            h = self.body(x)
        if self.detach_features:
            h = h.detach()
        return self.head(h)


class CNN(nn.Module):
    """Two conv blocks (BatchNorm, ReLU) on 1x8x8 digits, global average pool, a linear head."""

    def __init__(self, classes: int = 10, channels: int = 16, frozen_convs: bool = False) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1), nn.BatchNorm2d(2 * channels), nn.ReLU(),
        )
        self.fc = nn.Linear(2 * channels, classes)
        self.frozen_convs = frozen_convs

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frozen_convs:
            with torch.no_grad():
                h = self.features(x)
        else:
            h = self.features(x)
        return self.fc(h)


class RowRNN(nn.Module):
    """An LSTM or GRU reading the digit's 8 rows as time steps; the last state classifies."""

    def __init__(self, cell: str = "lstm", hidden: int = 64, classes: int = 10, frozen_rnn: bool = False) -> None:
        super().__init__()
        self.embed = nn.Linear(8, hidden)
        self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)
        self.frozen_rnn = frozen_rnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.embed(x))
        if self.frozen_rnn:
            with torch.no_grad():
                out, _ = self.rnn(h)
        else:
            out, _ = self.rnn(h)
        return self.head(out[:, -1])


def _mean_over_time(h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Global average pooling over the valid steps, copied back over every step: the bug."""
    valid = (torch.arange(h.shape[1], device=h.device)[None, :] < lengths[:, None]).unsqueeze(-1).float()
    pooled = (h * valid).sum(1, keepdim=True) / valid.sum(1, keepdim=True).clamp(min=1)
    return pooled.expand_as(h)


class GRUTagger(nn.Module):
    """A bidirectional GRU tagging every column of a strip (gap or which digit)."""

    def __init__(self, hidden: int = 48, classes: int = 11, pool_before_gru: bool = False) -> None:
        super().__init__()
        self.front = nn.Conv1d(10, hidden, 3, padding=1)
        self.gru = nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, classes)
        self.pool_before_gru = pool_before_gru

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.front(x.transpose(1, 2))).transpose(1, 2)
        if self.pool_before_gru:
            h = _mean_over_time(h, lengths)
        out, _ = self.gru(h)
        return self.head(out)  # (B, T, classes)


class TransformerClassifier(nn.Module):
    """A pre-norm transformer encoder over the 8 rows (tokens) plus a class token."""

    def __init__(self, d: int = 32, depth: int = 2, heads: int = 4, classes: int = 10,
                 frozen_encoder: bool = False, invert_mask: bool = False) -> None:
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(0.02 * torch.randn(1, 9, d))
        layer = nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)
        self.frozen_encoder = frozen_encoder
        self.invert_mask = invert_mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.cls.expand(len(x), -1, -1), self.embed(x)], 1) + self.pos
        mask = None
        if self.invert_mask:  # "True = keep" where PyTorch reads True as padding: every token masked
            mask = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
        if self.frozen_encoder:
            with torch.no_grad():
                h = self.encoder(h, src_key_padding_mask=mask)
        else:
            h = self.encoder(h, src_key_padding_mask=mask)
        return self.head(h[:, 0])


class TiedLM(nn.Module):
    """A causal transformer language model whose output layer shares the embedding weights."""

    def __init__(self, vocab: int = 10, d: int = 32, steps: int = 12) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.02 * torch.randn(1, steps, d))
        layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.out = nn.Linear(d, vocab, bias=False)
        self.out.weight = self.embed.weight  # weight tying

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        steps = tokens.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(steps, device=tokens.device)
        h = self.encoder(self.embed(tokens) + self.pos[:, :steps], mask=causal, is_causal=True)
        return self.out(h)


class TransformerGRUCTC(nn.Module):
    """A convolutional front end, a transformer encoder layer, then a bidirectional GRU and
    CTC log-probabilities (T, B, C). ``pool_between`` averages the encoder's output over
    time and copies it to every step (the write-ups' global pooling)."""

    def __init__(self, d: int = 32, classes: int = 11, pool_between: bool = False) -> None:
        super().__init__()
        self.front = nn.Sequential(nn.Conv1d(10, d, 3, padding=1), nn.BatchNorm1d(d), nn.ReLU())
        layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.gru = nn.GRU(d, d, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * d, classes)
        self.pool_between = pool_between

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        pad = torch.arange(x.shape[1], device=x.device)[None, :] >= lengths[:, None]
        h = self.front(x.transpose(1, 2)).transpose(1, 2)
        h = self.encoder(h, src_key_padding_mask=pad)
        if self.pool_between:
            h = _mean_over_time(h, lengths)
        out, _ = self.gru(h)
        return self.head(out).log_softmax(-1).transpose(0, 1)


class ConvLSTMCTC(nn.Module):
    """A user's own CTC recognizer: 1-d convolutions over the columns, an LSTM, a linear layer.
    ``pool_before_lstm`` is the write-ups' global pooling copied over every time step."""

    def __init__(self, channels: int = 32, hidden: int = 48, classes: int = 11,
                 pool_before_lstm: bool = False) -> None:
        super().__init__()
        self.front = nn.Sequential(nn.Conv1d(10, channels, 3, padding=1), nn.BatchNorm1d(channels), nn.ReLU(),
                                   nn.Conv1d(channels, channels, 3, padding=1), nn.BatchNorm1d(channels), nn.ReLU())
        self.lstm = nn.LSTM(channels, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, classes)
        self.pool_before_lstm = pool_before_lstm

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h = self.front(x.transpose(1, 2)).transpose(1, 2)
        if self.pool_before_lstm:
            h = _mean_over_time(h, lengths)
        out, _ = self.lstm(h)
        return self.head(out).log_softmax(-1).transpose(0, 1)


class TCNTagger(nn.Module):
    """Dilated 1-d convolutions tagging every column; ``pool_after_first`` replaces the first
    block's output with its mean over time (the global-pooling bug in a convolutional model)."""

    def __init__(self, channels: int = 48, classes: int = 11, pool_after_first: bool = False) -> None:
        super().__init__()
        self.first = nn.Conv1d(10, channels, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Conv1d(channels, channels, 3, padding=d, dilation=d) for d in (1, 2, 4))
        self.head = nn.Conv1d(channels, classes, 1)
        self.pool_after_first = pool_after_first

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.first(x.transpose(1, 2)))
        if self.pool_after_first:
            h = _mean_over_time(h.transpose(1, 2), lengths).transpose(1, 2)
        for block in self.blocks:
            h = h + torch.relu(block(h))
        return self.head(h).transpose(1, 2)
