"""Heartbeats, stale-trial retries and ``fail_stale_trials`` have been "experimental" in
Optuna since 2.x; sweeper relies on them deliberately, so the warning is noise to users."""

import warnings

import optuna

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
