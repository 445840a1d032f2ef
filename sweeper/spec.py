"""Study files (``studies/*.yaml``) -> validated, frozen ``StudySpec``.

Every error names the file, the key, the value and what is allowed, and is
raised before anything is written (``UserError``, exit code 2).
"""

from __future__ import annotations

import difflib
import importlib.util
import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml

from .errors import UserError
from .integrations.function import import_function, is_function_ref
from .tasks import TASKS, get_task
from .tasks.base import KeyType, Task, show_value

STUDIES_DIR = Path("studies")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``) and refuses a key
    written twice in one mapping (PyYAML keeps the last, silently)."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *anchor` merges are meant to be overridden
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # an unhashable key: the base class reports it
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first at line {first.start_mark.line + 1})",
                        key_node.start_mark)
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)  # type: ignore[arg-type]


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_scalar(text: str) -> Any:
    """Parse a ``--set`` value the way the YAML files are read (``3e-4`` -> float, ``null`` -> None)."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


# ---------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class FloatParam:
    """A float searched in [low, high], log-uniform with ``log``, on a grid with ``step``."""

    low: float
    high: float
    log: bool = False
    step: float | None = None
    kind: str = "float"


@dataclass(frozen=True)
class IntParam:
    """An integer searched in [low, high]."""

    low: int
    high: int
    log: bool = False
    step: int = 1
    kind: str = "int"


@dataclass(frozen=True)
class CategoricalParam:
    """One of ``choices`` (``None`` is allowed as a choice, e.g. clipping off)."""

    choices: tuple[Any, ...]
    kind: str = "categorical"


ParamSpec = FloatParam | IntParam | CategoricalParam


@dataclass(frozen=True)
class Budget:
    """Trials are the study's total, counted in finished (complete or pruned) trials."""

    trials: int
    epochs: int | None = None
    timeout: float | None = None
    retries: int = 2


@dataclass(frozen=True)
class SamplerSpec:
    type: str = "tpe"
    seed: int | None = 0
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PrunerSpec:
    type: str = "median"
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HeartbeatSpec:
    """How a dead worker's trial is found: no heartbeat for ``grace`` seconds."""

    interval: int = 5
    grace: int = 20


@dataclass(frozen=True)
class HealthSpec:
    """The ``health:`` section: detector options by reason code (``False`` turns one off)."""

    enabled: bool = True
    check_every: int = 20
    diagnose_after: int = 3
    detectors: Mapping[str, Mapping[str, Any] | bool] = field(default_factory=dict)


@dataclass(frozen=True)
class AblationSpec:
    """The ``ablation:`` section: the baseline the best config is compared with, or
    with ``target`` (a fix list: the keys it changes) when one is given."""

    baseline: Mapping[str, Any] = field(default_factory=dict)
    seeds: int = 3
    target: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportSpec:
    """The ``export:`` section: a command line template for the user's own training script."""

    command: str | None = None


@dataclass(frozen=True)
class TrackersSpec:
    """The ``trackers:`` section: where each trial's per-epoch metrics go besides the study.

    ``tensorboard``: event files per trial under ``results/NAME/tb/`` (``auto``: when the
    tensorboard package is installed). ``mlflow``: one MLflow run per trial, at
    ``mlflow_uri`` in experiment ``mlflow_experiment`` (default: the study's name).
    """

    tensorboard: bool | str = "auto"
    mlflow: bool = False
    mlflow_uri: str | None = None
    mlflow_experiment: str | None = None


@dataclass(frozen=True)
class CallbackSpec:
    """An Optuna callback the study file names: ``module:attr``, called with ``args`` when given
    (a class or a factory), else used as it is (a class is instantiated without arguments)."""

    ref: str
    args: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class CheckpointSpec:
    """The ``checkpoints:`` section: the weights of the ``keep`` best completed trials are kept
    under ``results/NAME/checkpoints/trial-N/`` (0: none)."""

    keep: int = 1


@dataclass(frozen=True)
class StudySpec:
    """A validated study file."""

    name: str
    task: str
    metric: str
    direction: str
    budget: Budget
    sampler: SamplerSpec
    pruner: PrunerSpec
    heartbeat: HeartbeatSpec
    health: HealthSpec
    ablation: AblationSpec
    export: ExportSpec
    storage: str | None
    fixed: Mapping[str, Any]
    params: Mapping[str, ParamSpec]
    path: Path
    description: str = ""
    types: Mapping[str, KeyType] | None = None  # a function or command task's keys, as the file declares them
    command: str | None = None  # `task: {command: ...}`: the command line template (then task == "command")
    command_grace: float = 10.0  # seconds between SIGTERM and SIGKILL when a command's trial is stopped
    trackers: TrackersSpec = field(default_factory=TrackersSpec)
    callbacks: tuple[CallbackSpec, ...] = ()
    checkpoints: CheckpointSpec = field(default_factory=CheckpointSpec)

    def key_types(self) -> Mapping[str, KeyType]:
        return self.types if self.types is not None else get_task(self.task).key_types

    def default_storage(self) -> str:
        return self.storage or f"sqlite:///results/{self.name}/study.db"


