"""Search quality against plain Optuna at equal budgets: the best metric each search
finds, against the epochs it consumed.

Arms, each over several sampler seeds, each with the same trial budget and epochs per
trial on the same study:

- ``sweeper``: sweeper's default, a ``Sweep`` of the study file (TPE, its pruner,
  health pruning);
- ``optuna``: what an Optuna user runs: ``optuna.create_study`` with TPE and the same
  pruner, an objective that trains the same ``fit()`` and reports each epoch, no health;
- ``random``: random search, no pruning;
- ``hyperband``: TPE with Optuna's ``HyperbandPruner`` (min resource 1 epoch, max the
  trial's epochs, reduction factor 3).

A seed's anytime curve is the best metric of its completed trials after each trial,
against the epochs consumed so far (pruned trials count the epochs they ran). The
curves are drawn (median and quartiles over seeds) to ``search_efficiency.png``; the
table gives final best (median [quartiles]), epochs used, and the epochs each arm
needed to reach plain Optuna's median final best (median over seeds; a seed that never
reaches it counts as never). ``runs.json`` keeps every trial's parameters and per-epoch
values, so a pruning rule can be replayed on the recorded curves without training again.

    python bench/search_efficiency.py                      # the three studies, 5 seeds, 2 jobs
    python bench/search_efficiency.py --studies classify_many --seeds 3 --arms sweeper,optuna
    python bench/search_efficiency.py --studies classify_many --arms sweeper --sweeper sampler.n_startup_trials=5 \
        --against bench/results/search_efficiency/runs.json --out /tmp/variant
    python bench/search_efficiency.py --replot bench/results/search_efficiency/runs.json
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import io
import json
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
ARMS = ("sweeper", "optuna", "random", "hyperband")
ARM_LABELS = {"sweeper": "sweeper (TPE, its pruner, health)", "optuna": "plain Optuna (TPE, same pruner)",
              "random": "random, no pruning", "hyperband": "Optuna TPE + Hyperband"}
ARM_COLORS = {"sweeper": "#d62728", "optuna": "#1f77b4", "random": "#7f7f7f", "hyperband": "#2ca02c"}
# budgets scaled so the whole bench (3 studies x 4 arms x 5 seeds) fits in about 40
# minutes on 2 cores: (trials, epochs per trial)
BUDGETS = {"ctc_wide": (16, 5), "classify_many": (40, 30), "binary_imbalanced": (24, 12)}


@dataclasses.dataclass
class Job:
    study: str
    arm: str
    seed: int
    trials: int
    epochs: int
    pruner: tuple[tuple[str, Any], ...] = ()
    sweeper: tuple[tuple[str, Any], ...] = ()  # sampler.KEY / pruner.KEY for the sweeper arm alone


def load(job: Job) -> Any:
    from sweeper.spec import Budget, load_spec

    spec = load_spec(job.study, REPO / "studies")
    budget = Budget(trials=job.trials, epochs=job.epochs, timeout=None, retries=spec.budget.retries)
    pruner = dataclasses.replace(spec.pruner, options={**spec.pruner.options, **dict(job.pruner)})
    sampler = dataclasses.replace(spec.sampler, seed=job.seed)
    if job.arm == "sweeper":
        for key, value in job.sweeper:
            section, _, option = key.partition(".")
            if section == "pruner" and option == "type":
                pruner = dataclasses.replace(pruner, type=value)
            elif section == "pruner":
                pruner = dataclasses.replace(pruner, options={**pruner.options, option: value})
            else:
                sampler = dataclasses.replace(sampler, options={**sampler.options, option: value})
    return dataclasses.replace(spec, budget=budget, pruner=pruner, sampler=sampler)


def run_job(job: Job) -> dict[str, Any]:
    """One search; returns its trials in the order they ran."""
    import optuna
    import torch

    torch.set_num_threads(1)  # two jobs share the two cores
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load(job)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        stopped = None
        try:
            if job.arm == "sweeper":
                study, stopped = _sweeper(spec)
            else:
                study = _plain(spec, job)
        finally:
            os.chdir(cwd)
        trials = [_row(t) for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)]
    return {"study": job.study, "arm": job.arm, "seed": job.seed, "trials_budget": job.trials,
            "epochs_per_trial": job.epochs, "direction": spec.direction, "metric": spec.metric,
            "wall_s": time.perf_counter() - started, "stopped": stopped, "trials": trials}


def _row(t: Any) -> dict[str, Any]:
    return {"number": t.number, "state": t.state.name, "value": t.value,
            "epochs": int(t.user_attrs.get("epochs_run") or len(t.intermediate_values)),
            "reason": t.user_attrs.get("health.reason"), "error": t.user_attrs.get("error"),
            # each evaluated epoch's metric, so pruning rules can be replayed on the curves
            "values": [round(v, 6) for _, v in sorted(t.intermediate_values.items())],
            "params": t.params}


def _sweeper(spec: Any) -> tuple[Any, str | None]:
    from sweeper.sweep import Sweep

    outcome = Sweep(spec, out=io.StringIO(), progress=False).run()
    return outcome.study, outcome.stopped


def optuna_pruner(spec: Any) -> Any:
    """Optuna's own pruner for the study's ``pruner:`` section, as an Optuna user builds it."""
    import optuna

    opts = dict(spec.pruner.options)
    kinds = {"median": optuna.pruners.MedianPruner, "percentile": optuna.pruners.PercentilePruner,
             "hyperband": optuna.pruners.HyperbandPruner, "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
             "threshold": optuna.pruners.ThresholdPruner}
    return kinds[spec.pruner.type](**opts) if spec.pruner.type in kinds else optuna.pruners.NopPruner()


class _Reporter:
    """The objective an Optuna user writes around ``fit()``: report, ask, prune."""

    def __init__(self, trial: Any) -> None:
        self.trial, self.epochs = trial, 0

    def report(self, epoch: int, result: Any) -> None:
        import optuna

        value = result.metrics[self.trial.study.user_attrs["metric"]]
        self.epochs = epoch + 1
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            self.trial.set_user_attr("epochs_run", self.epochs)
            raise optuna.TrialPruned()


def _plain(spec: Any, job: Job) -> Any:
    import optuna

    from sweeper.integrations import load_task
    from sweeper.space import trial_config
    from sweeper.train import fit

    task = load_task(spec)
    opts = dict(spec.sampler.options)
    pruner: optuna.pruners.BasePruner
    if job.arm == "random":
        sampler: optuna.samplers.BaseSampler = optuna.samplers.RandomSampler(seed=job.seed)
        pruner = optuna.pruners.NopPruner()
    else:
        sampler = optuna.samplers.TPESampler(seed=job.seed, **opts)
        pruner = (optuna.pruners.HyperbandPruner(min_resource=1, max_resource=job.epochs, reduction_factor=3)
                  if job.arm == "hyperband" else optuna_pruner(spec))
    study = optuna.create_study(direction=spec.direction, sampler=sampler, pruner=pruner)
    study.set_user_attr("metric", spec.metric)

    def objective(trial: optuna.Trial) -> float:
        reporter = _Reporter(trial)
        result = fit(trial_config(spec, trial), task, reporter)
        trial.set_user_attr("epochs_run", result.epochs_run)
        return result.best

    study.optimize(objective, n_trials=job.trials, catch=(Exception,))
    return study


# -- analysis


def curve(run: dict[str, Any]) -> list[tuple[int, float]]:
    """(epochs consumed, best completed value so far) after each trial."""
    sign = 1.0 if run["direction"] == "minimize" else -1.0
    best, used, points = math.inf, 0, [(0, math.nan)]
    for t in run["trials"]:
        used += t["epochs"]
        if t["state"] == "COMPLETE" and t["value"] is not None and not math.isnan(t["value"]):
            best = min(best, sign * t["value"])
        points.append((used, sign * best if best < math.inf else math.nan))
    return points


def best_at(points: Sequence[tuple[int, float]], epochs: float) -> float:
    value = math.nan
    for used, v in points:
        if used > epochs:
            break
        value = v
    return value


def epochs_to_reach(points: Sequence[tuple[int, float]], target: float, minimize: bool) -> float:
    for used, v in points:
        if not math.isnan(v) and (v <= target if minimize else v >= target):
            return float(used)
    return math.inf


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """Median and quartiles (linear interpolation); NaN when there is nothing."""
    xs = sorted(v for v in values if not math.isnan(v))
    if not xs:
        return math.nan, math.nan, math.nan
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[1], q[2]


def median_inf(values: Sequence[float]) -> float:
    """Median that keeps ``inf`` (a seed that never got there) as a value."""
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        return math.nan
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per study: per arm, final best quartiles, epochs used, epochs to plain Optuna's median."""
    out: dict[str, dict[str, Any]] = {}
    for study in dict.fromkeys(r["study"] for r in runs):
        mine = [r for r in runs if r["study"] == study]
        minimize = mine[0]["direction"] == "minimize"
        by_arm = {arm: [r for r in mine if r["arm"] == arm] for arm in ARMS if any(r["arm"] == arm for r in mine)}
        finals = {arm: [curve(r)[-1][1] for r in rs] for arm, rs in by_arm.items()}
        target = quartiles(finals["optuna"])[1] if "optuna" in finals else math.nan
        rows: dict[str, Any] = {}
        for arm, rs in by_arm.items():
            curves = [curve(r) for r in rs]
            used = [c[-1][0] for c in curves]
            reach = [epochs_to_reach(c, target, minimize) for c in curves]
            reasons: Counter[str] = Counter()
            for r in rs:
                reasons.update(t["reason"] or t["state"].lower() for t in r["trials"])
            rows[arm] = {"final": quartiles(finals[arm]), "finals": finals[arm], "epochs": quartiles(used),
                         "reach": median_inf(reach), "reach_each": reach, "reached": sum(x < math.inf for x in reach),
                         "seeds": len(rs), "outcomes": dict(reasons),
                         "completed": statistics.median(sum(t["state"] == "COMPLETE" for t in r["trials"]) for r in rs),
                         "p_worse": p_worse(finals[arm], finals.get("optuna", []), minimize)}
        out[study] = {"metric": mine[0]["metric"], "minimize": minimize, "target": target, "arms": rows,
                      "trials": mine[0]["trials_budget"], "epochs_per_trial": mine[0]["epochs_per_trial"]}
    return out


