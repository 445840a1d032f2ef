"""Spec validation: each boundary from both sides, and the wording of errors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from sweeper.errors import UserError
from sweeper.spec import (
    CategoricalParam,
    FloatParam,
    IntParam,
    load_spec,
    parse_overrides,
    parse_scalar,
    parse_spec,
)

BASE: dict[str, Any] = {
    "name": "s",
    "task": "ctc_digits",
    "budget": {"trials": 3, "epochs": 2},
    "params": {
        "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "warmup_epochs": {"type": "int", "low": 0, "high": 3},
        "clip_norm": {"type": "categorical", "choices": [None, 1.0]},
        "model_size": {"choices": ["tiny", "small"]},
    },
    "fixed": {"batch_size": 16},
}
PATH = Path("studies/s.yaml")


def spec_with(**changes: Any) -> Any:
    doc = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        node = doc
        *parents, last = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        if value is _DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return parse_spec(doc, PATH)


_DELETE = object()


def bad(match: str, **changes: Any) -> None:
    with pytest.raises(UserError, match=match) as info:
        spec_with(**changes)
    message = str(info.value)
    assert "\n" not in message
    assert str(PATH) in message or "--" in message


def test_valid_spec_is_frozen_dataclasses() -> None:
    spec = spec_with()
    assert spec.params["lr"] == FloatParam(1e-4, 1e-1, log=True)
    assert spec.params["warmup_epochs"] == IntParam(0, 3)
    assert spec.params["clip_norm"] == CategoricalParam((None, 1.0))
    assert spec.params["model_size"] == CategoricalParam(("tiny", "small"))
    assert spec.metric == "wer" and spec.direction == "minimize"
    assert spec.default_storage() == "sqlite:///results/s/study.db"
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]


def test_shipped_studies_load() -> None:
    root = Path(__file__).resolve().parents[1] / "studies"
    names = sorted(p.stem for p in root.glob("*.yaml"))
    assert "ctc_baseline" in names
    for name in names:
        spec = load_spec(name, root)
        assert spec.name == name


def test_ctc_baseline_searches_the_seven_factors_and_downsampling() -> None:
    spec = load_spec("ctc_baseline", Path(__file__).resolve().parents[1] / "studies")
    for factor in ("lr", "warmup_epochs", "clip_norm", "weight_decay", "dropout", "model_size", "loss", "downsample"):
        assert factor in spec.params, factor
    assert spec.params["lr"].log and spec.params["weight_decay"].log
    assert None in spec.params["clip_norm"].choices  # clipping off is searched
    assert len(spec.params["loss"].choices) >= 2 and "ctc" in spec.params["loss"].choices


@pytest.mark.parametrize(
    ("low", "high", "ok"), [(1e-4, 1e-4, True), (1e-4, 1e-3, True), (1e-3, 1e-4, False)]
)
def test_low_high_boundary(low: float, high: float, ok: bool) -> None:
    if ok:
        spec_with(params__lr__low=low, params__lr__high=high)
    else:
        bad(r"`params.lr.low` must be <= `params.lr.high`, got low=0.001, high=0.0001", params__lr__low=low,
            params__lr__high=high)


@pytest.mark.parametrize(("low", "ok"), [(1e-12, True), (0.0, False)])
def test_log_needs_positive_low(low: float, ok: bool) -> None:
    # weight_decay accepts 0: what refuses it here is the log scale
    decay = {"type": "float", "low": low, "high": 0.1, "log": True}
    if ok:
        spec_with(params__weight_decay=decay)
    else:
        bad(r"`params.weight_decay.low` must be > 0 when `log: true`, got", params__weight_decay=decay)


def test_log_false_allows_zero_low() -> None:
    spec_with(params__weight_decay={"type": "float", "low": 0.0, "high": 0.1})


@pytest.mark.parametrize("low", [0.0, -1.0])
def test_a_searched_range_is_held_to_what_the_key_accepts(low: float) -> None:
    bad(r"`params.lr.low` must be within what lr accepts: a number > 0, got", params__lr__low=low,
        params__lr__log=False)


@pytest.mark.parametrize(("step", "ok"), [(1, True), (0, False), (-1, False), (1.5, False)])
def test_int_step(step: Any, ok: bool) -> None:
    if ok:
        assert spec_with(params__warmup_epochs__step=step).params["warmup_epochs"].step == step
    else:
        bad(r"`params.warmup_epochs.step` must be an integer >= 1", params__warmup_epochs__step=step)


def test_step_with_log_is_refused() -> None:
    bad(r"`params.lr.step` must be null when `log: true`", params__lr__step=0.1)


def test_float_param_for_integer_key_is_refused() -> None:
    bad(r"`params.batch_size.type` must be int \(batch_size is an integer\)",
        params__batch_size={"type": "float", "low": 8, "high": 64}, fixed__batch_size=_DELETE)
    spec_with(params__epochs={"type": "int", "low": 1, "high": 3}, budget__epochs=_DELETE)


def test_categorical_choices_checked_against_task() -> None:
    bad(r"`params.model_size.choices` must be values model_size accepts: tiny, small, medium, large, got 'huge'",
        params__model_size__choices=["tiny", "huge"])
    bad(r"`params.clip_norm.choices` must be a non-empty list", params__clip_norm__choices=[])
    bad(r"without duplicates", params__clip_norm__choices=[1.0, 1.0])
    bad(r"`params.model_size.choices` .*got null", params__model_size__choices=[None, "tiny"])


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"colour": 1}, r"unknown key `colour`"),
        ({"budgte": {"trials": 1}}, r"unknown key `budgte` \(did you mean 'budget'\?\)"),
        ({"budget__trails": 3}, r"unknown key `budget.trails` \(did you mean 'trials'\?\)"),
        ({"params__lr__lwo": 1}, r"unknown key `params.lr.lwo` \(did you mean 'low'\?\)"),
        ({"params__learning_rate": {"type": "float", "low": 0.1, "high": 1}},
         r"unknown key `params.learning_rate`.*not a parameter of task ctc_digits"),
        ({"fixed__lr_": 0.1}, r"unknown key `fixed.lr_` .*did you mean 'lr'"),
        ({"sampler__n_startup": 3}, r"unknown key `sampler.n_startup` .*n_startup_trials"),
    ],
)
def test_unknown_keys_with_did_you_mean(changes: dict[str, Any], match: str) -> None:
    bad(match, **changes)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"task": "ctc_digit"},
         r"`task` must be one of binary_imbalanced, classify_many, ctc_digits or module:function, got 'ctc_digit' "
         r"\(did you mean 'ctc_digits'\?\)"),
        ({"sampler": {"type": "tpee"}}, r"`sampler.type` must be tpe, random, cmaes, qmc, gp, grid, got 'tpee'"),
        ({"pruner": {"type": "medain"}}, r"`pruner.type` must be .*got 'medain' \(did you mean 'median'\?\)"),
        ({"pruner": {"type": "percentile"}}, r"missing required key `pruner.percentile`"),
        ({"pruner": {"type": "percentile", "percentile": 101}}, r"`pruner.percentile` must be a number from 0 to 100"),
        ({"pruner": {"type": "threshold"}}, r"`lower` or `upper`"),
        ({"pruner": {"type": "hyperband", "reduction_factor": 1}},
         r"`pruner.reduction_factor` must be an integer >= 2"),
        ({"direction": "down"}, r"`direction` must be minimize or maximize, got 'down'"),
        ({"metric": "accuracy"}, r"`metric` must be wer"),
        ({"budget__trials": 0}, r"`budget.trials` must be an integer >= 1, got 0"),
        ({"budget__trials": True}, r"`budget.trials` must be an integer >= 1, got true"),
        ({"budget__timeout": 0}, r"`budget.timeout` must be a number of seconds > 0"),
        ({"budget": _DELETE}, r"missing required key `budget`"),
        ({"name": "a b"}, r"`name` must be a name of letters"),
        ({"fixed__batch_size": 1.5}, r"`fixed.batch_size` must be an integer >= 1, got 1.5"),
        ({"fixed__clip_norm": "off"}, r"`fixed.clip_norm` must be a number > 0 or null, got 'off'"),
        ({"fixed__lr": 0.1, "params__lr": {"type": "float", "low": 0.1, "high": 1.0}}, r"not also under `fixed`"),
        ({"heartbeat": {"interval": 5, "grace": 5}}, r"`heartbeat.grace` must be an integer > heartbeat.interval"),
        ({"storage": "redis://x"}, r"unknown storage scheme 'redis'"),
    ],
)
def test_bad_values(changes: dict[str, Any], match: str) -> None:
    bad(match, **changes)


@pytest.mark.parametrize(
    ("pruner", "ok"),
    [
        ({"type": "median", "n_startup_trials": 0, "n_warmup_steps": 0}, True),
        ({"type": "median", "n_startup_trials": -1}, False),
        ({"type": "percentile", "percentile": 0}, True),
        ({"type": "percentile", "percentile": 100}, True),
        ({"type": "successive_halving", "min_resource": "auto"}, True),
        ({"type": "successive_halving", "min_resource": 0}, False),
        ({"type": "hyperband", "max_resource": "auto", "reduction_factor": 2}, True),
        ({"type": "threshold", "upper": 0.9}, True),
        ({"type": "threshold", "lower": 0.5, "upper": 0.4}, False),
        ({"type": "none"}, True),
    ],
)
def test_pruner_options(pruner: dict[str, Any], ok: bool) -> None:
    if ok:
        assert spec_with(pruner=pruner).pruner.type == pruner["type"]
    else:
        with pytest.raises(UserError, match=r"`pruner"):
            spec_with(pruner=pruner)


@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes", "qmc", "gp"])
def test_every_sampler_builds(sampler: str) -> None:
    from sweeper.sweep import make_sampler

    assert make_sampler(spec_with(sampler={"type": sampler, "seed": 1})) is not None


def test_yaml_floats_with_exponent_read_as_numbers() -> None:
    assert parse_scalar("3e-4") == 3e-4
    assert parse_scalar("null") is None
    assert parse_scalar("small") == "small"
    assert parse_scalar("4") == 4 and isinstance(parse_scalar("4"), int)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text("name: x\nbudget: [1, 2\n")
    with pytest.raises(UserError, match=r"x.yaml: YAML syntax error at line \d+, column \d+"):
        load_spec(str(tmp_path / "x.yaml"))


def test_unknown_study_lists_available(tmp_path: Path) -> None:
    (tmp_path / "ctc_baseline.yaml").write_text(yaml.safe_dump(BASE))
    with pytest.raises(UserError, match=r"unknown study 'ctc_baselin'.*did you mean 'ctc_baseline'.*available"):
        load_spec("ctc_baselin", tmp_path)
    with pytest.raises(UserError, match=r"does not exist"):
        load_spec(str(tmp_path / "missing.yaml"), tmp_path)


class TestOverrides:
    spec = spec_with()

    def test_override_fixed_and_task_keys(self) -> None:
        assert parse_overrides(self.spec, ["batch_size=8", "epochs=1", "seed=3"]) == {
            "batch_size": 8, "epochs": 1, "seed": 3}

    def test_pin_searched(self) -> None:
        assert parse_overrides(self.spec, ["lr=3e-4", "model_size=small", "clip_norm=null"]) == {
            "lr": 3e-4, "model_size": "small", "clip_norm": None}

    @pytest.mark.parametrize(
        ("item", "match"),
        [
            ("lrr=0.1", r"--set lrr: unknown key for task ctc_digits \(did you mean 'lr'\?\)"),
            ("lr", r"--set takes KEY=VALUE"),
            ("epochs=two", r"--set epochs=two: epochs must be an integer"),
            ("epochs=1.5", r"--set epochs=1.5: epochs must be an integer"),
            ("lr=fast", r"--set lr=fast: lr must be a number"),
            ("model_size=large", r"model_size is searched over \[tiny, small\]"),
            ("clip_norm=5.0", r"clip_norm is searched over \[null, 1.0\]"),
            ("downsample=3", r"downsample must be 1, 2, 4, 8, 16, 32"),
        ],
    )
    def test_bad_override(self, item: str, match: str) -> None:
        with pytest.raises(UserError, match=match):
            parse_overrides(self.spec, [item])


class TestHealthSection:
    def test_defaults_and_options(self) -> None:
        spec = spec_with(health={"check_every": 10, "grad_explosion": {"ceiling": 1e5}, "blank_output": False})
        assert spec.health.enabled and spec.health.check_every == 10 and spec.health.diagnose_after == 3
        assert spec.health.detectors == {"grad_explosion": {"ceiling": 1e5}, "blank_output": False}
        assert not spec_with(health=False).health.enabled
        assert spec_with().health.detectors == {}
        off = spec_with(health={"grad_explosion": {"ceiling": None}, "vanishing_gradients": {"threshold": None}})
        assert off.health.detectors["grad_explosion"] == {"ceiling": None}  # an optional limit: null = off

    @pytest.mark.parametrize(
        ("health", "match"),
        [
            ({"grad_explosoin": False}, r"unknown key `health.grad_explosoin`.*did you mean 'grad_explosion'"),
            ({"grad_explosion": {"celing": 1}}, r"unknown key `health.grad_explosion.celing`.*did you mean 'ceiling'"),
            ({"grad_explosion": {"ceiling": "high"}}, r"`health.grad_explosion.ceiling` must be a number >= 0"),
            ({"grad_explosion": {"ceiling": -1.0}}, r"`health.grad_explosion.ceiling` must be a number >= 0 or null"),
            ({"grad_explosion": {"factor": None}}, r"`health.grad_explosion.factor` must be a number >= 0, got null"),
            ({"stalled_updates": {"patience": "2"}}, r"`health.stalled_updates.patience` must be an integer >= 0"),
            ({"dead_gradients": {"patience": 1.5}}, r"`health.dead_gradients.patience` must be an integer >= 0"),
            ({"check_every": 0}, r"`health.check_every` must be an integer >= 1, got 0"),
            ({"diagnose_after": -1}, r"`health.diagnose_after` must be an integer >= 0"),
            ({"enabled": "yes"}, r"`health.enabled` must be true or false"),
        ],
    )
    def test_bad_health(self, health: dict[str, Any], match: str) -> None:
        bad(match, health=health)

    @pytest.mark.parametrize(("value", "ok"), [(0, True), (1, True), (-1, False)])
    def test_patience_boundary(self, value: int, ok: bool) -> None:
        if ok:
            spec_with(health={"class_collapse": {"patience": value}})
        else:
            bad(r"`health.class_collapse.patience` must be an integer >= 0",
                health={"class_collapse": {"patience": value}})


GRID_PARAMS = {
    "warmup_epochs": {"type": "int", "low": 0, "high": 4, "step": 2},
    "dropout": {"type": "float", "low": 0.0, "high": 0.3, "step": 0.1},
    "clip_norm": {"type": "categorical", "choices": [None, 1.0]},
}


def test_a_grid_is_every_combination_of_categorical_int_and_stepped_float_values() -> None:
    from sweeper.spec import grid_space
    from sweeper.sweep import make_sampler

    spec = spec_with(sampler={"type": "grid"}, params=GRID_PARAMS, budget__trials=24)
    assert grid_space(spec.params) == {"warmup_epochs": [0, 2, 4], "dropout": [0.0, 0.1, 0.2, 0.3],
                                       "clip_norm": [None, 1.0]}
    assert grid_space(spec.params, frozenset({"dropout"})) == {"warmup_epochs": [0, 2, 4], "clip_norm": [None, 1.0]}
    assert make_sampler(spec) is not None


def test_a_grid_needs_a_step_on_every_float() -> None:
    bad(r"`params.lr` must have a `step` \(or be categorical\) with `sampler.type: grid`, got a float from "
        r"0.0001 to 0.1 with no step", sampler={"type": "grid"}, budget__trials=1)


@pytest.mark.parametrize(("trials", "ok"), [(24, True), (25, False)])
def test_a_grid_budget_is_at_most_its_points(trials: int, ok: bool) -> None:
    if ok:
        assert spec_with(sampler={"type": "grid"}, params=GRID_PARAMS, budget__trials=trials).budget.trials == 24
    else:
        bad(r"`budget.trials` must be at most the grid's 24 points with `sampler.type: grid` \(3 warmup_epochs "
            r"x 4 dropout x 2 clip_norm; each point runs once\), got 25",
            sampler={"type": "grid"}, params=GRID_PARAMS, budget__trials=trials)


def test_a_grid_of_more_than_the_limit_is_refused() -> None:
    bad(r"the grid of `sampler.type: grid` must have at most 100000 points, got 200001",
        sampler={"type": "grid"}, params={"seed": {"type": "int", "low": 0, "high": 200000}}, budget__trials=1)


def test_the_readme_ranges_table_is_what_the_tasks_declare() -> None:
    from sweeper.tasks import ranges_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert ranges_table() in readme
