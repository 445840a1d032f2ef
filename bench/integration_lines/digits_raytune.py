"""examples/digits_mlp/train.py as Ray Tune has users write it: a trainable that reports each epoch
with ``tune.report``, a ``param_space`` and a ``Tuner`` with Optuna's TPE as the search algorithm
and ASHA as the scheduler (the pattern of docs.ray.io "Getting Started with Ray Tune" and
"Running Tune experiments with Optuna"). Every line added for the search is marked
``# integration``; counted by bench/integration_lines.py, not run (Ray is not installed here).
Keeping a checkpoint would add ``tune.Checkpoint`` lines.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from ray import tune  # integration
from ray.tune.schedulers import ASHAScheduler  # integration
from ray.tune.search.optuna import OptunaSearch  # integration
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


def main(args: argparse.Namespace, in_tune: bool = False) -> float:  # integration
    torch.manual_seed(args.seed)
    x_train, y_train, x_val, y_val = load_data()
    model = Net(args.hidden, args.dropout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    accuracy = 0.0
    for _epoch in range(args.epochs):
        model.train()
        for i in torch.randperm(len(x_train)).split(args.batch_size):
            loss = F.cross_entropy(model(x_train[i]), y_train[i])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            logits = model(x_val)
        accuracy = (logits.argmax(1) == y_val).float().mean().item()
        if in_tune:  # integration
            tune.report({"accuracy": accuracy})  # integration
    return accuracy


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--weight_decay", type=float, default=1e-4)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def trainable(config: dict) -> None:  # integration
    main(argparse.Namespace(**{**vars(parse_args([])), **config}), in_tune=True)  # integration


if __name__ == "__main__":
    tuner = tune.Tuner(  # integration
        trainable,  # integration
        param_space={  # integration
            "learning_rate": tune.loguniform(1e-4, 3e-1),  # integration
            "dropout": tune.uniform(0.0, 0.5),  # integration
            "weight_decay": tune.loguniform(1e-6, 1e-1),  # integration
            "hidden": tune.choice([32, 64, 128, 256]),  # integration
        },  # integration
        tune_config=tune.TuneConfig(  # integration
            metric="accuracy", mode="max", num_samples=20,  # integration
            search_alg=OptunaSearch(seed=0), scheduler=ASHAScheduler(grace_period=3),  # integration
        ),  # integration
    )  # integration
    print(tuner.fit().get_best_result().config)  # integration