def p_worse(mine: Sequence[float], plain: Sequence[float], minimize: bool) -> float:
    """One-sided Mann-Whitney U: the chance of final bests at least this much worse than
    plain Optuna's if the two searches were equally good (NaN finals count as worst)."""
    from scipy.stats import mannwhitneyu

    if not mine or not plain:
        return math.nan
    worst = math.inf if minimize else -math.inf
    a = [worst if math.isnan(v) else v for v in mine]
    b = [worst if math.isnan(v) else v for v in plain]
    return float(mannwhitneyu(a, b, alternative="greater" if minimize else "less").pvalue)


def fmt(v: float, digits: int = 4) -> str:
    return "-" if math.isnan(v) else ("never" if math.isinf(v) else f"{v:.{digits}f}")


def table(summary: dict[str, dict[str, Any]]) -> str:
    lines = []
    for study, s in summary.items():
        plain = s["arms"].get("optuna")
        lines.append(f"\n{study}: {s['trials']} trials x {s['epochs_per_trial']} epochs "
                     f"({s['trials'] * s['epochs_per_trial']} epochs unpruned), best {s['metric']} "
                     f"({'lower' if s['minimize'] else 'higher'} is better); plain Optuna's median final best "
                     f"{fmt(s['target'])}\n")
        lines.append(f"| arm | final best: median [q1, q3] | completed | epochs used: median [q1, q3] "
                     f"| epochs to reach {fmt(s['target'])} (seeds that did) | vs plain Optuna | p worse |")
        lines.append("|---|---|---|---|---|---|---|")
        for arm, r in s["arms"].items():
            q1, med, q3 = r["final"]
            e1, em, e3 = r["epochs"]
            ratio = ("-" if plain is None or math.isinf(r["reach"]) or math.isinf(plain["reach"])
                     else f"{r['reach'] / plain['reach']:.2f}")
            reach = "never" if math.isinf(r["reach"]) else f"{r['reach']:.0f}"
            lines.append(f"| {arm} | {fmt(med)} [{fmt(q1)}, {fmt(q3)}] | {r['completed']:g} "
                         f"| {em:.0f} [{e1:.0f}, {e3:.0f}] | {reach} ({r['reached']}/{r['seeds']}) | {ratio} "
                         f"| {'-' if arm == 'optuna' else fmt(r['p_worse'], 2)} |")
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    studies = list(dict.fromkeys(r["study"] for r in runs))
    fig, axes = plt.subplots(1, len(studies), figsize=(5.2 * len(studies), 4.0), squeeze=False)
    for ax, study in zip(axes[0], studies, strict=True):
        mine = [r for r in runs if r["study"] == study]
        top = max(curve(r)[-1][0] for r in mine)
        grid = np.linspace(0, top, 200)
        for arm in ARMS:
            curves = [curve(r) for r in mine if r["arm"] == arm]
            if not curves:
                continue
            ys = np.array([[best_at(c, x) for x in grid] for c in curves])
            # a seed with no completed trial yet has no best: the band starts where every seed has one
            ok = ~np.isnan(ys).any(axis=0)
            # past its own last epoch a seed keeps its final best (it used less of the budget)
            ends = max(c[-1][0] for c in curves)
            ok &= grid <= ends
            if not ok.any():
                continue
            q1, med, q3 = np.percentile(ys[:, ok], [25, 50, 75], axis=0)
            ax.plot(grid[ok], med, color=ARM_COLORS[arm], label=ARM_LABELS[arm], lw=1.8)
            ax.fill_between(grid[ok], q1, q3, color=ARM_COLORS[arm], alpha=0.15, lw=0)
        ax.set_title(f"{study} ({len({r['seed'] for r in mine})} seeds)")
        ax.set_xlabel("epochs consumed")
        ax.set_ylabel(f"best validation {mine[0]['metric']}")
        if mine[0]["direction"] == "minimize":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("best metric against epochs consumed: median over seeds, band = quartiles", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    if sys.platform == "linux":  # a killed bench takes its workers with it
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_all(jobs: list[Job], n_jobs: int, log: Callable[[str], None], partial: Path) -> list[dict[str, Any]]:
    runs = []
    # the slowest first, so two workers do not end with one long job alone
    cost = {"ctc_wide": 2.5, "binary_imbalanced": 0.3, "classify_many": 0.05}  # rough seconds an epoch
    order = sorted(jobs, key=lambda j: -(j.trials * j.epochs * cost.get(j.study, 1.0)))
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx, initializer=_init_worker) as pool:
        futures = {pool.submit(run_job, j): j for j in order}
        for f in cf.as_completed(futures):
            r = f.result()
            runs.append(r)
            with partial.open("a") as fh:  # what is done survives an interrupted bench
                fh.write(json.dumps(r) + "\n")
            c = curve(r)
            log(f"{r['study']:<18} {r['arm']:<10} seed {r['seed']}: best {fmt(c[-1][1])} after "
                f"{c[-1][0]} epochs, {r['wall_s']:.0f}s  [{len(runs)}/{len(jobs)}]"
                + (f" stopped: {r['stopped']}" if r.get("stopped") else ""))
    return sorted(runs, key=lambda r: (r["study"], ARMS.index(r["arm"]), r["seed"]))


