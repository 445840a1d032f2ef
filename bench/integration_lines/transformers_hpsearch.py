"""examples/transformers_tiny/train.py as transformers' own ``Trainer.hyperparameter_search``
has users write it with the Optuna backend: a ``model_init(trial)`` that builds a fresh model
per trial (the model's own hyperparameters suggested there, as ``hp_space`` can only set
``TrainingArguments`` fields), an ``hp_space(trial)`` returning the ``TrainingArguments``
values, a ``compute_objective(metrics)`` and the ``hyperparameter_search`` call, whose extra
keyword arguments go to ``optuna.create_study`` (sampler, pruner). The pattern of the
transformers documentation, "Hyperparameter search" (docs/source/en/hpo_train.md,
huggingface.co/docs/transformers/hpo_train) and the docstring of
``Trainer.hyperparameter_search``. Every line added for the search is marked
``# integration``; counted by bench/integration_lines.py. It runs (transformers and Optuna
are installed): ``python bench/integration_lines/transformers_hpsearch.py --trials 6``.

What the Trainer does with it: after each evaluation it reports ``compute_objective`` to the
trial at ``state.global_step`` (so a pruner's warm-up is counted in optimizer steps, here 32 an
epoch) and raises ``optuna.TrialPruned`` when the pruner says so. There is no health check and
no reason for a prune; the study lives in memory unless ``storage=`` and ``study_name=`` are
passed (more lines), and there is no export of the best config to train again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import optuna  # integration
import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments, set_seed

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "transformers_tiny"))
from train import LENGTH, PAD, VOCAB, accuracy, make_data  # the example's data and metric


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)  # a model this small trains no faster on more threads, and slower on busy cores
    set_seed(args.seed)

    def model_init(trial: optuna.Trial | None) -> BertForSequenceClassification:  # integration
        hidden = trial.suggest_categorical("hidden", [16, 32, 64]) if trial is not None else args.hidden  # integration
        dropout = trial.suggest_float("dropout", 0.0, 0.3) if trial is not None else args.dropout  # integration
        config = BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=2 * hidden, max_position_embeddings=LENGTH, pad_token_id=PAD,
                            hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, num_labels=2)
        return BertForSequenceClassification(config)  # integration

    def hp_space(trial: optuna.Trial) -> dict[str, float]:  # integration
        return {  # integration
            "learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True),  # integration
            "weight_decay": trial.suggest_float("weight_decay", 1e-4, 1e-1, log=True),  # integration
        }  # integration

    def compute_objective(metrics: dict[str, float]) -> float:  # integration
        return metrics["eval_accuracy"]  # integration

    training_args = TrainingArguments(
        output_dir="trainer_output", learning_rate=args.learning_rate,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=256, eval_strategy="epoch",
        save_strategy="no", logging_strategy="epoch", report_to="none", use_cpu=True, disable_tqdm=True,
        seed=args.seed, data_seed=args.seed)
    trainer = Trainer(model_init=model_init, args=training_args,  # integration
                      train_dataset=make_data(args.train_size, seed=0), eval_dataset=make_data(500, seed=1),
                      compute_metrics=accuracy)
    best = trainer.hyperparameter_search(  # integration
        direction="maximize", backend="optuna", hp_space=hp_space, n_trials=args.trials,  # integration
        compute_objective=compute_objective, sampler=optuna.samplers.TPESampler(seed=0),  # integration
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2 * 32),  # integration
    )  # integration
    print(f"best trial {best.run_id}: accuracy={best.objective:.4f} {best.hyperparameters}")  # integration


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--warmup_steps", type=int, default=0)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--train_size", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trials", type=int, default=6)  # integration
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
