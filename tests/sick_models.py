"""The write-ups' bugs, rebuilt on the ctc_digits recognizer (for health tests and benches)."""

from __future__ import annotations

import torch
from torch import nn

from sweeper.tasks import ctc_digits


def _encode(model: ctc_digits.CTCRecognizer, h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    packed = nn.utils.rnn.pack_padded_sequence(h, lengths.cpu().clamp(min=1), batch_first=True, enforce_sorted=False)
    out, _ = model.encoder(packed)
    out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=h.shape[1])
    return model.head(model.dropout(out)).log_softmax(-1).transpose(0, 1)


class NoGradEncoder(ctc_digits.CTCRecognizer):
    """The front end runs under ``torch.no_grad()``: its parameters never get a gradient."""

    def forward(self, x: torch.Tensor, widths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = ctc_digits.downsampled_length(widths, self.downsample)
        with torch.no_grad():
            h = self.frontend(x.transpose(1, 2)).transpose(1, 2)
        return _encode(self, h, lengths), lengths


class GlobalPoolBeforeLSTM(ctc_digits.CTCRecognizer):
    """``AdaptiveAvgPool1d(1)`` then expand: one vector repeated over every time step."""

    def forward(self, x: torch.Tensor, widths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = ctc_digits.downsampled_length(widths, self.downsample)
        h = self.frontend(x.transpose(1, 2))
        h = nn.functional.adaptive_avg_pool1d(h, 1).expand_as(h).transpose(1, 2)
        return _encode(self, self.dropout(h), lengths), lengths
