"""Structural probes: how much of the input of each sequence-consuming layer varies along time.

``SequenceProbes(model)`` finds the layers that consume sequences (recurrent layers,
attention and transformer layers, 1-d convolutions) and puts a forward pre-hook on
each. The hooks measure only while gradients are off or the layer is in eval mode
(validation batches), at most ``max_batches`` calls per evaluation, so nothing is
added to a training step; the sums stay on the device until ``read()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

SEQUENCE_LAYERS: tuple[type[nn.Module], ...] = (
    nn.RNNBase, nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.Conv1d,
)


@dataclass(frozen=True)
class Share:
    """One probed layer at one evaluation: the share of its input's variance that lies
    along time (within sequences), over ``batches`` calls; ``order``: its first call."""

    module: str
    share: float
    batches: int
    order: int


class SequenceProbes:
    """Forward pre-hooks on every sequence-consuming layer of ``model`` (see module docstring)."""

    def __init__(self, model: nn.Module, *, max_batches: int = 8) -> None:
        self.max_batches = max_batches
        self._handles: list[RemovableHandle] = []
        self._sums: dict[str, list[Any]] = {}  # name -> [within (tensor), total (tensor), calls, order]
        self._calls = 0
        inside_layer: set[int] = set()
        for module in model.modules():
            if isinstance(module, nn.TransformerEncoderLayer | nn.TransformerDecoderLayer):
                inside_layer.update(id(m) for m in module.modules() if m is not module)
        for name, module in model.named_modules():
            if isinstance(module, SEQUENCE_LAYERS) and id(module) not in inside_layer:
                self._handles.append(module.register_forward_pre_hook(self._hook(name or type(module).__name__),
                                                                      with_kwargs=True))

    @property
    def layers(self) -> int:
        """How many layers are probed."""
        return len(self._handles)

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            entry = self._sums.get(name)
            if entry is not None and entry[2] >= self.max_batches:
                return  # measured enough for this evaluation: a plain function call, nothing more
            if torch.is_grad_enabled() and module.training:
                return  # a training step: not measured
            with torch.no_grad():
                seq = _as_batch_time_features(module, args, kwargs)
                if seq is None:
                    return
                within, total = _variance_sums(*seq)
            if entry is None:
                self._sums[name] = [within, total, 1, self._calls]
            else:
                entry[0] = entry[0] + within
                entry[1] = entry[1] + total
                entry[2] += 1
            self._calls += 1
        return hook

    def read(self) -> list[Share]:
        """The shares measured since the last read, in the order the layers first ran (one
        host read for all of them), and start again."""
        sums, self._sums, self._calls = self._sums, {}, 0
        if not sums:
            return []
        names = sorted(sums, key=lambda n: sums[n][3])
        values = torch.stack([torch.stack([sums[n][0], sums[n][1]]).float().cpu() for n in names]).tolist()
        out = []
        for name, (within, total) in zip(names, values, strict=True):
            share = within / total if total > 0 else 0.0
            out.append(Share(name, share, int(sums[name][2]), int(sums[name][3])))
        return out

    def close(self) -> None:
        """Remove the hooks."""
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _as_batch_time_features(module: nn.Module, args: tuple[Any, ...],
                            kwargs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The layer's input as (batch, time, features) plus a (batch, time) validity mask."""
    x = args[0] if args else next((kwargs[k] for k in ("input", "query", "src", "tgt") if k in kwargs), None)
    mask = None
    if isinstance(x, nn.utils.rnn.PackedSequence):
        x, lengths = nn.utils.rnn.pad_packed_sequence(x, batch_first=True)
        mask = torch.arange(x.shape[1])[None, :] < lengths[:, None]
        return x, mask.to(x.device)
    if not isinstance(x, torch.Tensor) or x.is_nested or not x.is_floating_point():
        return None
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(0) if x.dim() == 2 else x
        return (x.transpose(1, 2), torch.ones(x.shape[0], x.shape[2], dtype=torch.bool, device=x.device)) \
            if x.dim() == 3 else None
    if x.dim() == 2:
        x = x.unsqueeze(0)
    elif x.dim() != 3:
        return None
    else:
        if isinstance(module, nn.RNNBase):
            batch_first = module.batch_first
        elif isinstance(module, nn.MultiheadAttention):
            batch_first = module.batch_first
            mask = kwargs.get("key_padding_mask", args[3] if len(args) > 3 else None)
        else:  # transformer layers
            batch_first = module.self_attn.batch_first  # type: ignore[union-attr]
            key = "src_key_padding_mask" if isinstance(module, nn.TransformerEncoderLayer) else "tgt_key_padding_mask"
            mask = kwargs.get(key)
        if not batch_first:
            x = x.transpose(0, 1)
    valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if isinstance(mask, torch.Tensor) and mask.shape == x.shape[:2]:
        valid = ~mask if mask.dtype == torch.bool else mask == 0
    return x, valid


def _variance_sums(x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared deviations from each sequence's own mean (within) and from the batch mean
    (total), over valid positions; sequences with fewer than 2 valid steps are left out."""
    x = x.float()
    w = valid.float()
    w = w * (w.sum(1, keepdim=True) >= 2)
    counts = w.sum(1, keepdim=True).clamp(min=1)
    mean_t = (x * w[..., None]).sum(1, keepdim=True) / counts[..., None]
    within = (((x - mean_t) ** 2) * w[..., None]).sum()
    grand = (x * w[..., None]).sum((0, 1)) / w.sum().clamp(min=1)
    total = (((x - grand) ** 2) * w[..., None]).sum()
    return within, total
