"""examples/digits_mlp/train.py as plain Optuna has users write it: an objective that builds the
config from ``trial.suggest_*``, reports each epoch and asks the pruner, and the study around it
(the pattern of Optuna's pruning tutorial, optuna.readthedocs.io "Efficient Optimization
Algorithms" and optuna-examples/pytorch/pytorch_simple.py). Every line added for the search is
marked ``# integration``; counted by bench/integration_lines.py, not run. There is no health
check, no reason for a prune and no kept checkpoint: those would be more lines.
"""

from __future__ import annotations

import argparse

import optuna  # integration
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


def main(args: argparse.Namespace, trial: optuna.Trial | None = None) -> float:  # integration
    torch.manual_seed(args.seed)
    x_train, y_train, x_val, y_val = load_data()
    model = Net(args.hidden, args.dropout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    accuracy = 0.0
    for epoch in range(args.epochs):
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
        if trial is not None:  # integration
            trial.report(accuracy, epoch)  # integration
            if trial.should_prune():  # integration
                raise optuna.TrialPruned()  # integration
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


def objective(trial: optuna.Trial) -> float:  # integration
    config = {  # integration
        "learning_rate": trial.suggest_float("learning_rate", 1e-4, 3e-1, log=True),  # integration
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),  # integration
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True),  # integration
        "hidden": trial.suggest_categorical("hidden", [32, 64, 128, 256]),  # integration
    }  # integration
    return main(argparse.Namespace(**{**vars(parse_args([])), **config}), trial)  # integration


if __name__ == "__main__":
    study = optuna.create_study(  # integration
        direction="maximize", storage="sqlite:///digits.db", study_name="digits", load_if_exists=True,  # integration
        sampler=optuna.samplers.TPESampler(seed=0),  # integration
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=3),  # integration
    )  # integration
    study.optimize(objective, n_trials=20)  # integration
    print(study.best_params)  # integration