def _pairs(parser: argparse.ArgumentParser, flag: str, text: str) -> tuple[tuple[str, Any], ...]:
    """``KEY=VALUE,...`` with YAML values; anything else is a usage error."""
    items = [kv for kv in text.split(",") if kv]
    for kv in items:
        if "=" not in kv:
            parser.error(f"{flag}: {kv!r} is not KEY=VALUE")
    return tuple((k, yaml.safe_load(v)) for k, v in (kv.split("=", 1) for kv in items))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", default=",".join(BUDGETS))
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="searches run at once (one torch thread each)")
    parser.add_argument("--trials", type=int, help="trial budget for every study (default: per study)")
    parser.add_argument("--epochs", type=int, help="epochs per trial for every study (default: per study)")
    parser.add_argument("--pruner", default="", help="KEY=VALUE,... over every study's pruner options")
    parser.add_argument("--sweeper", default="",
                        help="sampler.KEY=VALUE,pruner.KEY=VALUE,... for the sweeper arm alone (a variant of its "
                             "defaults against unchanged baselines); pruner.type=percentile switches the pruner")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "search_efficiency")
    parser.add_argument("--replot", type=Path, help="a runs.json to summarize and draw again")
    parser.add_argument("--against", type=Path,
                        help="a runs.json of an earlier run on this machine: its runs of the studies and arms not run "
                             "now join the summary (a sweeper variant judged against the same plain Optuna runs)")
    args = parser.parse_args()

    started = time.perf_counter()
    if args.replot:
        runs = json.loads(args.replot.read_text())
    else:
        studies = [s for s in args.studies.split(",") if s]
        arms = [a for a in args.arms.split(",") if a]
        for a in arms:
            if a not in ARMS:
                parser.error(f"--arms: unknown arm {a!r}; allowed: {', '.join(ARMS)}")
        pruner, sweeper = _pairs(parser, "--pruner", args.pruner), _pairs(parser, "--sweeper", args.sweeper)
        for key, _ in sweeper:
            if key.partition(".")[0] not in ("sampler", "pruner") or not key.partition(".")[2]:
                parser.error(f"--sweeper: {key!r} is not sampler.KEY or pruner.KEY")
        jobs = [Job(s, a, seed, args.trials or BUDGETS.get(s, (20, 6))[0], args.epochs or BUDGETS.get(s, (20, 6))[1],
                    pruner, sweeper)
                for s in studies for a in arms for seed in range(args.first_seed, args.first_seed + args.seeds)]
        args.out.mkdir(parents=True, exist_ok=True)
        partial = args.out / "runs.partial.jsonl"
        partial.unlink(missing_ok=True)
        runs = run_all(jobs, args.jobs, lambda line: print(line, flush=True), partial)
        partial.unlink()
        if args.against:
            ran = {(r["study"], r["arm"]) for r in runs}
            runs += [r for r in json.loads(args.against.read_text())
                     if r["study"] in studies and (r["study"], r["arm"]) not in ran]
            runs.sort(key=lambda r: (r["study"], ARMS.index(r["arm"]), r["seed"]))
        (args.out / "runs.json").write_text(json.dumps(runs, indent=1))
    summary = summarize(runs)
    text = table(summary)
    out = args.replot.parent if args.replot else args.out
    (out / "table.md").write_text(text.lstrip() + "\n")
    png = plot(runs, out / "search_efficiency.png")
    print(text)
    for study, s in summary.items():
        for arm, r in s["arms"].items():
            print(f"{study} {arm}: outcomes {r['outcomes']}")
    print(f"\nwrote {png} and {out / 'table.md'}; {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
