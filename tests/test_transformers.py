"""The Hugging Face ``Trainer`` integration (``sweeper.integrations.transformers``) with real
transformers: the example through the CLI, and what the callback hands the monitor."""

from __future__ import annotations

import importlib.util
import math
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState

from sweeper.integrations import Run
from sweeper.integrations.command import REPORT_ENV

from .conftest import REPO, run_cli

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    EvalPrediction,
    Trainer,
    TrainingArguments,
    set_seed,
)

from sweeper import HealthMonitor, HealthPruned  # noqa: E402
from sweeper.integrations.transformers import SweeperCallback  # noqa: E402

EXAMPLE = REPO / "examples" / "transformers_tiny"


@pytest.fixture(scope="module")
def ex() -> ModuleType:
    """The example's train.py, for its data and metric (imported under a name of its own)."""
    spec = importlib.util.spec_from_file_location("transformers_tiny_train", EXAMPLE / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """One torch thread here and in the CLI's processes: a model this small gains nothing from
    two, and two threads slow down tenfold when other jobs share the cores."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A copy of the example folder (script + study files), as a user's project."""
    shutil.copytree(EXAMPLE, tmp_path / "transformers_tiny",
                    ignore=shutil.ignore_patterns("results", "__pycache__", "trainer_output"))
    return tmp_path / "transformers_tiny"


class Recorder:
    """A monitor that keeps what it is handed."""

    def __init__(self) -> None:
        self.watched: tuple[Any, ...] | None = None
        self.steps: list[tuple[float, float | None]] = []
        self.evals: list[tuple[int, dict[str, float], dict[str, torch.Tensor]]] = []

    def watch(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
              scaler: Any = None) -> None:
        self.watched = (model, optimizer, scaler)

    def check_data(self, outputs: Mapping[str, torch.Tensor]) -> None:
        pass

    def after_backward(self, loss: torch.Tensor, grad_norm: torch.Tensor | None = None, *,
                       step: int | None = None) -> None:
        self.steps.append((float(loss), None if grad_norm is None else float(grad_norm)))

    def after_eval(self, epoch: int, metrics: Mapping[str, float],
                   outputs: Mapping[str, torch.Tensor] | None = None) -> None:
        self.evals.append((epoch, dict(metrics), dict(outputs or {})))


def _trainer(ex: ModuleType, tmp_path: Path, callback: SweeperCallback, *, compute_metrics: Any = None,
             train_size: int = 128, val: list[dict[str, torch.Tensor]] | None = None, **args: Any) -> Trainer:
    """The example's model and data on a small budget."""
    set_seed(0)
    config = BertConfig(vocab_size=ex.VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=ex.LENGTH, pad_token_id=ex.PAD, num_labels=2)
    defaults: dict[str, Any] = {
        "learning_rate": 1e-3, "num_train_epochs": 1, "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 256, "eval_strategy": "no", "save_strategy": "no", "logging_strategy": "no",
        "report_to": "none", "use_cpu": True, "disable_tqdm": True}
    training_args = TrainingArguments(output_dir=str(tmp_path / "out"), **{**defaults, **args})
    return Trainer(model=BertForSequenceClassification(config), args=training_args,
                   train_dataset=ex.make_data(train_size, seed=0),
                   eval_dataset=val if val is not None else ex.make_data(100, seed=1),
                   compute_metrics=compute_metrics, callbacks=[callback])


def _study(folder: Path, name: str = "transformers_tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder}/results/{name}/study.db")


# ---------------------------------------------------------------------- through the CLI


@pytest.mark.slow  # a study of the example through the CLI: CI runs it (make test-all)
def test_the_example_runs_as_a_study_with_healthy_trials(example: Path) -> None:
    proc = run_cli("run", "study.yaml", "--trials", "2", "--set", "epochs=2", "--no-progress", cwd=example)
    assert proc.returncode == 0, proc.stderr
    assert "2/2 finished" in proc.stdout
    trials = _study(example).get_trials()
    assert len(trials) == 2
    for t in trials:
        assert "health.reason" not in t.user_attrs, t.user_attrs
        assert set(t.params) == {"learning_rate", "weight_decay", "dropout", "hidden"}
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 2  # the median pruner waits for 3 completed trials
    for t in done:
        assert sorted(t.intermediate_values) == [0, 1]  # one report per epoch, numbered from 0
    assert max(t.value for t in done) > 0.8  # it learns which words are in the majority
    # keep_best=True: the best trial's weights at its best evaluation stay, the other's go
    best = max(done, key=lambda t: t.value)
    folder = example / "results" / "transformers_tiny"
    assert [p.name for p in (folder / "checkpoints").iterdir()] == [f"trial-{best.number}"]
    kept = torch.load(folder / "checkpoints" / f"trial-{best.number}" / "best.pt", weights_only=False)
    assert kept["metric"] == pytest.approx(max(best.intermediate_values.values()))
    assert "classifier.weight" in kept["model"]


@pytest.mark.slow  # a study through the CLI (a process importing transformers): CI runs it
def test_encoder_under_no_grad_is_pruned_as_dead_gradients(example: Path) -> None:
    script = example / "train.py"
    text = script.read_text()
    line = "    model = BertForSequenceClassification(config)\n"
    assert line in text
    # the bug: the encoder's forward runs under torch.no_grad(), so the embeddings and the
    # encoder get no gradient and only the pooler and the classifier learn
    script.write_text(text.replace(line, line + "    model.bert.encoder.forward = "
                                               "torch.no_grad()(model.bert.encoder.forward)\n"))
    proc = run_cli("run", "study.yaml", "--trials", "1", "--set", "epochs=2", "--no-progress", cwd=example)
    assert proc.returncode == 0, proc.stderr
    (t,) = _study(example).get_trials()
    assert t.state == TrialState.PRUNED
    assert t.user_attrs["health.reason"] == "dead_gradients"
    assert "bert.encoder.layer.0" in t.user_attrs["health.detail"]
    assert t.user_attrs["epochs_run"] == 1  # judged in the first epoch (step 31 of 32)


@pytest.mark.slow  # a process per trial, each importing transformers: CI runs it (make test-all)
def test_the_example_runs_as_a_command_study_and_on_its_own(example: Path) -> None:
    done = subprocess.run([sys.executable, "train.py", "--epochs", "1", "--train_size", "200"], cwd=example,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "'eval_accuracy'" in done.stdout  # without sweeper: SweeperCallback() found no run

    proc = run_cli("run", "study_command.yaml", "--trials", "2", "--set", "epochs=2", "--no-progress", cwd=example)
    assert proc.returncode == 0, proc.stderr
    trials = _study(example, "transformers_tiny_command").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        assert sorted(t.intermediate_values) == [0, 1] and "health.reason" not in t.user_attrs

    script = example / "train.py"
    line = "    model = BertForSequenceClassification(config)\n"
    script.write_text(script.read_text().replace(
        line, line + "    model.bert.encoder.forward = torch.no_grad()(model.bert.encoder.forward)\n"))
    (example / "study_command.yaml").write_text((example / "study_command.yaml").read_text().replace(
        "name: transformers_tiny_command", "name: broken"))
    proc = run_cli("run", "study_command.yaml", "--trials", "1", "--set", "epochs=3", "--no-progress", cwd=example)
    assert proc.returncode == 0, proc.stderr
    (t,) = _study(example, "broken").get_trials()
    assert t.state == TrialState.PRUNED and t.user_attrs["health.reason"] == "dead_gradients"


# ---------------------------------------------------------------------- what the monitor gets


@pytest.mark.parametrize("accumulation", [1, 2])
def test_the_monitor_gets_the_pre_clip_norm_and_the_loss_the_trainer_backpropagates(
        ex: ModuleType, tmp_path: Path, accumulation: int) -> None:
    recorder = Recorder()
    run = Run({}, metric="accuracy", direction="maximize", monitor=recorder)
    # clipped to 0.01 at every step: after clipping every norm is at most 0.01
    trainer = _trainer(ex, tmp_path, SweeperCallback(run), max_grad_norm=0.01, logging_strategy="steps",
                       logging_steps=1, gradient_accumulation_steps=accumulation)
    trainer.train()
    model, optimizer, scaler = recorder.watched or (None, None, None)
    assert model is trainer.model and scaler is None
    assert type(optimizer) is torch.optim.AdamW  # the torch optimizer, not accelerate's wrapper
    logged = [(h["loss"], h["grad_norm"]) for h in trainer.state.log_history if "grad_norm" in h]
    assert len(logged) == len(recorder.steps) == 128 // 16 // accumulation
    for (loss, norm), (logged_loss, logged_norm) in zip(recorder.steps, logged, strict=True):
        assert norm is not None and norm > 0.05  # not the clipped norm
        assert norm == pytest.approx(logged_norm, rel=1e-4)  # the Trainer logs the norm clipping returned
        assert loss == pytest.approx(logged_loss, rel=1e-4)


def test_without_clipping_the_monitor_reads_the_norm_itself(ex: ModuleType, tmp_path: Path) -> None:
    recorder = Recorder()
    run = Run({}, metric="accuracy", direction="maximize", monitor=recorder)
    trainer = _trainer(ex, tmp_path, SweeperCallback(run), max_grad_norm=0.0)
    trainer.train()
    assert len(recorder.steps) == 8
    assert all(norm is None for _, norm in recorder.steps)  # the monitor's optimizer pre-hook reads it


def test_under_a_grad_scaler_the_norm_is_unscaled(ex: ModuleType, tmp_path: Path) -> None:
    # a Trainer with fp16 on a GPU: accelerate's optimizer wrapper holds a GradScaler, the
    # gradients are scaled when the hooks see them and unscaled by the Trainer before it clips
    # (on the CPU accelerate uses none, so the steps are the Trainer's, written out)
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer

    Accelerator(cpu=True)
    set_seed(0)
    config = BertConfig(vocab_size=ex.VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=ex.LENGTH, num_labels=2)
    model = BertForSequenceClassification(config)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    optimizer = AcceleratedOptimizer(torch.optim.AdamW(model.parameters()), device_placement=False, scaler=scaler)
    recorder = Recorder()
    callback = SweeperCallback(Run({}, metric="accuracy", direction="maximize", monitor=recorder))
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_grad_norm=0.01, use_cpu=True, report_to="none")
    state, control = transformers.TrainerState(), transformers.TrainerControl()
    callback.on_train_begin(args, state, control, model=model, optimizer=optimizer)
    assert recorder.watched == (model, optimizer.optimizer, scaler)
    batch = ex.make_data(16, seed=0)
    model.train()
    callback.on_step_begin(args, state, control)
    loss = model(input_ids=torch.stack([b["input_ids"] for b in batch]),
                 labels=torch.stack([b["labels"] for b in batch])).loss
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer.optimizer)
    pre_clip = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
    callback.on_pre_optimizer_step(args, state, control)
    ((seen_loss, norm),) = recorder.steps
    assert seen_loss == pytest.approx(float(loss.detach())) and norm == pytest.approx(float(pre_clip), rel=1e-5)
    assert float(pre_clip) > 0.05  # neither the clipped norm nor the scaled one (x1024)
    callback.on_train_end(args, state, control)
    assert not callback._hooks