# ---------------------------------------------------------------- options per sampler / pruner

# option -> (kind, check, allowed text); kind in {"int", "float", "bool", "str", "int|auto"}
_NONNEG_INT = ("int", lambda v: v >= 0, "an integer >= 0")
_POS_INT = ("int", lambda v: v >= 1, "an integer >= 1")
_BOOL = ("bool", lambda v: True, "true or false")

SAMPLER_OPTIONS: dict[str, dict[str, tuple[str, Any, str]]] = {
    "tpe": {"n_startup_trials": _NONNEG_INT, "n_ei_candidates": _POS_INT, "multivariate": _BOOL,
            "constant_liar": _BOOL, "group": _BOOL},
    "random": {},
    "cmaes": {"n_startup_trials": _NONNEG_INT, "restart_strategy": ("str", lambda v: v in ("ipop", "bipop"),
                                                                    "ipop or bipop")},
    "qmc": {"qmc_type": ("str", lambda v: v in ("sobol", "halton"), "sobol or halton"), "scramble": _BOOL},
    "gp": {"n_startup_trials": _NONNEG_INT},
    "grid": {},
}
SAMPLER_PACKAGES = {"cmaes": ("cmaes",), "qmc": ("scipy",), "gp": ("scipy",)}  # what Optuna imports for each
GRID_LIMIT = 100_000  # points: Optuna's GridSampler holds (and shuffles) every one in memory

_PRUNER_COMMON = {"n_startup_trials": _NONNEG_INT, "n_warmup_steps": _NONNEG_INT, "interval_steps": _POS_INT}
PRUNER_OPTIONS: dict[str, dict[str, tuple[str, Any, str]]] = {
    "median": dict(_PRUNER_COMMON),
    "percentile": {**_PRUNER_COMMON,
                   "percentile": ("float", lambda v: 0 <= v <= 100, "a number from 0 to 100")},
    "hyperband": {"min_resource": _POS_INT,
                  "max_resource": ("int|auto", lambda v: v == "auto" or v >= 1, "an integer >= 1 or auto"),
                  "reduction_factor": ("int", lambda v: v >= 2, "an integer >= 2")},
    "successive_halving": {"min_resource": ("int|auto", lambda v: v == "auto" or v >= 1,
                                            "an integer >= 1 or auto"),
                           "reduction_factor": ("int", lambda v: v >= 2, "an integer >= 2"),
                           "min_early_stopping_rate": _NONNEG_INT},
    "threshold": {"lower": ("float", lambda v: True, "a number"), "upper": ("float", lambda v: True, "a number"),
                  "n_warmup_steps": _NONNEG_INT, "interval_steps": _POS_INT},
    "none": {},
}
REQUIRED_PRUNER_OPTIONS = {"percentile": ("percentile",)}

TOP_KEYS = ("name", "description", "task", "metric", "direction", "budget", "sampler", "pruner",
            "heartbeat", "health", "ablation", "export", "storage", "fixed", "params", "trackers", "callbacks",
            "checkpoints")


# ---------------------------------------------------------------- loading


def resolve_study_path(study: str, studies_dir: Path = STUDIES_DIR) -> Path:
    """A study name under ``studies/`` or a path to a YAML file."""
    path = Path(study)
    if path.suffix in (".yaml", ".yml") or "/" in study:
        if not path.is_file():
            raise UserError(f"study file {study} does not exist")
        return path
    candidate = studies_dir / f"{study}.yaml"
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in studies_dir.glob("*.yaml")) if studies_dir.is_dir() else []
    hint = _did_you_mean(study, known)
    listing = f"; available: {', '.join(known)}" if known else f"; no study files in {studies_dir}/"
    raise UserError(f"unknown study {study!r}: no {candidate}{hint}{listing}")


def load_spec(study: str, studies_dir: Path = STUDIES_DIR) -> StudySpec:
    """Read and validate a study file by name or path."""
    path = resolve_study_path(study, studies_dir)
    return parse_spec(read_yaml(path), path)


