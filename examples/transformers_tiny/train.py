"""Tiny text classifier trained by a Hugging Face ``Trainer``, hooked into sweeper.

On its own:          python train.py --learning_rate 1e-3 --epochs 4
As a study:          sweeper run study.yaml            (from this folder; calls sweep() in-process)
As a command study:  sweeper run study_command.yaml    (runs `python train.py ...` per trial)
The best config:     sweeper export study.yaml && sweeper train results/transformers_tiny/best.yaml

The lines marked `# sweeper` are all it takes: 4 code lines in command mode, the import,
the callback, the `compute_metrics` it wraps (so that the class-collapse check sees the
logits) and the callback handed to the Trainer; `SweeperCallback(None)` finds the run of a
script that sweeper started, and does nothing when the script runs on its own. Function
mode adds 3: the `run` parameter and the function a study names (`task: train:sweep`).

Data (no download, no tokenizer): token-id sequences that `make_data` generates from a
seed. Each is [CLS] and 15 tokens over a 32-id vocabulary: ids 2-9 are "A" words, 10-17
"B" words, 18-31 neutral fillers; 3 to 11 (an odd number) of the 15 are A or B words and
the label says which of the two is in the majority (1: A, 0: B, about half of each). The model:
a 2-layer BERT built from a config (`BertForSequenceClassification`), trained from scratch.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from transformers import BertConfig, BertForSequenceClassification, EvalPrediction, Trainer, TrainingArguments, set_seed

from sweeper.integrations.transformers import SweeperCallback  # sweeper

VOCAB, LENGTH, PAD, CLS = 32, 16, 0, 1
A_WORDS, B_WORDS, FILLERS = (2, 10), (10, 18), (18, 32)  # id ranges [low, high)


def make_data(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """``n`` examples, the same for the same ``seed`` (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(n):
        label = int(torch.randint(2, (1,), generator=g))
        marked = 2 * int(torch.randint(1, 6, (1,), generator=g)) + 1  # 3, 5, ..., 11 A or B words
        majority = int(torch.randint(marked // 2 + 1, marked + 1, (1,), generator=g))
        major, minor = (A_WORDS, B_WORDS) if label == 1 else (B_WORDS, A_WORDS)
        tokens = torch.cat([torch.randint(*major, (majority,), generator=g),
                            torch.randint(*minor, (marked - majority,), generator=g),
                            torch.randint(*FILLERS, (LENGTH - 1 - marked,), generator=g)])
        tokens = tokens[torch.randperm(LENGTH - 1, generator=g)]
        examples.append({"input_ids": torch.cat([torch.tensor([CLS]), tokens]),
                         "attention_mask": torch.ones(LENGTH, dtype=torch.long), "labels": torch.tensor(label)})
    return examples


def accuracy(eval_pred: EvalPrediction) -> dict[str, float]:
    return {"accuracy": float((np.argmax(eval_pred.predictions, axis=-1) == eval_pred.label_ids).mean())}


def main(args: argparse.Namespace, run=None) -> float:  # sweeper (function mode)
    torch.set_num_threads(1)  # a model this small trains no faster on more threads, and slower on busy cores
    set_seed(args.seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=args.hidden, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=2 * args.hidden, max_position_embeddings=LENGTH, pad_token_id=PAD,
                        hidden_dropout_prob=args.dropout, attention_probs_dropout_prob=args.dropout, num_labels=2)
    model = BertForSequenceClassification(config)
    callback = SweeperCallback(run, keep_best=True)  # sweeper
    training_args = TrainingArguments(
        output_dir="trainer_output", learning_rate=args.learning_rate,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=256, eval_strategy="epoch",
        save_strategy="no", logging_strategy="epoch", report_to="none", use_cpu=True, disable_tqdm=True,
        seed=args.seed, data_seed=args.seed)
    trainer = Trainer(model=model, args=training_args, train_dataset=make_data(args.train_size, seed=0),
                      eval_dataset=make_data(500, seed=1),
                      compute_metrics=callback.compute_metrics(accuracy),  # sweeper
                      callbacks=[callback])  # sweeper
    trainer.train()
    return trainer.evaluate()["eval_accuracy"]


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
    return p.parse_args(argv)


def sweep(config: dict, run) -> float:  # sweeper (function mode): the study calls this with each trial's config
    return main(argparse.Namespace(**{**vars(parse_args([])), **config}), run)  # sweeper (function mode)


if __name__ == "__main__":
    main(parse_args())