def test_more_than_one_training_process_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TrainingArguments, "world_size", property(lambda self: 2))  # as under torchrun -nproc 2
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none")
    callback = SweeperCallback(Run({}, metric="accuracy", direction="maximize", monitor=Recorder()))
    with pytest.raises(RuntimeError, match="the Trainer runs 2 processes"):
        callback.on_train_begin(args, transformers.TrainerState(), transformers.TrainerControl(),
                                model=torch.nn.Linear(2, 2))


@pytest.mark.parametrize("metric", ["accuracy", "eval_accuracy"])
def test_compute_metrics_hands_the_logits_and_labels_to_report(ex: ModuleType, tmp_path: Path, metric: str) -> None:
    recorder = Recorder()
    run = Run({}, metric=metric, direction="maximize", monitor=recorder)
    callback = SweeperCallback(run)
    seen: list[EvalPrediction] = []

    def metrics(p: EvalPrediction) -> dict[str, float]:
        seen.append(p)
        return ex.accuracy(p)

    trainer = _trainer(ex, tmp_path, callback, compute_metrics=callback.compute_metrics(metrics),
                       num_train_epochs=2, eval_strategy="epoch")
    trainer.train()
    assert [epoch for epoch, _, _ in recorder.evals] == [0, 1] and callback.evaluations == 2
    for (_, values, outputs), p in zip(recorder.evals, seen, strict=True):
        assert set(outputs) == {"logits", "targets"}
        assert torch.equal(outputs["logits"], torch.as_tensor(p.predictions))
        assert torch.equal(outputs["targets"], torch.as_tensor(p.label_ids))
        assert values[metric] == ex.accuracy(p)["accuracy"]
        assert {"accuracy", "loss"} <= set(values) and not {"epoch", "runtime", "eval_loss"} & set(values)
    assert [h["epoch"] for h in run.history] == [0.0, 1.0]
    trainer.evaluate()  # after train(): not a report
    assert len(recorder.evals) == 2 and len(seen) == 3