def read_yaml(path: Path, what: str = "a study file") -> Any:
    """A YAML file's document; a file that cannot be read, is not UTF-8 text or is not
    YAML (a key written twice included) is one ``UserError`` line naming where."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a UTF-8 text file (byte 0x{data[e.start]:02x} at offset {e.start}); "
                        f"{what} is YAML text") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        kind = "YAML error" if isinstance(e, yaml.constructor.ConstructorError) else "YAML syntax error"
        raise UserError(f"{path}: {kind} at {where}: {one_line(str(e.problem))}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: YAML error: {one_line(str(e))}") from None


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line (runs of whitespace joined), cut at ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


NAME_MAX = 100  # characters: a name becomes a folder (results/NAME/), well under any file system's limit


def name_error(value: Any) -> str | None:
    """Why ``value`` cannot name a study (it becomes ``results/NAME/``), else None: the one rule
    for ``name:`` and ``--study-name``."""
    if not isinstance(value, str) or not _NAME.match(value):
        return "a name of letters, digits, '_', '.' and '-' that starts with a letter or digit"
    if len(value) > NAME_MAX:
        return f"a name of at most {NAME_MAX} characters (it becomes the folder results/NAME/)"
    return None


def parse_spec(raw: Any, path: Path) -> StudySpec:
    """Validate an already-parsed YAML document."""
    v = _Validator(path)
    doc = v.mapping(raw, "")
    v.known_keys(doc, TOP_KEYS, "")
    name = v.require(doc, "name", "")
    if error := name_error(name):
        v.fail("name", name, error)

    task_name = v.require(doc, "task", "")
    command, grace = None, 10.0
    if isinstance(task_name, dict):
        v.known_keys(task_name, ("command", "grace"), "task.")
        command = v.require(task_name, "command", "task.")
        if not isinstance(command, str) or not command.strip():
            v.fail("task.command", command, "a command line, e.g. \"python train.py --lr {lr}\"")
        grace = task_name.get("grace", 10.0)
        if isinstance(grace, bool) or not isinstance(grace, int | float) or grace < 0:
            v.fail("task.grace", grace, "seconds >= 0")
        task_name = "command"
    function_task = is_function_ref(task_name) or command is not None
    if function_task:
        if command is None:  # the user's own training function: it must import now, not mid-sweep
            import_function(task_name, [path.parent, Path.cwd()])
        for key in ("metric", "direction"):
            if key not in doc:
                what = "a command" if command is not None else f"a function ({task_name})"
                raise UserError(f"{path}: `{key}` is required when `task` names {what}: "
                                + ("the name of the metric it reports" if key == "metric" else "minimize or maximize"))
        metric, direction = doc["metric"], doc["direction"]
        if not isinstance(metric, str) or not metric:
            v.fail("metric", metric, "the name of the metric the function reports")
    else:
        if not isinstance(task_name, str) or task_name not in TASKS:
            v.fail("task", task_name, f"one of {', '.join(sorted(TASKS))} or module:function",
                   hint=_did_you_mean(str(task_name), TASKS))
        task = get_task(task_name)
        metric = doc.get("metric", task.metric)
        if metric != task.metric:
            v.fail("metric", metric, f"{task.metric} (the metric task {task_name} reports)")
        direction = doc.get("direction", task.direction)
    if direction not in ("minimize", "maximize"):
        v.fail("direction", direction, "minimize or maximize")

    budget = _parse_budget(v, doc.get("budget"))
    sampler = _parse_sampler(v, doc.get("sampler", {}))
    pruner = _parse_pruner(v, doc.get("pruner", {}))
    heartbeat = _parse_heartbeat(v, doc.get("heartbeat", {}))
    health = _parse_health(v, doc.get("health", {}))

    storage = doc.get("storage")
    if storage is not None:
        check_storage_url(storage, where=f"{path}: `storage`")

    fixed_raw = v.mapping(doc.get("fixed", {}), "fixed")
    params_raw = v.mapping(doc.get("params", {}), "params")
    types = _declared_types(fixed_raw, params_raw) if function_task else task.key_types
    fixed: dict[str, Any] = {}
    for key, value in fixed_raw.items():
        v.known_keys({key: value}, types, "fixed.", noun="parameter of task " + task_name)
        if not types[key].accepts(value):
            v.fail(f"fixed.{key}", value, types[key].describe())
        fixed[key] = value

    params: dict[str, ParamSpec] = {}
    for key, pdoc in params_raw.items():
        v.known_keys({key: pdoc}, types, "params.", noun="parameter of task " + task_name)
        if key in fixed:
            v.fail(f"params.{key}", "(searched)", f"a key that is not also under `fixed` (fixed.{key} is set)")
        params[key] = _parse_param(v, key, pdoc, types[key])
    if budget.epochs is not None and "epochs" in params:
        v.fail("params.epochs", "(searched)", "not searched while `budget.epochs` is set")
    if command is not None:
        _check_template(v, "task.command", command, types)

    if sampler.type == "grid" and (error := grid_error(params, budget.trials, what="`budget.trials`")):
        raise UserError(f"{path}: {error}")
    if not function_task and (error := combination_error(task, {**task.defaults, **fixed}, params)):
        raise UserError(f"{path}: {error}, a combination the study's `fixed` and `params` allow")
    ablation = _parse_ablation(v, doc.get("ablation", {}), types, fixed, params)
    export = _parse_export(v, doc.get("export", {}), types, task_name)

    trackers = _parse_trackers(v, doc.get("trackers", {}))
    callbacks = _parse_callbacks(v, doc.get("callbacks", []))
    checkpoints = _parse_checkpoints(v, doc.get("checkpoints", {}))

    description = doc.get("description", "")
    if not isinstance(description, str):
        v.fail("description", description, "a string")
    return StudySpec(
        name=name, task=task_name, metric=metric, direction=direction, budget=budget, sampler=sampler,
        pruner=pruner, heartbeat=heartbeat, health=health, ablation=ablation, export=export, storage=storage,
        fixed=fixed, params=params, path=path, description=description,
        types=types if function_task else None, command=command, command_grace=float(grace),
        trackers=trackers, callbacks=callbacks, checkpoints=checkpoints,
    )


def _declared_types(fixed: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, KeyType]:
    """A function task's keys: typed by the values under ``fixed`` and the kinds under ``params``."""
    types = {"seed": KeyType("int"), "epochs": KeyType("int")}
    for key, value in fixed.items():
        kind = {bool: "bool", int: "int", float: "float", str: "str"}.get(type(value), "any")
        types[key] = KeyType(kind, nullable=True)
    for key, pdoc in params.items():
        kind = pdoc.get("type", "categorical") if isinstance(pdoc, dict) else "categorical"
        types[key] = KeyType(kind) if kind in ("float", "int") else KeyType("any", nullable=True)
    return types


