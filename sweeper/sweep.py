"""Create or resume an Optuna study and run trials until the budget is met."""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import optuna
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from . import _optuna_warnings  # noqa: F401  (silences Optuna's experimental warnings)
from .budget_lock import BudgetLock
from .errors import SweepFailed, UserError, first_line, save_traceback
from .health import HealthMonitor, HealthPruned, diagnose
from .integrations import CommandTask, FunctionTask, load_task
from .integrations.trackers import MLflowTracker, TensorBoardTracker, Trackers, tensorboard_available
from .interrupts import INTERRUPT, handling
from .pruning import GuardedHyperband, ProgressPruner, WarmupGuard
from .sampling import FeasibleTPESampler
from .space import trial_config
from .spec import StudySpec, grid_error, grid_space, make_callback
from .storage import check_writable, open_storage, sqlite_path
from .tasks.base import EvalResult, format_value, show_value
from .train import fit
from .workers import DASK_WORKER_ENV

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
INHERITED_ATTRS = ("error", "traceback", "health.reason", "health.detail", "health.step", "epochs_run", "history",
                   "checkpoint")
FAILURE_LIMIT_MIN_TRIALS = 5  # the failure-rate stop looks at no fewer trials than this
WAIT_POLL = 0.5  # seconds between looks at the study while the rest of the budget is in flight
CHECKPOINT_FILE = "best.pt"  # a trial's best weights, in its checkpoint folder
OOM = "oom"  # health.reason of a trial that ran out of accelerator memory


def results_dir(spec: StudySpec, study_name: str | None = None) -> Path:
    return Path("results") / (study_name or spec.name)


def make_sampler(spec: StudySpec, *, seed_offset: int = 0,
                 pinned: frozenset[str] = frozenset()) -> optuna.samplers.BaseSampler:
    """The spec's sampler; the seed is offset by the trials already in the study so a
    resumed study does not replay the proposals of its first invocation. A grid (over the
    searched keys not ``pinned`` by ``--set``) keeps its seed: the point a trial runs is an
    index into the shuffled grid, which every worker and every resume must share."""
    s = spec.sampler
    if s.type == "grid":
        return optuna.samplers.GridSampler(grid_space(spec.params, pinned), seed=s.seed)
    seed = None if s.seed is None else (s.seed + seed_offset) % 2**32  # numpy takes 32-bit seeds
    opts = dict(s.options)
    if s.type == "tpe":
        # constant liar: a trial still running counts as a poor result, so concurrent workers
        # do not propose the same point; with one worker there is nothing running to lie about
        opts.setdefault("constant_liar", True)
        return FeasibleTPESampler(seed=seed, **opts)
    if s.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.type == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, **opts)
    if s.type == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, **opts)
    if s.type == "gp":
        return optuna.samplers.GPSampler(seed=seed, **opts)
    raise UserError(f"unknown sampler {s.type!r}")  # pragma: no cover - spec rejects it first


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The spec's performance pruner. None judges a trial inside its learning-rate warmup;
    median and percentile compare trials at equal progress (see ``sweeper.pruning``)."""
    p, opts = spec.pruner, dict(spec.pruner.options)
    if p.type == "median":
        return ProgressPruner(50.0, **opts)
    if p.type == "percentile":
        return ProgressPruner(**opts)
    if p.type == "hyperband":
        return GuardedHyperband(**opts)
    if p.type == "successive_halving":
        return WarmupGuard(optuna.pruners.SuccessiveHalvingPruner(**opts))
    if p.type == "threshold":
        return WarmupGuard(optuna.pruners.ThresholdPruner(**opts))
    return optuna.pruners.NopPruner()


class TrialReporter:
    """Reports each epoch's metric to the trial and prunes when the pruner says so. Every
    metric of the epoch is kept on the trial (user attribute ``history``, one dict per
    epoch) and passed to the study's trackers."""

    def __init__(self, trial: optuna.Trial, metric: str, pruner_name: str, trackers: Trackers | None = None) -> None:
        self.trial = trial
        self.metric = metric
        self.pruner_name = pruner_name
        self.trackers = trackers
        self.epochs = 0
        self.history: list[dict[str, float]] = []

    def report(self, epoch: int, result: EvalResult) -> None:
        with INTERRUPT.shielded():  # storage writes: a signal waits until they are done
            self._report(epoch, result)

    def _report(self, epoch: int, result: EvalResult) -> None:
        if self.metric not in result.metrics:
            raise KeyError(f"metric {self.metric!r} not reported; the task reports: {', '.join(result.metrics)}")
        value = result.metrics[self.metric]
        self.epochs = epoch + 1
        metrics = {k: float(v) for k, v in result.metrics.items()}
        self.history.append({"epoch": epoch, **metrics})
        self.trial.set_user_attr("history", self.history)
        if self.trackers is not None:
            self.trackers.epoch(epoch, metrics)
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            detail = (f"the {self.pruner_name} pruner stopped it after epoch {epoch} "
                      f"at {self.metric}={value:.4g}")
            self.trial.set_user_attr("health.reason", "underperforming")
            self.trial.set_user_attr("health.detail", detail)
            self.trial.set_user_attr("health.step", epoch)
            self.trial.set_user_attr("epochs_run", self.epochs)
            raise optuna.TrialPruned(f"underperforming: {detail}")