def test_several_eval_datasets_are_one_report_per_round(ex: ModuleType, tmp_path: Path) -> None:
    recorder = Recorder()
    run = Run({}, metric="b_accuracy", direction="maximize", monitor=recorder)
    callback = SweeperCallback(run)
    a, b = ex.make_data(60, seed=1), ex.make_data(40, seed=2)
    trainer = _trainer(ex, tmp_path, callback, compute_metrics=callback.compute_metrics(ex.accuracy),
                       num_train_epochs=2, eval_strategy="epoch")
    trainer.eval_dataset = {"a": a, "b": b}  # the Trainer evaluates them one by one: eval_a_*, then eval_b_*
    trainer.train()
    assert [epoch for epoch, _, _ in recorder.evals] == [0, 1]
    for _, values, outputs in recorder.evals:
        assert set(values) == {"a_loss", "a_accuracy", "b_loss", "b_accuracy"}
        assert torch.equal(outputs["targets"], torch.stack([x["labels"] for x in b]))  # the metric's dataset


def test_constant_logits_are_pruned_as_class_collapse_only_with_the_wrapper(ex: ModuleType, tmp_path: Path) -> None:
    # the bug: every validation sequence came out as padding, so the model's logits are the same
    # for all of them (training is healthy); the labels are half of each class
    val = ex.make_data(200, seed=1)
    for example in val:
        example["input_ids"] = torch.full_like(example["input_ids"], ex.PAD)
    for wrap in (True, False):
        run = Run({}, metric="accuracy", direction="maximize", monitor=HealthMonitor())
        callback = SweeperCallback(run)
        trainer = _trainer(ex, tmp_path, callback, train_size=256, val=val, num_train_epochs=4, eval_strategy="epoch",
                           per_device_train_batch_size=32,
                           compute_metrics=callback.compute_metrics(ex.accuracy) if wrap else ex.accuracy)
        if wrap:
            with pytest.raises(HealthPruned) as e:
                trainer.train()  # the verdict leaves the Trainer as it is
            assert e.value.verdict.reason.value == "class_collapse"
            assert "predictions use 1 of 2 label classes" in e.value.verdict.detail
            assert e.value.verdict.epoch == 1 and len(run.history) == 2  # at the second evaluation (patience 2)
        else:
            trainer.train()  # the metrics alone do not show it
            assert len(run.history) == 4