def check_storage_url(url: Any, *, where: str) -> str:
    """Reject storage URLs whose scheme sweeper cannot open, before anything connects."""
    if not isinstance(url, str) or "://" not in url:
        raise UserError(f"{where} must be a storage URL such as sqlite:///results/x/study.db "
                        f"or postgresql://host/db, got {one_line(repr(url), 200)}")
    scheme = url.split("://", 1)[0]
    if not (scheme == "sqlite" or scheme.startswith(("postgresql", "mysql")) or scheme == "journal"):
        raise UserError(f"{where}: unknown storage scheme {scheme!r} in {one_line(repr(url), 200)}; "
                        "allowed: sqlite, postgresql, mysql, journal (journal:///path/to/file.log)")
    if scheme in ("sqlite", "journal"):
        path = url[len(scheme) + 3:]
        if not path.startswith("/") or path in ("/", "/:memory:") or "\x00" in path:
            raise UserError(f"{where}: {scheme} needs a file path, as in {scheme}:///results/x/study"
                            f"{'.db' if scheme == 'sqlite' else '.log'} (an in-memory study would be lost), "
                            f"got {one_line(repr(url), 200)}")
    return url


def _parse_budget(v: _Validator, raw: Any) -> Budget:
    doc = v.mapping(v.present(raw, "budget"), "budget")
    v.known_keys(doc, ("trials", "epochs", "timeout", "retries"), "budget.")
    trials = v.require(doc, "trials", "budget.")
    v.integer(trials, "budget.trials", minimum=1)
    epochs = doc.get("epochs")
    if epochs is not None:
        v.integer(epochs, "budget.epochs", minimum=1)
    timeout = doc.get("timeout")
    if timeout is not None and (not _is_number(timeout) or timeout <= 0):
        v.fail("budget.timeout", timeout, "a number of seconds > 0, or null")
    retries = doc.get("retries", 2)
    v.integer(retries, "budget.retries", minimum=0)
    return Budget(trials=trials, epochs=epochs, timeout=None if timeout is None else float(timeout), retries=retries)


def _parse_sampler(v: _Validator, raw: Any) -> SamplerSpec:
    doc = v.mapping(raw, "sampler")
    kind = doc.get("type", "tpe")
    if not isinstance(kind, str) or kind not in SAMPLER_OPTIONS:
        v.fail("sampler.type", kind, ", ".join(SAMPLER_OPTIONS), hint=_did_you_mean(str(kind), SAMPLER_OPTIONS))
    allowed = SAMPLER_OPTIONS[kind]
    v.known_keys(doc, ("type", "seed", *allowed), "sampler.", noun=f"option of the {kind} sampler")
    for package in SAMPLER_PACKAGES.get(kind, ()):  # else every trial would fail on the import
        if importlib.util.find_spec(package) is None:
            raise UserError(f"{v.path}: `sampler.type: {kind}` needs the {package} package, which is not "
                            f"installed (pip install {package}), or choose another sampler")
    seed = doc.get("seed", 0)
    if seed is not None:
        v.integer(seed, "sampler.seed", minimum=0)
    options = v.options(doc, allowed, "sampler.")
    return SamplerSpec(type=kind, seed=seed, options=options)


def _parse_pruner(v: _Validator, raw: Any) -> PrunerSpec:
    doc = v.mapping(raw, "pruner")
    kind = doc.get("type", "median")
    if not isinstance(kind, str) or kind not in PRUNER_OPTIONS:
        v.fail("pruner.type", kind, ", ".join(PRUNER_OPTIONS), hint=_did_you_mean(str(kind), PRUNER_OPTIONS))
    allowed = PRUNER_OPTIONS[kind]
    v.known_keys(doc, ("type", *allowed), "pruner.", noun=f"option of the {kind} pruner")
    for key in REQUIRED_PRUNER_OPTIONS.get(kind, ()):
        v.require(doc, key, "pruner.")
    options = v.options(doc, allowed, "pruner.")
    if kind == "threshold":
        if "lower" not in options and "upper" not in options:
            v.fail("pruner", "(no bound)", "`lower` or `upper` for the threshold pruner")
        if "lower" in options and "upper" in options and options["lower"] > options["upper"]:
            v.fail("pruner.lower", options["lower"], f"<= pruner.upper ({options['upper']})")
    return PrunerSpec(type=kind, options=options)


