"""The Lightning digits example (examples/lightning_digits/train.py) searched with Ray Tune
and its Lightning report callback, written the way Ray documents it. Counted, not run (it
needs ray[tune]): the lines marked `# integration` (counted by bench/integration_lines.py)
are the ones a user adds for Ray Tune,
to compare with the `# sweeper` lines of the example and its study file.

Where the pattern comes from:

- ``ray.tune.integration.pytorch_lightning.TuneReportCheckpointCallback(metrics, filename,
  save_checkpoints, on)``, "PyTorch Lightning report and checkpoint callback"
  (https://docs.ray.io/en/latest/tune/api/doc/ray.tune.integration.pytorch_lightning.TuneReportCheckpointCallback.html):
  ``metrics`` maps the names reported to Tune to ``trainer.callback_metrics`` keys, reported
  at ``on="validation_end"``; ``save_checkpoints=False`` reports without checkpointing.
- Ray's guide "Using PyTorch Lightning with Tune" (doc/source/tune/examples/tune-pytorch-lightning):
  a function trainable ``train_mnist_tune(config, ...)`` that builds the ``Trainer`` with the
  callback; ``tune.Tuner(tune.with_resources(trainable, ...), param_space=...,
  tune_config=tune.TuneConfig(metric=..., mode=..., scheduler=ASHAScheduler(...),
  num_samples=...))``, ``tuner.fit()`` and ``results.get_best_result()``.
- Tune's default search is random; TPE would need ``search_alg=OptunaSearch()`` as well.
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from ray import tune  # integration
from ray.tune.integration.pytorch_lightning import TuneReportCheckpointCallback  # integration
from ray.tune.schedulers import ASHAScheduler  # integration
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


def main(args: argparse.Namespace, report_to_tune: bool = False) -> float:  # integration
    pl.seed_everything(args.seed, verbose=False)
    x_train, y_train, x_val, y_val = load_data()
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=args.batch_size, shuffle=True)
    val = DataLoader(TensorDataset(x_val, y_val), batch_size=512)
    model = DigitsModule(args.hidden, args.dropout, args.learning_rate, args.weight_decay)
    callbacks = ([TuneReportCheckpointCallback({"accuracy": "accuracy", "loss": "loss"},  # integration
                                               save_checkpoints=False, on="validation_end")]  # integration
                 if report_to_tune else [])  # integration
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
    p.add_argument("--search", action="store_true", help="run the Ray Tune search")  # integration
    return p.parse_args(argv)


def trainable(config: dict) -> None:  # integration
    main(argparse.Namespace(**{**vars(parse_args([])), **config}), report_to_tune=True)  # integration


def search() -> None:  # integration
    param_space = {  # integration
        "learning_rate": tune.loguniform(1e-4, 3e-1),  # integration
        "dropout": tune.uniform(0.0, 0.5),  # integration
        "weight_decay": tune.loguniform(1e-6, 1e-1),  # integration
        "hidden": tune.choice([32, 64, 128, 256]),  # integration
        "batch_size": 64,  # integration
        "epochs": 4,  # integration
    }  # integration
    tuner = tune.Tuner(  # integration
        tune.with_resources(trainable, {"cpu": 1}),  # integration
        param_space=param_space,  # integration
        tune_config=tune.TuneConfig(metric="accuracy", mode="max", num_samples=6,  # integration
                                    scheduler=ASHAScheduler(max_t=4, grace_period=1)),  # integration
    )  # integration
    best = tuner.fit().get_best_result()  # integration
    print(f"best accuracy {best.metrics['accuracy']:.4f}: {best.config}")  # integration


if __name__ == "__main__":
    args = parse_args()
    if args.search:  # integration
        search()  # integration
    else:  # integration
        main(args)