def test_a_metric_the_evaluation_lacks_is_one_error(ex: ModuleType, tmp_path: Path) -> None:
    run = Run({}, metric="f1", direction="maximize", monitor=Recorder())
    callback = SweeperCallback(run)
    trainer = _trainer(ex, tmp_path, callback, compute_metrics=callback.compute_metrics(ex.accuracy),
                       num_train_epochs=2, eval_strategy="epoch")
    with pytest.raises(KeyError, match=r"the evaluation gave loss, accuracy .*the study's metric is 'f1'"):
        trainer.train()
    assert not callback._hooks  # removed on the way out


def test_without_a_run_the_callback_does_nothing(ex: ModuleType, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REPORT_ENV, raising=False)
    callback = SweeperCallback()  # a script on its own: no sweeper run
    assert callback.run is None
    trainer = _trainer(ex, tmp_path, callback, compute_metrics=callback.compute_metrics(ex.accuracy),
                       eval_strategy="epoch")
    trainer.train()
    assert not callback._hooks and callback.evaluations == 0
    assert math.isfinite(trainer.evaluate()["eval_accuracy"])


def test_with_health_off_only_the_evaluations_are_reported(ex: ModuleType, tmp_path: Path) -> None:
    run = Run({}, metric="accuracy", direction="maximize", monitor=None)  # a study with `health: false`
    callback = SweeperCallback(run)
    hooked: list[int] = []
    callback.on_step_begin = lambda *a, **k: hooked.append(len(callback._hooks))  # type: ignore[method-assign]
    trainer = _trainer(ex, tmp_path, callback, compute_metrics=callback.compute_metrics(ex.accuracy),
                       eval_strategy="epoch")
    trainer.train()
    assert hooked and set(hooked) == {0}  # no forward or gradient hooks while it trained
    assert [h["epoch"] for h in run.history] == [0.0] and 0 < run.history[0]["accuracy"] <= 1
