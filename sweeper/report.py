"""Results of a study: ``trials.csv`` and ``summary.md`` under ``results/NAME/``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from .spec import StudySpec

HEALTH_ATTRS = ("health.reason", "health.detail", "health.step")


def trials_frame(trials: Sequence[FrozenTrial], param_names: Sequence[str]) -> pd.DataFrame:
    """One row per trial: number, state, value, every param, health, epochs run, seconds."""
    rows = []
    for t in trials:
        config = t.user_attrs.get("config", {})
        row: dict[str, object] = {"number": t.number, "state": t.state.name, "value": t.value}
        for name in param_names:
            row[name] = config.get(name, t.params.get(name))
        for attr in HEALTH_ATTRS:
            row[attr] = t.user_attrs.get(attr)
        row["epochs_run"] = t.user_attrs.get("epochs_run")
        row["seconds"] = (
            round((t.datetime_complete - t.datetime_start).total_seconds(), 2)
            if t.datetime_complete and t.datetime_start else None
        )
        row["error"] = t.user_attrs.get("error")
        row["retry_of"] = t.system_attrs.get("failed_trial")
        rows.append(row)
    columns = ["number", "state", "value", *param_names, *HEALTH_ATTRS, "epochs_run", "seconds", "error", "retry_of"]
    return pd.DataFrame(rows, columns=columns)


def write_trials_csv(study: optuna.Study, spec: StudySpec, folder: Path) -> Path:
    frame = trials_frame(study.get_trials(deepcopy=False), list(spec.params))
    path = folder / "trials.csv"
    frame.to_csv(path, index=False)
    return path


def _md_table(frame: pd.DataFrame) -> str:
    """GitHub markdown table (pandas' to_markdown needs the optional tabulate)."""
    def cell(v: object) -> str:
        if v is None or (isinstance(v, float) and pd.isna(v)):
            return ""
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v).replace("|", "\\|")

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def summary_markdown(study: optuna.Study, spec: StudySpec, *, top: int = 10) -> str:
    """The study summary: header, trials by state, best trials."""
    trials = study.get_trials(deepcopy=False)
    frame = trials_frame(trials, list(spec.params))
    by_state = frame["state"].value_counts().to_dict() if len(frame) else {}
    lines = [
        f"# Study `{study.study_name}`",
        "",
        f"- task: `{spec.task}`; metric: `{spec.metric}` ({spec.direction})",
        f"- budget: {spec.budget.trials} finished trials; trials by state: "
        + (", ".join(f"{k} {v}" for k, v in sorted(by_state.items())) or "none"),
        f"- compute: {frame['seconds'].fillna(0).sum():.0f} trial-seconds, "
        f"{int(frame['epochs_run'].fillna(0).sum())} epochs",
    ]
    done = frame[frame["state"] == TrialState.COMPLETE.name]
    if done.empty:
        lines += ["", "No trial has completed yet."]
        return "\n".join(lines) + "\n"
    ascending = spec.direction == "minimize"
    best = done.sort_values("value", ascending=ascending)
    first = best.iloc[0]
    lines.append(f"- best: {spec.metric} = {first['value']:.4g} (trial {int(first['number'])})")
    cols = ["number", "value", *spec.params, "epochs_run", "seconds"]
    lines += ["", f"## Top {min(top, len(best))} trials", "", _md_table(best[cols].head(top))]
    return "\n".join(lines) + "\n"


def write_summary(study: optuna.Study, spec: StudySpec, folder: Path) -> Path:
    path = folder / "summary.md"
    path.write_text(summary_markdown(study, spec))
    return path


def write_results(study: optuna.Study, spec: StudySpec, folder: Path) -> list[Path]:
    """Write every results file this module knows; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    return [write_trials_csv(study, spec, folder), write_summary(study, spec, folder)]
