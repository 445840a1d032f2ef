"""Hostile input for the command line, generated: study files, arguments, `sweeper train` configs.

Every input runs through ``sweeper.cli.main`` in a fresh folder, and the promise checked is
the README's: exit 0; exit 1 with a trial-level reason; or exit 2 with one line on stderr and
nothing written. Never a traceback, printed or escaping. ``tests/test_fuzz.py`` runs a
bounded number of inputs, ``bench/fuzz.py`` a longer run.

Values are drawn from pools of boundaries (0, -1, NaN, inf, 1e308, 2**63, empty strings,
path tricks, unbalanced braces) mixed with valid ones, and mutate a study small enough that
an input that is valid trains in about a second. Keys that size the work (epochs, trials,
samples, widths) only get small values, so a valid input cannot run for hours.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import shutil
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

# ---------------------------------------------------------------- the studies mutated

TINY_FIXED: dict[str, dict[str, Any]] = {
    "ctc_digits": {"model_size": "tiny", "train_strips": 48, "val_strips": 16, "batch_size": 16, "max_digits": 4},
    "classify_many": {"classes": 4, "min_per_class": 2, "max_per_class": 4, "val_per_class": 2, "width": 16,
                      "depth": 1, "batch_size": 8},
    "binary_imbalanced": {"width": 8, "depth": 1, "heads": 2, "batch_size": 64},
}
TINY_PARAMS: dict[str, dict[str, Any]] = {
    "ctc_digits": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                   "dropout": {"type": "float", "low": 0.0, "high": 0.3}},
    "classify_many": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                      "loss": {"choices": ["ce", "focal"]}},
    "binary_imbalanced": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                          "loss": {"choices": ["ce", "class_weighted"]}},
}

# keys whose value sizes the work: only small values, valid or not
SIZE_KEYS = {"epochs", "train_strips", "val_strips", "max_digits", "width", "depth", "heads", "classes",
             "min_per_class", "max_per_class", "val_per_class", "batch_size", "patience", "restart_epochs",
             "restart_mult", "plateau_patience", "trials", "timeout", "seeds", "warmup_epochs"}

# ---------------------------------------------------------------- value pools

SMALL = [-1, 0, 1, 2, 3, 1.5, 0.0, -0.5, float("nan"), None, True, "2", "x", [], {}]
NUMBERS = [0, -1, 1, 2, 0.5, 1.0, 1.5, -1e-9, 1e-300, 1e308, 2**31, 2**63, 10**30, float("nan"), float("inf"),
           float("-inf"), -0.0, 3e-3, 0.1, 0.999]
STRINGS = ["", " ", "..", "../x", "/tmp/x", "a/b", "a" * 300, "x\ny", "tpe", "median", "auto", "none", "grid",
           "hyperband", "ctc_digits", "classify_many", "{", "}", "{lr", "{lr:.3f}", "{lr[0]}", "{{lr}}",
           "module:attr", "os:getcwd", "optuna.study:MaxTrialsCallback", "sqlite:///", "journal:///",
           "minimize", "maximize", "wer", "accuracy", "\u00e9\u00e8", "\x00", "null", "true", "1e-3"]
OTHER = [None, True, False, [], {}, [1, 2], {"a": 1}, [None], [[1]], {"type": "float"}]

STORAGES = ["", "sqlite:///", "sqlite:///:memory:", "foo", "redis://h/0", "sqlite://x", "journal:///",
            "sqlite:///results/s/study.db", "journal:///j.log", "sqlite:///junk.db", "sqlite:///empty.db",
            "sqlite:///trunc.db", "sqlite:///folder", "journal:///junk.log", "journal:///empty.log",
            "sqlite:///missing/deep/study.db", "sqlite:///ro/study.db", "postgresql://127.0.0.1:1/x"]
STUDY_NAMES = ["", "..", "../x", "/tmp/x", "a/b", "a" * 300, "ok-name", ".hidden", "a\nb", "-x", "s"]
SETS = ["lr=0", "lr=-1", "lr=nan", "lr=inf", "lr=1e-3", "dropout=1.5", "dropout=1", "dropout=0.2", "batch_size=0",
        "epochs=0", "epochs=1", "x", "=1", "lr=", "unknown=1", "model_size=huge", "seed=-1", "seed=99999999999",
        "train_strips=0", "weight_decay=-0.1", "clip_norm=0", "clip_norm=null", "loss=focal", "classes=1",
        "max_per_class=1", "heads=3", "positive_share=1", "warmup_epochs=-1", "patience=0", "loss=[1]"]
DEVICES = ["cpu", "cuda", "cuda:7", "tpu", "", "meta", "auto", "mps", "cpu:0", "xla", "cuda:-1", "gpu"]
OUTS = ["out", "", "cfg.yaml", "junk.db", "ro/run", "deep/er/run"]
CHECKPOINTS = ["", "junk.pt", "missing.pt", "cfg.yaml"]


def _valid(key: str, task: str | None) -> list[Any]:
    """Values ``key`` accepts in ``task`` (its default and every choice), to mix with the bad."""
    if task is None:
        return []
    from sweeper.tasks import get_task

    t = get_task(task)
    if key not in t.key_types:
        return []
    ktype = t.key_types[key]
    default = TINY_FIXED[task].get(key, t.defaults[key])
    return [default, *(ktype.choices or ())]


def _values(key: str, task: str | None = None) -> st.SearchStrategy[Any]:
    valid = _valid(key, task)
    if key in SIZE_KEYS:
        bad = st.sampled_from(SMALL)
    else:
        bad = st.one_of(st.sampled_from(NUMBERS), st.sampled_from(STRINGS), st.sampled_from(OTHER),
                        st.integers(-3, 5), st.text(max_size=6))
    return st.one_of(st.sampled_from(valid), st.sampled_from(valid), bad) if valid else bad


def _param(key: str) -> st.SearchStrategy[Any]:
    """A ``params:`` entry: mostly well formed, with bounds from the pools."""
    bound = st.sampled_from(SMALL) if key in SIZE_KEYS else st.sampled_from(NUMBERS)
    ranged = st.fixed_dictionaries(
        {"type": st.sampled_from(["float", "int", "categorical", "log", "", None])},
        optional={"low": bound, "high": bound, "log": st.sampled_from([True, False, "yes", None]),
                  "step": st.sampled_from([None, 0, 1, 0.1, -1, 2])})
    categorical = st.fixed_dictionaries({"choices": st.lists(_values(key), max_size=3)})
    return st.one_of(ranged, categorical, _values(key))


# ---------------------------------------------------------------- the cases


@dataclass
class Case:
    """One input: the files of a fresh folder, and the arguments of one command."""

    argv: list[str]
    files: dict[str, bytes] = field(default_factory=dict)

    def show(self) -> str:
        shown = {k: v[:2000] for k, v in self.files.items()}
        return f"argv={self.argv!r} files={shown!r}"


TASK_KEYS: dict[str, list[str]] = {}


def _task_keys(task: str) -> list[str]:
    if task not in TASK_KEYS:
        from sweeper.tasks import get_task

        TASK_KEYS[task] = sorted(get_task(task).key_types)
    return TASK_KEYS[task]


TOP_PATHS = ["name", "task", "metric", "direction", "budget", "budget.trials", "budget.epochs", "budget.timeout",
             "budget.retries", "budget.bogus", "sampler", "sampler.type", "sampler.seed", "sampler.n_startup_trials",
             "sampler.multivariate", "pruner", "pruner.type", "pruner.n_warmup_steps", "pruner.percentile",
             "pruner.min_resource", "pruner.reduction_factor", "pruner.lower", "heartbeat", "heartbeat.interval",
             "heartbeat.grace", "health", "health.enabled", "health.check_every", "health.diagnose_after",
             "health.grad_explosion", "health.class_collapse.max_auc", "health.nan_loss", "ablation",
             "ablation.seeds", "ablation.baseline", "ablation.target", "export", "export.command", "storage",
             "fixed", "params", "trackers", "trackers.tensorboard", "trackers.mlflow", "callbacks",
             "checkpoints", "checkpoints.keep", "description", "bogus", "task.command"]


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    node = doc
    *parents, last = path.split(".")
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    if value is _DELETE:
        node.pop(last, None)
    else:
        node[last] = value


_DELETE = object()


@st.composite
def study_docs(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    task = draw(st.sampled_from(sorted(TINY_FIXED)))
    doc: dict[str, Any] = {"name": "s", "task": task, "budget": {"trials": 2, "epochs": 1},
                           "sampler": {"type": "tpe", "seed": 0}, "pruner": {"type": "median"},
                           "fixed": dict(TINY_FIXED[task]), "params": dict(TINY_PARAMS[task]),
                           "trackers": {"tensorboard": False}, "checkpoints": {"keep": 1}}
    keys = _task_keys(task)
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 1, 2, 3]))):
        where = draw(st.sampled_from(["top", "fixed", "fixed", "params", "params", "delete"]))
        if where == "top":
            path = draw(st.sampled_from(TOP_PATHS))
            _set(doc, path, draw(_values(path.split(".")[-1])))
        elif where == "fixed":
            key = draw(st.sampled_from([*keys, "bogus"]))
            _set(doc, f"fixed.{key}", draw(_values(key, task)))
        elif where == "params":
            key = draw(st.sampled_from([*keys, "bogus"]))
            if key in SIZE_KEYS:
                doc["fixed"].pop(key, None)
            _set(doc, f"params.{key}", draw(_param(key)))
        else:
            _set(doc, draw(st.sampled_from(["name", "task", "budget", "budget.trials", "fixed", "params",
                                            "sampler.type"])), _DELETE)
    return task, doc


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


@st.composite
def text_damage(draw: st.DrawFn, text: str) -> bytes:
    """Mostly the text as dumped; sometimes damaged the ways files get damaged."""
    kind = draw(st.sampled_from(["none"] * 24 + ["duplicate", "latin1", "binary", "truncate", "tabs", "bom",
                                                "empty", "nul"]))
    data = text.encode()
    lines = text.splitlines(keepends=True)
    if kind == "duplicate" and lines:
        top = [ln for ln in lines if ln[:1].isalpha()]
        if top:
            data = (text + draw(st.sampled_from(top))).encode()
    elif kind == "latin1":
        data = data + "# caf\u00e9\n".encode("latin-1")
    elif kind == "binary":
        data = bytes(draw(st.lists(st.integers(0, 255), min_size=1, max_size=64)))
    elif kind == "truncate" and data:
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif kind == "tabs":
        data = text.replace("  ", "\t").encode()
    elif kind == "bom":
        data = b"\xef\xbb\xbf" + data
    elif kind == "empty":
        data = b""
    elif kind == "nul":
        data = data.replace(b"\n", b"\x00\n", 1)
    return data


@st.composite
def valid_docs(draw: st.DrawFn) -> dict[str, Any]:
    """A study that should run: the tiny one with values its keys accept, and some options."""
    task = draw(st.sampled_from(sorted(TINY_FIXED)))
    doc: dict[str, Any] = {"name": "s", "task": task, "budget": {"trials": 2, "epochs": 1},
                           "sampler": {"type": draw(st.sampled_from(["tpe", "random", "qmc", "cmaes"])),
                                       "seed": draw(st.sampled_from([0, 1, None, 2**32 - 1]))},
                           "pruner": {"type": draw(st.sampled_from(["median", "none", "hyperband"]))},
                           "fixed": dict(TINY_FIXED[task]), "params": dict(TINY_PARAMS[task]),
                           "trackers": {"tensorboard": draw(st.sampled_from([False, "auto"]))},
                           "checkpoints": {"keep": draw(st.sampled_from([0, 1, 3]))}}
    for key in draw(st.lists(st.sampled_from(_task_keys(task)), max_size=3)):
        if key in doc["params"] or key == "epochs":
            continue
        values = _valid(key, task)
        if len(values) > 1 and draw(st.booleans()):
            doc["params"][key] = {"choices": sorted(set(values), key=str)}
        else:
            doc["fixed"][key] = draw(st.sampled_from(values))
    return doc


@st.composite
def study_cases(draw: st.DrawFn) -> Case:
    """``sweeper run|worker|status|report|export|ablate`` on a generated study file."""
    if draw(st.integers(0, 3)) == 0:  # a study that should run, under arguments that may not
        doc = draw(valid_docs())
        return Case(argv=["run", "s", "--trials", draw(st.sampled_from(["1", "2"])),
                          *(["--set", draw(st.sampled_from(SETS))] if draw(st.booleans()) else [])],
                    files={"studies/s.yaml": _dump(doc).encode()})
    _, doc = draw(study_docs())
    data = draw(text_damage(_dump(doc)))
    command = draw(st.sampled_from(["run"] * 10 + ["worker", "status", "report", "export", "ablate"]))
    argv = [command, "studies/s.yaml" if draw(st.booleans()) else "s"]
    if command == "worker" or draw(st.integers(0, 6)) == 0:
        argv += ["--storage", draw(st.sampled_from(STORAGES))]
    if draw(st.integers(0, 6)) == 0:
        argv += ["--study-name", draw(st.sampled_from(STUDY_NAMES))]
    if command in ("run", "worker"):
        argv += ["--trials", draw(st.sampled_from(["1", "2", "2", "2", "2", "2", "2", "2", "0", "-1", "x"]))]
        if draw(st.integers(0, 5)) == 0:
            argv += ["--workers", draw(st.sampled_from(["0", "-1", "1", "x"]))]
        for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
            argv += ["--set", draw(st.sampled_from(SETS))]
        if draw(st.integers(0, 8)) == 0:
            argv += ["--gpus", draw(st.sampled_from(["auto", "0", "x", ""]))]
    if command == "export" and draw(st.booleans()):
        argv += ["--top", draw(st.sampled_from(["0", "-1", "1", "x"]))]
    if command == "ablate" and draw(st.booleans()):
        argv += ["--seeds", draw(st.sampled_from(["0", "-1", "1", "x"]))]
    if command == "ablate" and draw(st.integers(0, 3)) == 0:
        argv += ["--workers", draw(st.sampled_from(["0", "-1", "x"]))]
    if command in ("run", "worker", "ablate") and draw(st.integers(0, 8)) == 0:
        # no scheduler answers at port 1; the others are not addresses
        argv += ["--dask", draw(st.sampled_from(["", "nonsense", "http://h:1", "tcp://127.0.0.1:1"]))]
    return Case(argv=argv, files={"studies/s.yaml": data})


@st.composite
def train_cases(draw: st.DrawFn) -> Case:
    """``sweeper train CONFIG`` on a generated config."""
    task = draw(st.sampled_from(sorted(TINY_FIXED)))
    config: dict[str, Any] = {**TINY_FIXED[task], "epochs": 1}
    doc: dict[str, Any] = {"task": task, "config": config}
    keys = _task_keys(task)
    if draw(st.integers(0, 3)) == 0:  # a config that should train, under arguments that may not
        for key in draw(st.lists(st.sampled_from([k for k in keys if k != "epochs"]), max_size=3)):
            config[key] = draw(st.sampled_from(_valid(key, task)))
        device = ["--device", draw(st.sampled_from(DEVICES))] if draw(st.booleans()) else []
        return Case(argv=["train", "cfg.yaml", *device], files={"cfg.yaml": _dump(doc).encode()})
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 1, 2, 3]))):
        where = draw(st.sampled_from(["config"] * 6 + ["top", "delete"]))
        if where == "config":
            key = draw(st.sampled_from([*keys, "bogus"]))
            config[key] = draw(_values(key, task))
        elif where == "top":
            key = draw(st.sampled_from(["task", "config", "checkpoint", "metric", "direction", "provenance"]))
            doc[key] = draw(_values(key))
        else:
            doc.pop(draw(st.sampled_from(["task", "config"])), None)
    data = draw(text_damage(_dump(doc)))
    argv = ["train", "cfg.yaml"]
    if draw(st.booleans()):
        argv += ["--device", draw(st.sampled_from(DEVICES))]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        argv += ["--set", draw(st.sampled_from(SETS))]
    if draw(st.integers(0, 3)) == 0:
        argv += ["--out", draw(st.sampled_from(OUTS))]
    if draw(st.integers(0, 3)) == 0:
        argv += ["--from-checkpoint"] + ([] if (c := draw(st.sampled_from(CHECKPOINTS))) == "" else [c])
    return Case(argv=argv, files={"cfg.yaml": data})


def cases() -> st.SearchStrategy[Case]:
    return st.one_of(study_cases(), study_cases(), train_cases())


# ---------------------------------------------------------------- running one


@dataclass
class Outcome:
    code: int | None
    stdout: str
    stderr: str
    escaped: str | None = None  # the traceback of an exception that left main()
    logged: list[str] = field(default_factory=list)  # log records that carried a traceback
    changed: list[str] = field(default_factory=list)  # paths written, removed or changed


_TRUNCATED: bytes | None = None


def _truncated_db() -> bytes:
    """The first half of a real Optuna SQLite storage."""
    global _TRUNCATED
    if _TRUNCATED is None:
        import tempfile

        import optuna

        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "real.db"
            study = optuna.create_study(storage=f"sqlite:///{path}", study_name="s")
            study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
            data = path.read_bytes()
        _TRUNCATED = data[: len(data) // 2]
    return _TRUNCATED


def _fixtures(folder: Path) -> None:
    """Files the arguments may point at: damaged storages, a folder, a read-only folder."""
    (folder / "junk.db").write_bytes(b"this is not a database\n" * 50)
    (folder / "empty.db").write_bytes(b"")
    (folder / "trunc.db").write_bytes(_truncated_db())
    (folder / "junk.log").write_bytes(b"{not json\n\x00\xff\n")
    (folder / "empty.log").write_bytes(b"")
    (folder / "junk.pt").write_bytes(b"\x80\x04not a pickle")
    (folder / "folder").mkdir()
    (folder / "ro").mkdir()
    os.chmod(folder / "ro", 0o555)


def _snapshot(folder: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), folder) + "/"] = "dir"
        for f in files:
            path = os.path.join(root, f)
            with contextlib.suppress(OSError):
                out[os.path.relpath(path, folder)] = hashlib.md5(Path(path).read_bytes()).hexdigest()
    return out


class _TracebackRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.stack_info:
            self.records.append(f"{record.name}: {record.getMessage()[:300]}")


def run_case(case: Case, folder: Path) -> Outcome:
    """Run ``case`` in ``folder`` (created fresh) through ``sweeper.cli.main``."""
    from sweeper.cli import main

    if folder.exists():
        _rmtree(folder)
    folder.mkdir(parents=True)
    _fixtures(folder)
    for rel, data in case.files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    before = _snapshot(folder)
    out, err = io.StringIO(), io.StringIO()
    records = _TracebackRecords()
    logging.getLogger().addHandler(records)
    logging.getLogger("optuna").addHandler(records)
    cwd = os.getcwd()
    os.chdir(folder)
    escaped, code = None, None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(case.argv)
            except SystemExit as e:  # argparse's usage errors
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:  # a traceback is what this looks for
                escaped = traceback.format_exc()
    finally:
        os.chdir(cwd)
        logging.getLogger().removeHandler(records)
        logging.getLogger("optuna").removeHandler(records)
    after = _snapshot(folder)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    return Outcome(code=code, stdout=out.getvalue(), stderr=err.getvalue(), escaped=escaped,
                   logged=records.records, changed=changed)


def broken_promise(case: Case, out: Outcome) -> str | None:
    """How ``out`` breaks the promise, or None when it keeps it."""
    text = out.stdout + out.stderr
    if out.escaped:
        return f"an exception left main(): {out.escaped.strip().splitlines()[-1]}"
    if "Traceback (most recent call last)" in text:
        return "a traceback was printed"
    if out.logged:
        return f"a traceback was logged: {out.logged[0]}"
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    if out.code == 0:
        return None
    if out.code == 1:
        if not any(ln.startswith("sweeper:") for ln in lines):
            return "exit 1 without a line saying why"
        if "trials failed" in lines[-1] or "training failed" in lines[-1]:
            # a built-in task's training only fails on a value that was let in
            return f"accepted, then training failed: {lines[-1]}"
        return None
    if out.code == 2:
        if len(lines) != 1:
            return f"exit 2 with {len(lines)} lines on stderr: {lines[:3]}"
        if out.changed:
            return f"exit 2 but wrote {out.changed[:5]}: {lines[0]}"
        return None
    return f"exit code {out.code}: {lines[-1:] if lines else '(no output)'}"


def _rmtree(folder: Path) -> None:
    for root, dirs, _ in os.walk(folder):
        for d in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, d), 0o755)
    shutil.rmtree(folder, ignore_errors=True)