def _parse_heartbeat(v: _Validator, raw: Any) -> HeartbeatSpec:
    doc = v.mapping(raw, "heartbeat")
    v.known_keys(doc, ("interval", "grace"), "heartbeat.")
    interval = doc.get("interval", 5)
    v.integer(interval, "heartbeat.interval", minimum=1)
    grace = doc.get("grace", 4 * interval)
    v.integer(grace, "heartbeat.grace", minimum=1)
    if grace <= interval:
        v.fail("heartbeat.grace", grace, f"an integer > heartbeat.interval ({interval})")
    return HeartbeatSpec(interval=interval, grace=grace)


def _parse_health(v: _Validator, raw: Any) -> HealthSpec:
    from .health.detectors import DETECTORS

    if raw is False:
        return HealthSpec(enabled=False)
    doc = v.mapping(raw, "health")
    v.known_keys(doc, ("enabled", "check_every", "diagnose_after", *DETECTORS), "health.",
                 noun="setting or detector (detectors: " + ", ".join(DETECTORS) + ")")
    enabled = doc.get("enabled", True)
    if not isinstance(enabled, bool):
        v.fail("health.enabled", enabled, "true or false")
    check_every = doc.get("check_every", 20)
    v.integer(check_every, "health.check_every", minimum=1)
    diagnose_after = doc.get("diagnose_after", 3)
    v.integer(diagnose_after, "health.diagnose_after", minimum=0)
    detectors: dict[str, Mapping[str, Any] | bool] = {}
    for name, cls in DETECTORS.items():
        if name not in doc:
            continue
        value = doc[name]
        if isinstance(value, bool):
            detectors[name] = value
            continue
        opts = v.mapping(value, f"health.{name}")
        allowed, nullable = cls.options(), cls.optional()
        v.known_keys(opts, ("enabled", *allowed), f"health.{name}.", noun=f"option of {name}")
        for key, val in opts.items():
            kind = bool if key == "enabled" else allowed[key]
            ok = (val is None and key in nullable) or (isinstance(val, bool) if kind is bool else (
                _is_number(val) and val >= 0 if kind is float else
                isinstance(val, int) and not isinstance(val, bool) and val >= 0))
            if not ok:
                allowed_text = {bool: "true or false", float: "a number >= 0", int: "an integer >= 0"}[kind]
                v.fail(f"health.{name}.{key}", val, allowed_text + (" or null (off)" if key in nullable else ""))
        detectors[name] = opts
    return HealthSpec(enabled=enabled, check_every=check_every, diagnose_after=diagnose_after, detectors=detectors)


def _parse_ablation(v: _Validator, raw: Any, types: Mapping[str, KeyType], fixed: Mapping[str, Any],
                    params: Mapping[str, Any]) -> AblationSpec:
    doc = v.mapping(raw, "ablation")
    v.known_keys(doc, ("baseline", "target", "seeds"), "ablation.")
    seeds = doc.get("seeds", 3)
    v.integer(seeds, "ablation.seeds", minimum=1)
    in_study = sorted({*fixed, *params})
    ends = {}
    for end in ("baseline", "target"):
        config = v.mapping(doc.get(end, {}), f"ablation.{end}")
        for key, value in config.items():
            if key not in in_study:
                hint = _did_you_mean(str(key), in_study)
                raise UserError(f"{v.path}: `ablation.{end}.{key}` is not in the study{hint}; a {end} sets "
                                f"searched or fixed parameters: {', '.join(in_study)}")
            if not types[key].accepts(value):
                v.fail(f"ablation.{end}.{key}", value, types[key].describe())
        ends[end] = config
    if "target" in doc and not ends["target"]:
        v.fail("ablation.target", doc["target"], "the keys a fix list changes, with their new values")
    return AblationSpec(baseline=ends["baseline"], seeds=seeds, target=ends["target"])


def _parse_export(v: _Validator, raw: Any, types: Mapping[str, KeyType], task: str) -> ExportSpec:
    doc = v.mapping(raw, "export")
    v.known_keys(doc, ("command",), "export.")
    command = doc.get("command")
    if command is None:
        return ExportSpec()
    if not isinstance(command, str) or not command.strip():
        v.fail("export.command", command, "a command line with {param} placeholders")
    _check_template(v, "export.command", command, types)
    return ExportSpec(command=command)


