"""Handwritten-digit classifier as a LightningModule and a Trainer, hooked into sweeper.

On its own:          python train.py --learning_rate 3e-3 --epochs 10
As a study:          sweeper run study.yaml            (from this folder; calls sweep() in-process)
As a command study:  sweeper run study_command.yaml    (runs `python train.py ...` per trial)
The same, with DDP:  sweeper run study_command.yaml --set devices=2   (2 CPU processes, gloo)

The lines marked `# sweeper` are all it takes: 3 code lines in command mode (the import,
the callback in the Trainer, the outputs the class-collapse check reads), 3 more in
function mode (the `run` handed to main, and the function a study names, `task:
train:sweep` in study.yaml). In command mode the callback picks up
`sweeper.current_run()` by itself, and does nothing when there is no run.
Data: scikit-learn's 1,797 8x8 digits (shipped with the package), a fixed 80/20 split.
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sweeper.integrations.lightning import SweeperCallback  # sweeper


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

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        x, y = batch
        logits = self(x)
        accuracy = (logits.argmax(1) == y).float().mean()
        self.log_dict({"accuracy": accuracy, "loss": F.cross_entropy(logits, y)}, sync_dist=True)
        return {"logits": logits, "targets": y}  # sweeper: what the class-collapse check reads

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


def main(args: argparse.Namespace, run=None) -> float:  # sweeper (function mode)
    pl.seed_everything(args.seed, verbose=False)
    x_train, y_train, x_val, y_val = load_data()
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=args.batch_size, shuffle=True)
    val = DataLoader(TensorDataset(x_val, y_val), batch_size=512)
    model = DigitsModule(args.hidden, args.dropout, args.learning_rate, args.weight_decay)
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator=args.accelerator, devices=args.devices,
                         strategy="ddp" if args.devices > 1 else "auto",
                         callbacks=[SweeperCallback(run, keep_best=True)],  # sweeper
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
    return p.parse_args(argv)


def sweep(config: dict, run) -> float:  # sweeper (function mode): the study calls this with each trial's config
    return main(argparse.Namespace(**{**vars(parse_args([])), **config}), run)  # sweeper (function mode)


if __name__ == "__main__":
    main(parse_args())
