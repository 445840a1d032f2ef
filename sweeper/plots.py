"""Study plots (PNG): optimization history, importance, learning curves, metric against lr."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, none opened

import matplotlib.pyplot as plt
import optuna
import pandas as pd
from matplotlib.collections import LineCollection
from optuna.trial import TrialState

from .spec import StudySpec

COMPLETE_COLOR = "#1f77b4"
UNDERPERFORMING_COLOR = "#b0b0b0"
REASON_COLORS = ["#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#2ca02c", "#7f7f7f"]


def outcome(row: pd.Series) -> str:
    """complete, or the pruning reason, or fail."""
    if row["state"] == TrialState.COMPLETE.name:
        return "complete"
    if row["state"] == TrialState.PRUNED.name:
        return str(row["health.reason"] or "pruned")
    return row["state"].lower()


def _colors(outcomes: pd.Series) -> dict[str, str]:
    palette = {"complete": COMPLETE_COLOR, "underperforming": UNDERPERFORMING_COLOR}
    others = sorted(set(outcomes) - set(palette))
    palette.update({o: REASON_COLORS[i % len(REASON_COLORS)] for i, o in enumerate(others)})
    return palette


def write_plots(study: optuna.Study, spec: StudySpec, frame: pd.DataFrame, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    frame = frame.assign(outcome=frame.apply(outcome, axis=1)) if len(frame) else frame.assign(outcome=[])
    palette = _colors(frame["outcome"]) if len(frame) else {}
    paths = [_history(frame, spec, palette, folder / "history.png"),
             _learning_curves(study, frame, spec, palette, folder / "learning_curves.png")]
    if "lr" in spec.params:
        paths.append(_metric_vs(frame, spec, palette, "lr", folder / "metric_vs_lr.png"))
    from .report import history_metrics, importances

    for name in history_metrics(study.get_trials(deepcopy=False), exclude=[spec.metric]):
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        paths.append(_learning_curves(study, frame, spec, palette, folder / f"learning_curves_{safe}.png", name))

    imp = importances(study)
    if not isinstance(imp, str):
        paths.append(_importance(imp, spec, folder / "importance.png"))
    return paths


def _finish(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _legend(ax: plt.Axes, palette: dict[str, str], present: set[str]) -> None:
    handles = [plt.Line2D([], [], color=c, marker="o", linestyle="", label=o) for o, c in palette.items()
               if o in present]
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="best", title="outcome", title_fontsize=8)


def _unscored(ax: plt.Axes, frame: pd.DataFrame, x: str, palette: dict[str, str], top: float) -> None:
    """Trials pruned before their first evaluation have no metric: mark them along the top."""
    none = frame[frame["value"].isna() & (frame["state"] == TrialState.PRUNED.name)].dropna(subset=[x])
    for name, group in none.groupby("outcome"):
        ax.scatter(group[x], [top] * len(group), s=30, color=palette[name], marker="v",
                   label=f"{name} (no metric yet)")


def _top(values: pd.Series) -> float:
    return float(values.max()) * 1.08 if len(values) and values.max() > 0 else 1.0


def _history(frame: pd.DataFrame, spec: StudySpec, palette: dict[str, str], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    shown = frame.dropna(subset=["value"])
    for name, group in shown.groupby("outcome"):
        ax.scatter(group["number"], group["value"], s=18, color=palette[name], label=name,
                   marker="o" if name == "complete" else "x")
    _unscored(ax, frame, "number", palette, _top(shown["value"]))
    done = frame[frame["state"] == TrialState.COMPLETE.name].sort_values("number")
    if len(done):
        best = done["value"].cummin() if spec.direction == "minimize" else done["value"].cummax()
        ax.step(done["number"], best, where="post", color="black", linewidth=1.2, label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{spec.metric} (pruned: last reported)")
    ax.set_title(f"Optimization history: {spec.name}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    return _finish(fig, path)


def _curve(t: optuna.trial.FrozenTrial, metric: str | None) -> list[tuple[float, float]]:
    """The study's metric per epoch (``metric`` None: the intermediate values), else one of the
    trial's other metrics from its per-epoch ``history``."""
    if metric is None:
        return [(float(e), float(v)) for e, v in sorted(t.intermediate_values.items())]
    return [(float(r["epoch"]), float(r[metric])) for r in t.user_attrs.get("history") or () if metric in r]


def _learning_curves(study: optuna.Study, frame: pd.DataFrame, spec: StudySpec, palette: dict[str, str],
                     path: Path, metric: str | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    by_number = dict(zip(frame["number"], frame["outcome"], strict=True)) if len(frame) else {}
    segments: dict[str, list[list[tuple[float, float]]]] = {}
    curved: set[int] = set()
    for t in study.get_trials(deepcopy=False):
        points = _curve(t, metric) if t.number in by_number else []
        if points:
            curved.add(t.number)
            segments.setdefault(by_number[t.number], []).append(points)
    # complete first, so the sick curves are drawn on top
    for name in sorted(segments, key=lambda n: (n != "complete", n)):
        ax.add_collection(LineCollection(segments[name], colors=palette[name], linewidths=1.0,
                                         alpha=0.35 if name == "complete" else 0.8))
    ax.autoscale()
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric or spec.metric)
    ax.set_title(f"Learning curves by outcome: {spec.name}" + (f" ({metric})" if metric else ""))
    _legend(ax, palette, set(segments))
    early = frame[frame["number"].map(lambda n: n not in curved) & (frame["state"] == TrialState.PRUNED.name)]
    if len(early):
        counts = early["outcome"].value_counts()
        ax.text(0.01, 0.01, "pruned before their first evaluation: "
                + ", ".join(f"{o} {n}" for o, n in counts.items()), transform=ax.transAxes, fontsize=8,
                color="#444444")
    return _finish(fig, path)


def _metric_vs(frame: pd.DataFrame, spec: StudySpec, palette: dict[str, str], param: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    shown = frame.dropna(subset=["value", param])
    for name, group in shown.groupby("outcome"):
        ax.scatter(group[param], group["value"], s=18, color=palette[name], label=name,
                   marker="o" if name == "complete" else "x")
    _unscored(ax, frame, param, palette, _top(shown["value"]))
    p = spec.params[param]
    if getattr(p, "log", False):
        ax.set_xscale("log")
    ax.set_xlabel(param)
    ax.set_ylabel(f"{spec.metric} (pruned: last reported)")
    ax.set_title(f"{spec.metric} against {param}: {spec.name}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    return _finish(fig, path)


def _importance(imp: dict[str, float], spec: StudySpec, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(imp) + 1.5))
    names = list(imp)[::-1]
    ax.barh(names, [imp[n] for n in names], color=COMPLETE_COLOR)
    ax.set_xlabel(f"importance for {spec.metric} (completed trials)")
    ax.set_title(f"Parameter importance: {spec.name}")
    return _finish(fig, path)
