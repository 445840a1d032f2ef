"""The Lightning digits example (examples/lightning_digits/train.py) searched with Optuna
and its Lightning pruning callback, written the way Optuna documents it. Counted, not run
(it needs optuna-integration): the lines marked `# integration` (counted by
bench/integration_lines.py) are the ones a user adds
for Optuna, to compare with the `# sweeper` lines of the example and its study file.

Where the pattern comes from:

- ``optuna_integration.PyTorchLightningPruningCallback(trial, monitor)``, "PyTorch Lightning
  callback to prune unpromising trials" (optuna-integration,
  optuna_integration/pytorch_lightning/pytorch_lightning.py; the API page
  https://optuna-integration.readthedocs.io/ lists it under PyTorch Lightning). It reports
  ``trainer.callback_metrics[monitor]`` at ``on_validation_end`` and raises
  ``optuna.TrialPruned`` when the pruner says so; nothing else about the run.
- optuna-examples, pytorch/pytorch_lightning_simple.py: an ``objective(trial)`` that suggests
  the parameters, builds the ``Trainer`` with the callback, fits and returns
  ``trainer.callback_metrics["val_acc"].item()``; ``optuna.create_study(...)`` and
  ``study.optimize(objective, n_trials=...)`` in ``__main__``.
- Under DDP (optuna-examples, pytorch/pytorch_lightning_ddp.py) the study needs RDB storage
  and the callback's ``check_pruned()`` must be called after ``fit``; not shown here.
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import optuna  # integration
import torch
import torch.nn.functional as F
from optuna_integration import PyTorchLightningPruningCallback  # integration
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class DigitsModule(pl.LightningModule):
    def __init__(self, hidden: int, dropout: float, learning_rate: float, weight_decay: float) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(dropout),
                                     nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        accuracy = (logits.argmax(1) == y).float().mean()
        self.log_dict({"accuracy": accuracy, "loss": F.cross_entropy(logits, y)}, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.learning_rate,
                                 weight_decay=self.hparams.weight_decay)


def load_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(x))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def main(args: argparse.Namespace, trial: optuna.Trial | None = None) -> float:  # integration
    pl.seed_everything(args.seed, verbose=False)
    x_train, y_train, x_val, y_val = load_data()
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=args.batch_size, shuffle=True)
    val = DataLoader(TensorDataset(x_val, y_val), batch_size=512)
    model = DigitsModule(args.hidden, args.dropout, args.learning_rate, args.weight_decay)
    callbacks = [PyTorchLightningPruningCallback(trial, monitor="accuracy")] if trial is not None else []  # integration
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator=args.accelerator, devices=args.devices,
                         strategy="ddp" if args.devices > 1 else "auto",
                         callbacks=callbacks,  # integration
                         enable_checkpointing=False, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(model, train, val)
    accuracy = float(trainer.callback_metrics["accuracy"])
    if trainer.is_global_zero:
        print(f"accuracy {accuracy:.4f} after {args.epochs} epochs")
    return accuracy


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--weight_decay", type=float, default=1e-4)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--devices", type=int, default=1, help="processes; more than 1 trains with DDP")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--search", action="store_true", help="run the Optuna study")  # integration
    return p.parse_args(argv)


def objective(trial: optuna.Trial) -> float:  # integration
    config = {  # integration
        "learning_rate": trial.suggest_float("learning_rate", 1e-4, 3e-1, log=True),  # integration
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),  # integration
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True),  # integration
        "hidden": trial.suggest_categorical("hidden", [32, 64, 128, 256]),  # integration
        "batch_size": 64,  # integration
        "epochs": 4,  # integration
    }  # integration
    return main(argparse.Namespace(**{**vars(parse_args([])), **config}), trial)  # integration


def search() -> None:  # integration
    study = optuna.create_study(  # integration
        study_name="lightning_digits", storage="sqlite:///lightning_digits.db", load_if_exists=True,  # integration
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=0),  # integration
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1))  # integration
    study.optimize(objective, n_trials=6)  # integration
    print(f"best accuracy {study.best_value:.4f}: {study.best_params}")  # integration


if __name__ == "__main__":
    args = parse_args()
    if args.search:  # integration
        search()  # integration
    else:  # integration
        main(args)
