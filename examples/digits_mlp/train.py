"""Handwritten-digit classifier: a plain argparse training script, hooked into sweeper.

On its own:          python train.py --learning_rate 3e-3 --epochs 20
As a study:          sweeper run study.yaml            (from this folder; calls sweep() in-process)
As a command study:  sweeper run study_command.yaml    (runs `python train.py ...` per trial)
The best config:     sweeper export study.yaml && sweeper train results/digits_mlp/best.yaml
From its weights:    sweeper train results/digits_mlp/best.yaml --from-checkpoint

The lines marked `# sweeper` are all it takes (10 code lines in either mode): a `run`
handed to the loop, four calls on it, the function a study names (`task: train:sweep`, study.yaml)
and, for the command mode (study_command.yaml), the run picked up in `__main__`.
Data: scikit-learn's 1,797 8x8 digits (shipped with the package), a fixed 80/20 split.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn


class Net(nn.Module):
    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(dropout),
                                     nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def load_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(x))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def main(args: argparse.Namespace, run=None) -> float:  # sweeper
    torch.manual_seed(args.seed)
    x_train, y_train, x_val, y_val = load_data()
    model = Net(args.hidden, args.dropout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    if run is not None:  # sweeper
        run.watch(model, optimizer)  # sweeper
        run.keep_best(model)  # sweeper: the study keeps the best trials' weights (checkpoints.keep)
    accuracy = 0.0
    for epoch in range(args.epochs):
        model.train()
        for i in torch.randperm(len(x_train)).split(args.batch_size):
            loss = F.cross_entropy(model(x_train[i]), y_train[i])
            optimizer.zero_grad()
            loss.backward()
            if run is not None:  # sweeper
                run.after_backward(loss)  # sweeper
            optimizer.step()
        model.eval()
        with torch.no_grad():
            logits = model(x_val)
        accuracy = (logits.argmax(1) == y_val).float().mean().item()
        val_loss = F.cross_entropy(logits, y_val).item()
        print(f"epoch {epoch:>3} val_loss {val_loss:.4f} accuracy {accuracy:.4f}")
        if run is not None:  # sweeper
            run.report(epoch, {"accuracy": accuracy, "loss": val_loss}, {"logits": logits, "targets": y_val})  # sweeper
    return accuracy


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--weight_decay", type=float, default=1e-4)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def sweep(config: dict, run) -> float:  # sweeper (function mode): the study calls this with each trial's config
    return main(argparse.Namespace(**{**vars(parse_args([])), **config}), run)  # sweeper (function mode)


if __name__ == "__main__":
    from sweeper import current_run  # sweeper (command mode): a Run when sweeper started this script, else None

    main(parse_args(), current_run())  # sweeper (command mode)
