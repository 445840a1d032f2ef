"""Lightning through ``SweeperCallback``: the example as a study (function and command mode,
DDP on 2 CPU processes), what the callback feeds the monitor, and how its stops leave ``fit``."""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import optuna
import pytest
import torch
import torch.nn.functional as F
from optuna.trial import TrialState
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sweeper import EvalResult, Run
from sweeper.integrations.command import REPORT_ENV

from .conftest import REPO, run_cli

pl = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.plugins.precision import MixedPrecision  # noqa: E402

from sweeper.integrations.lightning import SweeperCallback  # noqa: E402

EXAMPLE = REPO / "examples" / "lightning_digits"
HEALTHY = "        return self.head(self.encoder(x))\n"
NO_GRAD = "        with torch.no_grad():\n            h = self.encoder(x)\n        return self.head(h)\n"
STOPPED = "sweeper: stopped by the health monitor"


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A copy of the example folder (script + study files), as a user's project."""
    shutil.copytree(EXAMPLE, tmp_path / "lightning_digits", ignore=shutil.ignore_patterns("results", "__pycache__"))
    return tmp_path / "lightning_digits"


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def _trials(folder: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder}/results/{name}/study.db").get_trials()


def _processes_in(folder: Path) -> list[int]:
    """Processes whose working directory is ``folder`` (the trial's ranks run there)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if Path(os.readlink(proc / "cwd")) == folder.resolve():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


# ---------------------------------------------------------------------- the example through the CLI


@pytest.mark.slow  # a study through the CLI, then sweeper train from the kept weights: CI runs it
def test_the_lightning_example_runs_as_a_study(example: Path) -> None:
    proc = run_cli("run", "study.yaml", "--trials", "2", "--set", "epochs=2", "--set", "learning_rate=0.003",
                   "--no-progress", cwd=example)
    assert proc.returncode == 0, proc.stderr
    trials = _trials(example, "lightning_digits")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        assert t.user_attrs.get("health.reason") is None
        assert set(t.intermediate_values) == {0, 1}  # one report per epoch, numbered by epoch
        assert t.value == pytest.approx(t.intermediate_values[1])  # the script returns the last accuracy
    assert max(t.value for t in trials) > 0.8  # it learns the digits

    # keep_best=True: the best trial's weights at its best epoch, and sweeper train starts from them
    best = max(trials, key=lambda t: t.value)
    folder = example / "results" / "lightning_digits"
    assert [p.name for p in (folder / "checkpoints").iterdir()] == [f"trial-{best.number}"]
    kept = torch.load(folder / "checkpoints" / f"trial-{best.number}" / "best.pt", weights_only=False)
    assert kept["metric"] == pytest.approx(max(best.intermediate_values.values()))
    trained = run_cli("train", "results/lightning_digits/best.yaml", "--from-checkpoint", "--set", "epochs=1",
                      "--set", "learning_rate=1e-9", cwd=example)
    assert trained.returncode == 0, trained.stderr
    import csv

    with (folder / "best.run" / "metrics.csv").open() as f:
        first = float(next(csv.DictReader(f))["accuracy"])
    assert first == pytest.approx(kept["metric"], abs=1e-6)  # at lr ~0: the kept model's accuracy


@pytest.mark.slow  # a study through the CLI (a process importing Lightning): CI runs it (make test-all)
def test_encoder_under_no_grad_is_pruned_as_dead_gradients(example: Path) -> None:
    _edit(example / "train.py", HEALTHY, NO_GRAD)
    proc = run_cli("run", "study.yaml", "--trials", "1", "--set", "epochs=5", "--no-progress", cwd=example)
    assert proc.returncode == 0, proc.stderr
    (t,) = _trials(example, "lightning_digits")
    assert t.state == TrialState.PRUNED
    assert t.user_attrs["health.reason"] == "dead_gradients"
    assert "encoder" in t.user_attrs["health.detail"]
    assert t.user_attrs["epochs_run"] < 5


def _ddp_study(example: Path, check_every: int = 5) -> None:
    """The command study on 2 CPU processes, with the monitor judging every ``check_every`` steps
    (an epoch is 12 steps a rank) so that verdicts come at step checks, not only at evaluations."""
    with (example / "study_command.yaml").open("a") as f:
        f.write(f"health:\n  check_every: {check_every}\n")


@pytest.mark.slow  # two processes that each import Lightning: ~45 s on 2 cores
def test_ddp_dead_gradients_stop_every_rank_with_one_reason(example: Path) -> None:
    # plain DDP refuses this bug itself at the second step (parameters that did not get a
    # gradient); find_unused_parameters=True, the usual way to silence that, lets it train on
    # without the encoder: the monitor's to catch
    _edit(example / "train.py", HEALTHY, NO_GRAD)
    _edit(example / "train.py", 'strategy="ddp" if', 'strategy="ddp_find_unused_parameters_true" if')
    # and rank 1 takes 3 s longer than rank 0 to exit: rank 0 must wait for it
    _edit(example / "train.py", "    main(parse_args())\n",
          "    try:\n        main(parse_args())\n    finally:\n        import os, time\n"
          "        rank = os.environ.get('LOCAL_RANK', '0')\n        time.sleep(3 if rank == '1' else 0)\n"
          "        with open('exits.txt', 'a') as f:\n            f.write(rank + '\\n')\n")
    _ddp_study(example)
    t0 = time.monotonic()
    proc = run_cli("run", "study_command.yaml", "--trials", "1", "--set", "devices=2", "--set", "epochs=4",
                   "--no-progress", cwd=example, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - t0 < 240  # no rank hung in a collective the other left
    (t,) = _trials(example, "lightning_digits_command")
    assert t.state == TrialState.PRUNED
    assert t.user_attrs["health.reason"] == "dead_gradients"
    assert "encoder" in t.user_attrs["health.detail"]
    log = (example / t.user_attrs["log"]).read_text()
    assert "GLOBAL_RANK: 1" in log  # it did run on two processes
    assert log.count(STOPPED) == 1  # rank 0 wrote the verdict, rank 1 stopped without writing
    assert "Traceback" not in log
    assert (example / "exits.txt").read_text() == "1\n0\n"  # rank 0 waited for rank 1 before it exited
    assert _processes_in(example) == []


@pytest.mark.slow  # as above
def test_ddp_a_verdict_on_one_rank_stops_both(example: Path) -> None:
    # rank 1 alone sees a NaN loss (added to its loss: the gradients, averaged over ranks, stay finite)
    _edit(example / "train.py", "        return F.cross_entropy(self(x), y)\n",
          "        loss = F.cross_entropy(self(x), y)\n"
          "        return loss + (float('nan') if self.global_rank == 1 else 0.0)\n")
    _ddp_study(example)
    proc = run_cli("run", "study_command.yaml", "--trials", "1", "--set", "devices=2", "--set", "epochs=4",
                   "--no-progress", cwd=example, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (t,) = _trials(example, "lightning_digits_command")
    assert t.state == TrialState.PRUNED
    assert t.user_attrs["health.reason"] == "nonfinite_loss"
    assert t.user_attrs["health.step"] < 12  # at a step check of the first epoch, before any evaluation
    assert t.intermediate_values == {}
    log = (example / t.user_attrs["log"]).read_text()
    assert log.count(STOPPED) == 1 and "Traceback" not in log
    assert _processes_in(example) == []


@pytest.mark.slow  # as above
def test_a_healthy_ddp_trial_reports_each_epoch_once(example: Path) -> None:
    proc = run_cli("run", "study_command.yaml", "--trials", "1", "--set", "devices=2", "--set", "epochs=2",
                   "--no-progress", cwd=example, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (t,) = _trials(example, "lightning_digits_command")
    assert t.state == TrialState.COMPLETE and t.user_attrs.get("health.reason") is None
    assert set(t.intermediate_values) == {0, 1}
    assert t.user_attrs["epochs_run"] == 2  # the report file had one line per epoch: rank 1 wrote none
    log = (example / t.user_attrs["log"]).read_text()
    assert "GLOBAL_RANK: 1" in log and log.count("accuracy ") == 1  # the script's last line, rank 0 only
    deadline = time.monotonic() + 10  # a finished rank 1 may take a moment more to exit
    while _processes_in(example) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_in(example) == []


# ---------------------------------------------------------------------- the callback in process


class Recorder:
    """A monitor that records what it is fed."""

    checks = 0

    def __init__(self) -> None:
        self.watched: tuple[Any, ...] = ()
        self.steps: list[tuple[float, float]] = []
        self.evals: list[tuple[int, dict[str, float], dict[str, torch.Tensor]]] = []

    def watch(self, model: nn.Module, optimizer: Any = None, *, scaler: Any = None) -> None:
        self.watched = (model, optimizer, scaler)

    def check_data(self, outputs: Any) -> None:
        pass

    def after_backward(self, loss: torch.Tensor, grad_norm: torch.Tensor | None = None, *,
                       step: int | None = None) -> None:
        assert grad_norm is not None
        self.steps.append((float(loss), float(grad_norm)))

    def after_eval(self, epoch: int, metrics: Any, outputs: Any = None) -> None:
        self.evals.append((epoch, dict(metrics), dict(outputs or {})))


def _norm(module: nn.Module) -> float:
    return float(torch.nn.utils.get_total_norm([p.grad for p in module.parameters() if p.grad is not None]))


class Tiny(pl.LightningModule):
    """A linear classifier that keeps, for each batch, its loss and the gradients' norm as
    ``backward`` left them (scaled under AMP) and as the optimizer applied them (clipped)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(8, 3)
        self.losses: list[float] = []
        self.scaled: list[tuple[float, float]] = []
        self.applied: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self.net(x).float(), y)
        self.losses.append(float(loss.detach()))
        return loss

    def on_after_backward(self) -> None:
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        self.scaled.append((_norm(self), scaler.get_scale() if scaler is not None else 1.0))

    def on_before_zero_grad(self, optimizer: Any) -> None:  # the previous step's gradients, clipped
        if any(p.grad is not None for p in self.parameters()):
            self.applied.append(_norm(self))

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        x, y = batch
        logits = self.net(x)
        self.log("accuracy", (logits.argmax(1) == y).float().mean())
        return {"logits": logits, "targets": y}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader(n: int = 16, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g) * 10  # large inputs: gradient norms far above the clip value
    return DataLoader(TensorDataset(x, torch.randint(0, 3, (n,), generator=g)), batch_size=4)