def _check_template(v: _Validator, key: str, template: str, types: Mapping[str, KeyType]) -> None:
    """A command template must fill with any config: braces balanced (``{{`` for a literal
    one), every ``{placeholder}`` a key of the study, no format spec a quoted value refuses."""
    import string

    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        v.fail(key, template, f"a command line whose braces pair up ({e}; write {{{{ for a literal brace)")
    for field_name in fields:
        if field_name not in types:
            raise UserError(f"{v.path}: `{key}` uses {{{one_line(field_name, 80)}}}, which is not a key of the study"
                            f"{_did_you_mean(field_name, types)}; known: {', '.join(sorted(types))}")
    try:
        template.format_map(dict.fromkeys(types, "'value'"))  # values are filled in as quoted text
    except (ValueError, KeyError, IndexError, AttributeError) as e:
        v.fail(key, template, f"placeholders without format specs or indexing ({type(e).__name__}: {e})")


def _parse_trackers(v: _Validator, raw: Any) -> TrackersSpec:
    doc = v.mapping(raw, "trackers")
    v.known_keys(doc, ("tensorboard", "mlflow"), "trackers.")
    tb = doc.get("tensorboard", "auto")
    if tb != "auto" and not isinstance(tb, bool):
        v.fail("trackers.tensorboard", tb, "true, false or auto (when the tensorboard package is installed)")
    if tb is True and importlib.util.find_spec("tensorboard") is None:
        raise UserError(f"{v.path}: `trackers.tensorboard` is true but the tensorboard package is not installed "
                        "(pip install 'sweeper[tensorboard]'), or set it to auto or false")
    ml = doc.get("mlflow", False)
    uri = experiment = None
    if isinstance(ml, dict):
        v.known_keys(ml, ("tracking_uri", "experiment"), "trackers.mlflow.")
        uri, experiment = ml.get("tracking_uri"), ml.get("experiment")
        for key, value in (("tracking_uri", uri), ("experiment", experiment)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                v.fail(f"trackers.mlflow.{key}", value, "a non-empty string")
        ml = True
    elif not isinstance(ml, bool):
        v.fail("trackers.mlflow", ml, "true, false or a mapping with tracking_uri and experiment")
    if ml and importlib.util.find_spec("mlflow") is None:
        raise UserError(f"{v.path}: `trackers.mlflow` is on but the mlflow package is not installed "
                        "(pip install 'sweeper[mlflow]')")
    return TrackersSpec(tensorboard=tb, mlflow=ml, mlflow_uri=uri, mlflow_experiment=experiment)


def _parse_callbacks(v: _Validator, raw: Any) -> tuple[CallbackSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        v.fail("callbacks", raw, "a list of module:attr names (or mappings with ref and args)")
    out = []
    for i, item in enumerate(raw):
        key = f"callbacks[{i}]"
        ref, args = item, None
        if isinstance(item, dict):
            v.known_keys(item, ("ref", "args"), f"{key}.")
            ref, args = v.require(item, "ref", f"{key}."), item.get("args")
            if args is not None and not isinstance(args, dict):
                v.fail(f"{key}.args", args, "a mapping of keyword arguments")
        if not is_function_ref(ref):
            v.fail(key, ref, "module:attr, e.g. optuna.study:MaxTrialsCallback")
        spec = CallbackSpec(ref=ref, args=args)
        try:
            make_callback(spec, [v.path.parent, Path.cwd()])
        except UserError as e:
            raise UserError(f"{v.path}: `{key}`: {e}") from None
        out.append(spec)
    return tuple(out)


def make_callback(spec: CallbackSpec, search: list[Path]) -> Any:
    """The Optuna callback ``spec`` names, ready to pass to ``study.optimize(callbacks=...)``."""
    target = import_function(spec.ref, search, what="callback")
    try:
        if spec.args is not None:
            made = target(**spec.args)
        elif isinstance(target, type):
            made = target()
        else:
            made = target
    except Exception as e:  # the user's constructor refused its arguments
        raise UserError(f"{spec.ref}({', '.join(f'{k}={a!r}' for k, a in (spec.args or {}).items())}) failed: "
                        f"{type(e).__name__}: {e}") from None
    if not callable(made):
        raise UserError(f"{spec.ref} gave a {type(made).__name__}, not a callable taking (study, trial)")
    return made


def _parse_checkpoints(v: _Validator, raw: Any) -> CheckpointSpec:
    doc = v.mapping(raw, "checkpoints")
    v.known_keys(doc, ("keep",), "checkpoints.")
    keep = doc.get("keep", 1)
    v.integer(keep, "checkpoints.keep", minimum=0)
    return CheckpointSpec(keep=keep)


def _parse_param(v: _Validator, key: str, raw: Any, ktype: KeyType) -> ParamSpec:
    where = f"params.{key}"
    doc = v.mapping(raw, where)
    if "choices" in doc and "type" not in doc:
        doc = {"type": "categorical", **doc}
    kind = v.require(doc, "type", f"{where}.")
    if kind not in ("float", "int", "categorical"):
        v.fail(f"{where}.type", kind, "float, int or categorical")
    if kind == "categorical":
        v.known_keys(doc, ("type", "choices"), f"{where}.")
        choices = v.require(doc, "choices", f"{where}.")
        if not isinstance(choices, list) or not choices:
            v.fail(f"{where}.choices", choices, "a non-empty list")
        for c in choices:
            if c is not None and not isinstance(c, bool | int | float | str):
                v.fail(f"{where}.choices", c, "null, booleans, numbers or strings")
            if not ktype.accepts(c):
                v.fail(f"{where}.choices", c, f"values {key} accepts: {ktype.describe()}")
        if len({(type(c), c) for c in choices}) != len(choices):
            v.fail(f"{where}.choices", choices, "a list without duplicates")
        return CategoricalParam(choices=tuple(choices))

    v.known_keys(doc, ("type", "low", "high", "log", "step"), f"{where}.")
    if ktype.kind not in ("float", "int") or ktype.choices is not None:
        v.fail(f"{where}.type", kind, f"categorical ({key} accepts {ktype.describe()})")
    if kind == "float" and ktype.kind == "int":
        v.fail(f"{where}.type", kind, f"int ({key} is an integer)")
    low, high = v.require(doc, "low", f"{where}."), v.require(doc, "high", f"{where}.")
    log = doc.get("log", False)
    if not isinstance(log, bool):
        v.fail(f"{where}.log", log, "true or false")
    for bound, value in (("low", low), ("high", high)):
        if kind == "int":
            v.integer(value, f"{where}.{bound}")
        elif not _is_number(value) or not math.isfinite(value):
            v.fail(f"{where}.{bound}", value, "a finite number")
    for bound, value in (("low", low), ("high", high)):  # the range the key's reader declares
        if not ktype.accepts(value):
            v.fail(f"{where}.{bound}", value, f"within what {key} accepts: {ktype.describe()}")
    if low > high:
        raise UserError(f"{v.path}: `{where}.low` must be <= `{where}.high`, got low={low}, high={high}")
    if log and low <= 0:
        raise UserError(f"{v.path}: `{where}.low` must be > 0 when `log: true`, got {low}")
    step = doc.get("step")
    if step is not None:
        if log:
            v.fail(f"{where}.step", step, "null when `log: true` (Optuna cannot combine step and log)")
        if kind == "int":
            v.integer(step, f"{where}.step", minimum=1)
        elif not _is_number(step) or step <= 0:
            v.fail(f"{where}.step", step, "a number > 0")
    if kind == "int":
        return IntParam(low=low, high=high, log=log, step=1 if step is None else step)
    return FloatParam(low=float(low), high=float(high), log=log, step=None if step is None else float(step))


# ---------------------------------------------------------------- --set overrides


def _grid_count(param: ParamSpec) -> int | None:
    """How many values a searched key takes on a grid (None: a float with no ``step``)."""
    if isinstance(param, CategoricalParam):
        return len(param.choices)
    if isinstance(param, IntParam):
        return (param.high - param.low) // param.step + 1
    if param.step is None:
        return None
    return math.floor((param.high - param.low) / param.step + 1e-9) + 1


def _grid_values(param: ParamSpec) -> list[Any]:
    """Every value a searched key takes on a grid (a float needs a ``step``: ``_grid_count``)."""
    if isinstance(param, CategoricalParam):
        return list(param.choices)
    if isinstance(param, IntParam):
        return list(range(param.low, param.high + 1, param.step))
    step = float(param.step) if param.step is not None else 0.0
    # rounded: low + k*step must land on the values suggest_float(step=) allows
    return [round(param.low + k * step, 12) for k in range(_grid_count(param) or 0)]


def _candidates(param: ParamSpec) -> list[Any]:
    """The values of a searched key worth checking: every choice, every integer of a short
    range, else the bounds."""
    if isinstance(param, CategoricalParam) or (isinstance(param, IntParam) and (_grid_count(param) or 0) <= 64):
        return _grid_values(param)
    return [param.low, param.high]


def grid_space(params: Mapping[str, ParamSpec], skip: frozenset[str] = frozenset()) -> dict[str, list[Any]]:
    """Every value of every searched key not in ``skip``, for ``sampler.type: grid``
    (call ``grid_error`` first: a float needs a ``step``)."""
    return {key: _grid_values(param) for key, param in params.items() if key not in skip}


def grid_error(params: Mapping[str, ParamSpec], trials: int, skip: frozenset[str] = frozenset(),
               what: str = "the trial budget") -> str | None:
    """Why ``sampler.type: grid`` cannot run ``trials`` trials over ``params`` (less ``skip``,
    the keys ``--set`` pins), else None: each point runs at most once."""
    counts = {}
    for key, param in params.items():
        if key in skip:
            continue
        count = _grid_count(param)
        if count is None:
            return (f"`params.{key}` must have a `step` (or be categorical) with `sampler.type: grid`, "
                    f"got a float from {show_value(param.low)} to {show_value(param.high)} with no step")
        counts[key] = count
    size = math.prod(counts.values())
    shape = " x ".join(f"{n} {k}" for k, n in counts.items()) or "no searched key"
    if size > GRID_LIMIT:
        return f"the grid of `sampler.type: grid` must have at most {GRID_LIMIT} points, got {size} ({shape})"
    if trials > size:
        return (f"{what} must be at most the grid's {size} points with `sampler.type: grid` "
                f"({shape}; each point runs once), got {trials}")
    return None


def combination_error(task: Task, base: Mapping[str, Any], params: Mapping[str, ParamSpec]) -> str | None:
    """The first reason ``task.config_error`` gives for a config the study can sample: ``base``
    with each combination of the searched keys' candidate values (one key at a time past 100k)."""
    if type(task).config_error is Task.config_error:
        return None  # no constraint between keys: nothing to enumerate
    grids = {key: _candidates(param) for key, param in params.items()}
    if math.prod(len(g) for g in grids.values()) <= 100_000:
        combos: Any = (dict(zip(grids, values, strict=True)) for values in itertools.product(*grids.values()))
    else:
        first = {key: g[0] for key, g in grids.items()}
        combos = ({**first, key: value} for key, g in grids.items() for value in g)
    for combo in combos:
        if error := task.config_error({**base, **combo}):
            return error
    return None


def parse_overrides(spec: StudySpec, items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> a dict, each checked against the study and the task's types.

    A key may be a fixed parameter, a searched one (pinning it) or any other
    key the task reads (``epochs``, ``seed``, ...).
    """
    types = spec.key_types()
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set takes KEY=VALUE, got {item!r}")
        if key not in types:
            hint = _did_you_mean(key, types)
            raise UserError(f"--set {key}: unknown key for task {spec.task}{hint}; "
                            f"known: {', '.join(sorted(types))}")
        value = parse_scalar(text)
        param = spec.params.get(key)
        if isinstance(param, CategoricalParam) and not any(
            type(value) is type(c) and value == c for c in param.choices
        ):
            allowed = ", ".join(show_value(c) for c in param.choices)
            raise UserError(f"--set {key}={text}: {key} is searched over [{allowed}] in {spec.path}; "
                            f"pin it to one of those")
        if not types[key].accepts(value):
            raise UserError(f"--set {key}={text}: {key} must be {types[key].describe()}")
        out[key] = value
    if spec.types is None and spec.command is None:  # a built-in task: its constraints between keys
        task = get_task(spec.task)
        searched = {k: p for k, p in spec.params.items() if k not in out}
        if error := combination_error(task, {**task.defaults, **spec.fixed, **out}, searched):
            raise UserError(f"--set {' '.join(items)}: {error}")
    return out


# ---------------------------------------------------------------- helpers


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _did_you_mean(word: str, known: Any) -> str:
    close = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Validator:
    """Raises ``UserError`` messages that name the file, key, value and what is allowed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, value: Any, allowed: str, *, hint: str = "") -> NoReturn:
        shown = show_value(value) if not isinstance(value, str) or value.startswith("(") else repr(value)
        raise UserError(f"{self.path}: `{one_line(key, 120)}` must be {allowed}, got {one_line(shown, 200)}{hint}")

    def mapping(self, raw: Any, key: str) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            where = f"`{key}`" if key else "the document"
            raise UserError(f"{self.path}: {where} must be a mapping of keys to values, "
                            f"got {type(raw).__name__} {one_line(repr(raw), 200)}")
        return raw

    def present(self, raw: Any, key: str) -> Any:
        if raw is None:
            raise UserError(f"{self.path}: missing required key `{key}`")
        return raw

    def require(self, doc: Mapping[str, Any], key: str, prefix: str) -> Any:
        if key not in doc or doc[key] is None:
            raise UserError(f"{self.path}: missing required key `{prefix}{key}`")
        return doc[key]

    def known_keys(self, doc: Mapping[str, Any], allowed: Any, prefix: str, *, noun: str = "") -> None:
        for key in doc:
            if key not in allowed:
                hint = _did_you_mean(str(key), allowed)
                what = f" (not a {noun})" if noun else ""
                raise UserError(f"{self.path}: unknown key `{one_line(prefix + str(key), 120)}`{what}{hint}; "
                                f"allowed: {', '.join(sorted(map(str, allowed)))}")

    def integer(self, value: Any, key: str, *, minimum: int | None = None) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or (minimum is not None and value < minimum):
            self.fail(key, value, "an integer" if minimum is None else f"an integer >= {minimum}")

    def options(self, doc: Mapping[str, Any], allowed: Mapping[str, tuple[str, Any, str]],
                prefix: str) -> dict[str, Any]:
        out = {}
        for key, (kind, check, text) in allowed.items():
            if key not in doc:
                continue
            value = doc[key]
            ok_type = {
                "int": isinstance(value, int) and not isinstance(value, bool),
                "float": _is_number(value),
                "bool": isinstance(value, bool),
                "str": isinstance(value, str),
                "int|auto": value == "auto" or (isinstance(value, int) and not isinstance(value, bool)),
            }[kind]
            if not ok_type or not check(value):
                self.fail(f"{prefix}{key}", value, text)
            out[key] = value
        return out