@dataclass
class SweepOutcome:
    """What one invocation did, and the state of the study afterwards."""

    study: optuna.Study
    ran: int = 0
    interrupted: bool = False
    stopped: str | None = None
    ended_by: str | None = None  # a callback ended the study before its budget (not a failure)
    diagnosis: str | None = None
    counts: dict[str, int] = field(default_factory=dict)


def state_counts(study: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def trial_line(t: FrozenTrial, spec: StudySpec) -> str:
    """One progress line: number, state, metric, key params, pruning reason, seconds."""
    value = "-" if t.value is None else f"{t.value:.4f}"
    params = " ".join(f"{k}={format_value(t.user_attrs.get('config', t.params).get(k))}" for k in spec.params)
    seconds = trial_seconds(t) or 0.0
    cell = t.user_attrs.get("ablation.cell")
    where = f"[{cell} seed {t.user_attrs.get('ablation.seed')}] " if cell is not None else ""
    line = f"trial {t.number:>4} {t.state.name:<8} {where}{spec.metric}={value:<7} {params}  {seconds:5.1f}s"
    reason = t.user_attrs.get("health.reason")
    if reason:
        line += f"  [{reason}: {t.user_attrs.get('health.detail', '')}]"
    elif t.state == TrialState.FAIL and "error" in t.user_attrs:
        where = f"; traceback in {t.user_attrs['traceback']}" if t.user_attrs.get("traceback") else ""
        line += f"  [error: {t.user_attrs['error']}{where}]"
    return line


def trial_seconds(t: FrozenTrial) -> float | None:
    if t.datetime_complete is None or t.datetime_start is None:
        return None
    return (t.datetime_complete - t.datetime_start).total_seconds()


class Sweep:
    """One worker's run over a study: create or load, loop until the budget is met."""

    def __init__(
        self,
        spec: StudySpec,
        *,
        overrides: Mapping[str, Any] | None = None,
        storage: str | None = None,
        study_name: str | None = None,
        trials: int | None = None,
        out: TextIO | None = None,
        progress: bool | None = None,
        worker: int = 0,
    ) -> None:
        self.spec = spec
        self.overrides = dict(overrides or {})
        self.storage_url = storage or spec.default_storage()
        self.study_name = study_name or spec.name
        self.budget = trials if trials is not None else spec.budget.trials
        if self.budget < 1:
            raise UserError(f"--trials must be an integer >= 1, got {self.budget}")
        if spec.sampler.type == "grid" and (
                error := grid_error(spec.params, self.budget, frozenset(self.overrides))):
            given = ([f"--trials {trials}"] if trials is not None else []) + [
                f"--set {k}={show_value(v)}" for k, v in self.overrides.items() if k in spec.params]
            raise UserError(f"{spec.path}: {error}" + (f" (with {' '.join(given)})" if given else ""))
        self.task = load_task(spec)
        self.out = out
        self.progress = progress
        self.results = results_dir(spec, study_name)
        self.worker = worker
        self._current_trial_id: int | None = None
        self._lock: BudgetLock | None = None

    # -- setup

    def check(self) -> None:
        """Everything that can be refused is refused here, before anything is written."""
        check_writable(self.results, what="results folder")
        db = sqlite_path(self.storage_url)
        if db is not None:
            check_writable(db, what="storage file")

    def open(self) -> optuna.Study:
        self.check()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = open_storage(self.storage_url, self.spec.heartbeat, retries=self.spec.budget.retries)
        existing = _existing_study(storage, self.study_name)
        if existing is not None and existing.direction.name.lower() != self.spec.direction:
            was = existing.direction.name.lower()
            raise UserError(f"study {self.study_name!r} in {self.storage_url} was created to {was} "
                            f"its metric; {self.spec.path} says {self.spec.direction}")
        n_before = 0 if existing is None else len(existing.get_trials(deepcopy=False))
        study = optuna.create_study(
            storage=storage, study_name=self.study_name, direction=self.spec.direction,
            # workers get their own seeds: the same seed would propose the same points
            sampler=self.make_sampler(n_before + 7919 * self.worker), pruner=self.make_pruner(),
            load_if_exists=True,
        )
        if existing is None:
            study.set_user_attr("sweeper.task", self.spec.task)
            study.set_user_attr("sweeper.metric", self.spec.metric)
            study.set_user_attr("sweeper.spec", str(self.spec.path))
        self.results.mkdir(parents=True, exist_ok=True)
        return study

    # -- the trial

    def objective(self, trial: optuna.Trial) -> float:
        if self._lock is not None:
            self._lock.release()  # the trial is RUNNING in the storage: the budget count may go on
        self._current_trial_id = trial._trial_id
        for key in INHERITED_ATTRS:  # a retry copies the failed trial's attributes: start clean
            if trial.user_attrs.get(key) is not None:
                trial.set_user_attr(key, None)
        state, value = "FAIL", None
        trackers: Trackers | None = None
        try:
            config = self.trial_config(trial)
            trial.set_user_attr("config", config)
            trial.set_user_attr("worker", worker_id())
            if os.environ.get("CUDA_VISIBLE_DEVICES"):
                trial.set_user_attr("gpu", os.environ["CUDA_VISIBLE_DEVICES"])
            if os.environ.get(DASK_WORKER_ENV):  # placed by `--dask`: the Dask worker that started this process
                trial.set_user_attr("dask_worker", os.environ[DASK_WORKER_ENV])
            trackers = self.trackers()
            trackers.start(trial.number, config)
            reporter = TrialReporter(trial, self.spec.metric, self.spec.pruner.type, trackers)
            value = self._train(trial, config, reporter)
            state = "COMPLETE"
            return value
        except optuna.TrialPruned:  # HealthPruned is one
            state = "PRUNED"
            raise
        except Exception:
            self._keep_traceback(trial)
            raise
        finally:
            if trackers is not None:
                with contextlib.suppress(Exception):  # the trial's outcome must be recorded whatever a tracker does
                    trackers.end(state, value, trial.user_attrs)

    def _train(self, trial: optuna.Trial, config: dict[str, Any], reporter: TrialReporter) -> float:
        monitor = self.monitor(config)
        out_of_memory: str | None = None
        keep = self.checkpoint_dir(trial.number)
        try:
            with INTERRUPT.training():
                if isinstance(self.task, CommandTask):  # health checks run inside the script
                    log = self.results / "logs" / f"trial-{trial.number}.log"
                    log.parent.mkdir(parents=True, exist_ok=True)
                    trial.set_user_attr("log", str(log))
                    result = self.task.train(config, reporter, health=self.health_options(config), log_path=log,
                                             checkpoint_dir=keep)
                elif isinstance(self.task, FunctionTask):
                    result = self.task.train(config, reporter, monitor=monitor, checkpoint_dir=keep)
                else:
                    result = fit(config, self.task, reporter, monitor=monitor, best_dir=keep)
        except HealthPruned as e:
            v = e.verdict
            trial.set_user_attr("health.reason", v.reason.value)
            trial.set_user_attr("health.detail", v.detail)
            trial.set_user_attr("health.step", v.step)
            # the epoch it was judged in ran (in full at an evaluation, in part at a step);
            # a verdict on the data before the first step ran none
            assert monitor is not None
            trial.set_user_attr("epochs_run", reporter.epochs + (1 if monitor.steps_seen else 0))
            trial.set_constraint("health", 1.0)  # infeasible: TPE ranks it below every healthy trial
            raise
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("error", "interrupted")
            raise
        except Exception as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {first_line(e)}")
            trial.set_user_attr("epochs_run", reporter.epochs)
            if not is_out_of_memory(e):
                raise
            out_of_memory = first_line(e)
            trial.set_user_attr("health.reason", OOM)
            trial.set_user_attr("health.detail", f"out of memory in epoch {reporter.epochs}: {out_of_memory}")
        if out_of_memory is not None:
            # raised outside the handler: the original traceback holds the trial's model,
            # optimizer and batches, and must go before the memory can be released
            raise TrialOutOfMemory(out_of_memory)
        trial.set_user_attr("epochs_run", result.epochs_run)
        trial.set_user_attr("best_epoch", result.best_epoch)
        if math.isnan(result.best):
            raise ValueError(f"the run ended with {self.spec.metric}=nan")
        if keep is not None and (keep / CHECKPOINT_FILE).is_file():
            trial.set_user_attr("checkpoint", str(keep / CHECKPOINT_FILE))
        return result.best

    def _keep_traceback(self, trial: optuna.Trial) -> None:
        """The failed trial's traceback, in a file its trial line names (not on the terminal)."""
        path = self.results / "logs" / f"trial-{trial.number}.traceback"
        if save_traceback(path):
            trial.set_user_attr("traceback", str(path))
        if trial.user_attrs.get("error") is None:  # failed outside the training itself
            e = sys.exc_info()[1]
            trial.set_user_attr("error", f"{type(e).__name__}: {first_line(e)}" if e else "unknown error")

    def checkpoint_dir(self, number: int) -> Path | None:
        """Where trial ``number`` keeps its best weights (None when the study keeps none)."""
        if self.spec.checkpoints.keep < 1:
            return None
        return self.results / "checkpoints" / f"trial-{number}"

    def trackers(self) -> Trackers:
        """A fresh set of the study's trackers for one trial."""
        t = self.spec.trackers
        out: list[Any] = []
        if t.tensorboard is True or (t.tensorboard == "auto" and tensorboard_available()):
            out.append(TensorBoardTracker(self.results / "tb", self.spec.metric))
        if t.mlflow:
            uri = t.mlflow_uri or f"sqlite:///{(self.results / 'mlflow.db').resolve()}"
            out.append(MLflowTracker(uri, t.mlflow_experiment or self.study_name, self.study_name))
        return Trackers(out, warn=lambda msg: print(f"sweeper: warning: {msg}", file=sys.stderr))

    def prune_checkpoints(self, study: optuna.Study) -> None:
        """Keep the checkpoints of the ``checkpoints.keep`` best completed trials; remove the
        rest (pruned, failed, outranked). Every worker does this after each of its trials:
        removing what is already gone is harmless, so workers need not agree on who removes."""
        folder = self.results / "checkpoints"
        if self.spec.checkpoints.keep < 1 or not folder.is_dir():
            return
        from .export import best_trials

        kept = {f"trial-{t.number}" for t in best_trials(study, self.spec.direction, self.spec.checkpoints.keep)}
        running = {f"trial-{t.number}" for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        for d in folder.iterdir():
            if d.is_dir() and d.name.startswith("trial-") and d.name not in kept | running:
                shutil.rmtree(d, ignore_errors=True)

    def trial_config(self, trial: optuna.Trial) -> dict[str, Any]:
        """The config a trial trains: sampled from the space, with the ``--set`` overrides."""
        return trial_config(self.spec, trial, self.overrides)

    def before_trial(self, study: optuna.Study) -> None:
        """Called before each trial is asked for (a subclass may enqueue trials here)."""

    def make_sampler(self, seed_offset: int) -> optuna.samplers.BaseSampler:
        return make_sampler(self.spec, seed_offset=seed_offset, pinned=frozenset(self.overrides))

    def make_pruner(self) -> optuna.pruners.BasePruner:
        return make_pruner(self.spec)

    def health_options(self, config: Mapping[str, Any]) -> dict[str, Any] | None:
        """The health monitor's options for a trial (None when the study turns health off)."""
        h = self.spec.health
        if not h.enabled:
            return None
        return {"detectors": h.detectors, "check_every": h.check_every,
                "warmup_epochs": float(config.get("warmup_epochs") or 0.0), "metric": self.spec.metric,
                "chance_metric": self.task.chance_metric}

    def monitor(self, config: Mapping[str, Any]) -> HealthMonitor | None:
        options = self.health_options(config)
        return None if options is None else HealthMonitor(**options)

    # -- the loop

    def run(self) -> SweepOutcome:
        # signals are taken over before the storage is touched: from here a Ctrl-C waits for
        # the write it lands in, and the loop stops at its next safe point
        with handling():
            return self._run()

    def _run(self) -> SweepOutcome:
        study = self.open()
        self._lock = BudgetLock(self.storage_url, self.study_name)
        outcome = SweepOutcome(study=study)
        bar = _progress_bar(self.budget, len(study.get_trials(deepcopy=False, states=FINISHED)), self.progress)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=self.spec.budget.retries)
        started = time.monotonic()
        failed: list[FrozenTrial] = []
        finished_here: list[FrozenTrial] = []
        diagnosing = self.spec.health.diagnose_after > 0
        noted = False

        def on_trial(study: optuna.Study, t: FrozenTrial) -> None:
            nonlocal diagnosing, noted
            outcome.ran += 1
            self.prune_checkpoints(study)
            if t.state == TrialState.FAIL:
                failed.append(t)
            if t.state in FINISHED:
                bar.update(1)
            bar.write(trial_line(t, self.spec), file=self.out or sys.stdout)
            if t.state in FINISHED and diagnosing:
                # this invocation's trials only: after a fix, the same command must be able to go on
                finished_here.append(t)
                found = diagnose(finished_here, self.spec.health.diagnose_after)
                first_code = finished_here[0].user_attrs.get("health.reason")
                if t.user_attrs.get("health.reason") != first_code:
                    diagnosing = False  # the early trials no longer share one code
                elif found is not None and found.bug:
                    outcome.diagnosis, diagnosing = found.message, False
                elif found is not None and not noted:
                    noted = True
                    bar.write(f"note: {found.message}", file=self.out or sys.stdout)

        search = [self.spec.path.parent, Path.cwd()]
        user_callbacks = [_UserCallback(c.ref, make_callback(c, search)) for c in self.spec.callbacks]
        try:
            while True:
                INTERRUPT.check()
                if self.spec.budget.timeout is not None and time.monotonic() - started >= self.spec.budget.timeout:
                    outcome.stopped = f"timeout of {self.spec.budget.timeout:g}s reached"
                    break
                if outcome.diagnosis is not None:
                    outcome.stopped = outcome.diagnosis
                    break
                if outcome.ran >= FAILURE_LIMIT_MIN_TRIALS and len(failed) * 2 > outcome.ran:
                    outcome.stopped = f"{len(failed)} of {outcome.ran} trials failed: {error_summary(failed)}"
                    break
                # count and claim under the lock every worker of this storage shares; the
                # objective releases it as soon as its trial is RUNNING
                self._lock.acquire()
                try:
                    optuna.storages.fail_stale_trials(study)
                    # one read for both counts: between two reads a trial could go from RUNNING to
                    # COMPLETE and be in neither, and another worker would start a trial too many
                    states = [t.state for t in study.get_trials(deepcopy=False)]
                    finished = sum(s in FINISHED for s in states)
                    if finished >= self.budget:
                        break
                    running = states.count(TrialState.RUNNING)
                    in_flight = finished + running >= self.budget
                    if not in_flight:
                        self.before_trial(study)
                        n_failed = len(failed)
                        study.optimize(self.objective, n_trials=1, catch=(Exception,),
                                       callbacks=[on_trial, *user_callbacks])
                        if len(failed) > n_failed:
                            release_accelerator_memory()
                        if getattr(study, "_stop_flag", False):  # a callback called study.stop()
                            outcome.ended_by = "a callback called study.stop()"
                            break
                finally:
                    self._lock.release()
                if in_flight:
                    # the rest of the budget is in flight: wait for those trials to finish,
                    # or for their heartbeat to go stale (then they are failed and retried)
                    time.sleep(WAIT_POLL)
        except KeyboardInterrupt:
            outcome.interrupted = True
            self._requeue_interrupted(study, retry)
        finally:
            bar.close()
            self._lock.close()
        outcome.counts = state_counts(study)
        return outcome

    def _requeue_interrupted(self, study: optuna.Study,
                             retry: Callable[[optuna.Study, FrozenTrial], None]) -> None:
        """Fail the trial an interrupt cut short (if Optuna has not) and queue its retry."""
        if self._current_trial_id is None:
            return
        storage = study._storage
        t = storage.get_trial(self._current_trial_id)
        if t.state == TrialState.RUNNING:
            storage.set_trial_user_attr(t._trial_id, "error", "interrupted")
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            t = storage.get_trial(t._trial_id)
        if t.state == TrialState.FAIL and t.user_attrs.get("error") == "interrupted":
            retry(study, t)


class _UserCallback:
    """An Optuna callback from the study file; if it raises, the sweep stops with one line
    naming it (the trial it was called for is already recorded)."""

    def __init__(self, ref: str, fn: Callable[[optuna.Study, FrozenTrial], None]) -> None:
        self.ref = ref
        self.fn = fn

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        try:
            self.fn(study, trial)
        except Exception as e:
            raise SweepFailed(f"callback {self.ref} raised after trial {trial.number}: "
                              f"{type(e).__name__}: {first_line(e)}") from None


def _existing_study(storage: BaseStorage, name: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


class _DropInterruptTracebacks(logging.Filter):
    """Optuna's "trial failed" record and its traceback stay off the terminal: Ctrl-C is not
    an error (sweeper prints how to resume), and a failed trial gets sweeper's own line with
    its error, its traceback kept in ``results/NAME/logs/trial-N.traceback``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.exc_info


_OPTIMIZE_LOGGER = logging.getLogger("optuna.study._optimize")
if not any(isinstance(f, _DropInterruptTracebacks) for f in _OPTIMIZE_LOGGER.filters):
    _OPTIMIZE_LOGGER.addFilter(_DropInterruptTracebacks())


class TrialOutOfMemory(RuntimeError):
    """The trial ran out of accelerator memory (raised without the traceback that holds its tensors)."""


def is_out_of_memory(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def release_accelerator_memory() -> None:
    """Return a failed trial's cached GPU memory to the driver, so the next trial (or a process
    sharing the GPU) can have it."""
    import torch

    gc.collect()  # the failed trial's model and optimizer may sit in reference cycles
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def error_summary(failed: Sequence[FrozenTrial], kinds: int = 3) -> str:
    """The failures grouped by error, most frequent first: 'ValueError: x (trials 0, 1, 2)'."""
    groups: dict[str, list[int]] = {}
    for t in failed:
        groups.setdefault(str(t.user_attrs.get("error", "unknown error")), []).append(t.number)
    ranked = sorted(groups.items(), key=lambda kv: -len(kv[1]))
    parts = [f"{error} (trial{'s' if len(ns) > 1 else ''} {', '.join(map(str, ns))})" for error, ns in ranked[:kinds]]
    if len(ranked) > kinds:
        parts.append(f"and {len(ranked) - kinds} other errors")
    return "; ".join(parts)


def worker_id() -> str:
    """Which machine and process ran a trial: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _progress_bar(total: int, initial: int, enabled: bool | None) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=min(initial, total), unit="trial", desc="trials",
                disable=None if enabled is None else not enabled, file=sys.stderr, dynamic_ncols=True)


def run_sweep(spec: StudySpec, **kwargs: Any) -> SweepOutcome:
    """Run ``spec`` to its trial budget (see ``Sweep`` for the keyword arguments)."""
    return Sweep(spec, **kwargs).run()


__all__ = ["Sweep", "SweepFailed", "SweepOutcome", "TrialOutOfMemory", "TrialReporter", "error_summary", "make_pruner",
           "make_sampler", "run_sweep"]