def _trainer(callback: SweeperCallback, **kwargs: Any) -> Any:
    kwargs.setdefault("num_sanity_val_steps", 0)
    return pl.Trainer(callbacks=[callback], accelerator="cpu", devices=1, enable_checkpointing=False, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, **kwargs)


def test_the_monitor_gets_unscaled_pre_clip_norms_once_per_optimizer_step() -> None:
    monitor = Recorder()
    run = Run({}, metric="accuracy", direction="maximize", monitor=monitor)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    module = Tiny()
    trainer = _trainer(SweeperCallback(run), max_epochs=2, gradient_clip_val=1e-3, accumulate_grad_batches=2,
                       plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)], limit_val_batches=0)
    trainer.fit(module, _loader(20))
    assert monitor.watched == (module, trainer.optimizers[0], scaler)
    # 5 batches an epoch, a step every 2 and one at the end of the epoch
    windows = [[0, 1], [2, 3], [4], [5, 6], [7, 8], [9]]
    assert len(module.losses) == 10 and len(monitor.steps) == len(windows)
    for (loss, norm), batches in zip(monitor.steps, windows, strict=True):
        # the step's loss: the mean of its batches (Lightning divides each by 2, AMP scales it)
        assert loss == pytest.approx(sum(module.losses[b] for b in batches) / len(batches), rel=1e-3)
        scaled, scale = module.scaled[batches[-1]]  # after the step's last backward
        assert scale == 2.0 ** 12
        assert norm == pytest.approx(scaled / scale, rel=1e-3)  # unscaled
        assert norm > 100 * 1e-3  # before clipping: the optimizer applied gradients clipped to 1e-3
    assert module.applied and all(n <= 1e-3 * 1.01 for n in module.applied)


def test_each_epoch_is_reported_with_its_validation_outputs_and_pruning_leaves_fit() -> None:
    class Pruner:
        def __init__(self) -> None:
            self.epochs: list[tuple[int, EvalResult]] = []

        def report(self, epoch: int, result: EvalResult) -> None:
            self.epochs.append((epoch, result))
            if epoch == 1:
                raise optuna.TrialPruned("underperforming")

    monitor, pruner = Recorder(), Pruner()
    run = Run({}, metric="accuracy", direction="maximize", reporter=pruner, monitor=monitor)
    trainer = _trainer(SweeperCallback(run), max_epochs=5, num_sanity_val_steps=2)
    with pytest.raises(optuna.TrialPruned):
        trainer.fit(Tiny(), _loader(), _loader(12, seed=1))
    assert trainer.current_epoch == 1  # stopped in the epoch the pruner stopped
    assert [e for e, _ in pruner.epochs] == [0, 1]  # the sanity check reported nothing
    assert [e for e, _, _ in monitor.evals] == [0, 1]
    _, metrics, outputs = monitor.evals[0]
    assert set(metrics) == {"accuracy"} and 0.0 <= metrics["accuracy"] <= 1.0
    assert outputs["logits"].shape == (12, 3) and outputs["targets"].shape == (12,)  # 3 batches, concatenated
    assert run.history[-1]["epoch"] == 1.0


def test_a_missing_metric_says_what_was_logged() -> None:
    run = Run({}, metric="f1", direction="maximize", monitor=Recorder())
    with pytest.raises(KeyError, match=r"the study's metric 'f1' was not logged; the trainer has accuracy"):
        _trainer(SweeperCallback(run), max_epochs=1).fit(Tiny(), _loader(), _loader(8))


def _example_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lightning_digits_train", EXAMPLE / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_a_run_the_example_trains_on_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REPORT_ENV, raising=False)
    for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):  # set by seed_everything: gone after the test
        monkeypatch.setenv(name, "")
    train = _example_module()
    assert SweeperCallback().run is None
    accuracy = train.main(train.parse_args(["--epochs", "1", "--hidden", "32"]))
    assert 0.0 < accuracy <= 1.0
