"""Each bad input and fault of the README's faults table, as a user meets it.

Bad input: exit 2, one line on stderr, nothing written (``tests.fuzzing.run_case`` runs the
command in a fresh folder and compares every file before and after). Faults: the command
ends cleanly and the same command resumes.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from sweeper.budget_lock import BudgetLock
from sweeper.cli import main

from .conftest import REPO, TINY_STUDY, sweeper_cmd
from .fuzzing import Case, Outcome, broken_promise, run_case

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def refused(tmp_path: Path, argv: list[str], files: dict[str, bytes] | None = None,
            match: str = "") -> Outcome:
    """Run a command that must be refused: exit 2, one line holding ``match``, nothing written."""
    case = Case(argv=argv, files={"studies/tiny.yaml": TINY_STUDY.encode(), **(files or {})})
    out = run_case(case, tmp_path / "case")
    assert out.code == 2, (out.code, out.stderr[-2000:])
    assert broken_promise(case, out) is None, broken_promise(case, out)
    assert match in out.stderr, out.stderr
    return out


def study(text: str = TINY_STUDY, **replace: str) -> dict[str, bytes]:
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    return {"studies/tiny.yaml": text.encode()}


# ---------------------------------------------------------------- tracebacks that became one line


@pytest.mark.parametrize(("data", "match"), [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a UTF-8 text file (byte 0x89 at offset 0)"),
    (TINY_STUDY.replace("name: tiny", "name: tiny # caf\xe9").encode("latin-1"), "not a UTF-8 text file"),
    (b"name: tiny\x00\n", "YAML error"),
])
def test_a_binary_or_non_utf8_study_file_is_one_line(tmp_path: Path, data: bytes, match: str) -> None:
    refused(tmp_path, ["run", "tiny"], {"studies/tiny.yaml": data}, match)


@pytest.mark.parametrize("value", ["[tpe, random]", "{type: tpe}"])
@pytest.mark.parametrize("section", ["sampler", "pruner"])
def test_a_sampler_or_pruner_type_that_is_a_list_or_mapping(tmp_path: Path, section: str, value: str) -> None:
    old = "  type: tpe\n" if section == "sampler" else "  type: none\n"
    refused(tmp_path, ["run", "tiny"], study(**{old: f"  type: {value}\n"}), f"`{section}.type` must be")


@pytest.mark.parametrize(("template", "match"), [
    ("python train.py --lr {lr", "braces pair up"),
    ("python train.py --lr {lr:.3f}", "without format specs"),
    ("python train.py --lr {lrr}", "uses {lrr}, which is not a key of the study (did you mean 'lr'?)"),
])
def test_a_bad_export_template_is_one_line(tmp_path: Path, template: str, match: str) -> None:
    refused(tmp_path, ["run", "tiny"], study(TINY_STUDY + f'export:\n  command: "{template}"\n'), match)


def test_a_study_name_too_long_for_the_file_system(tmp_path: Path) -> None:
    refused(tmp_path, ["run", "tiny"], study(**{"name: tiny": "name: " + "t" * 300}), "at most 100 characters")
    refused(tmp_path, ["run", "tiny", "--study-name", "t" * 300], match="--study-name must be a name of at most")


@pytest.mark.parametrize("device", ["cuda:7", "tpu", "gpu0", "meta"])
def test_train_on_a_device_that_does_not_exist_leaves_no_run_folder(tmp_path: Path, device: str) -> None:
    config = {"task": "classify_many", "config": {"epochs": 1, "classes": 4}}
    refused(tmp_path, ["train", "cfg.yaml", "--device", device], {"cfg.yaml": yaml.safe_dump(config).encode()},
            f"--device {device}")


def test_train_from_a_file_that_is_not_a_checkpoint_leaves_no_run_folder(tmp_path: Path) -> None:
    config = {"task": "classify_many", "config": {"epochs": 1, "classes": 4}}
    refused(tmp_path, ["train", "cfg.yaml", "--from-checkpoint", "junk.pt"],
            {"cfg.yaml": yaml.safe_dump(config).encode()}, "junk.pt is not a checkpoint torch can read")


# ---------------------------------------------------------------- accepted, then every trial failed


@pytest.mark.parametrize(("fixed", "match"), [
    ("batch_size: 0", "`fixed.batch_size` must be an integer >= 1, got 0"),
    ("weight_decay: -0.1", "`fixed.weight_decay` must be a number >= 0, got -0.1"),
    ("dropout: 1.5", "`fixed.dropout` must be a number >= 0 and < 1, got 1.5"),
    ("epochs: 0", "`fixed.epochs` must be an integer >= 1, got 0"),
    ("lr: -0.001", "`fixed.lr` must be a number > 0, got -0.001"),
    ("lr: .nan", "`fixed.lr` must be a number > 0, got nan"),
    ("train_strips: 0", "`fixed.train_strips` must be an integer >= 1, got 0"),
    ("seed: -1", "`fixed.seed` must be an integer from 0 to 4294967295, got -1"),
])
def test_values_of_the_right_type_but_out_of_range_are_refused(tmp_path: Path, fixed: str, match: str) -> None:
    key = fixed.split(":")[0]
    text = "\n".join(ln for ln in TINY_STUDY.splitlines() if not ln.startswith(f"  {key}:")) + "\n"
    text = text.replace("fixed:\n", f"fixed:\n  {fixed}\n")
    if key == "epochs":
        text = text.replace("  epochs: 2\n", "")
    refused(tmp_path, ["run", "tiny"], {"studies/tiny.yaml": text.encode()}, match)


@pytest.mark.parametrize(("argv", "match"), [
    (["--set", "batch_size=0"], "--set batch_size=0: batch_size must be an integer >= 1"),
    (["--set", "lr=nan"], "--set lr=nan: lr must be a number > 0"),
    (["--set", "dropout=1"], "dropout must be a number >= 0 and < 1"),
])
def test_set_is_held_to_the_same_ranges(tmp_path: Path, argv: list[str], match: str) -> None:
    refused(tmp_path, ["run", "tiny", *argv], match=match)


def test_a_searched_range_reaching_outside_what_the_key_accepts(tmp_path: Path) -> None:
    refused(tmp_path, ["run", "tiny"], study(**{"dropout: {type: float, low: 0.0, high: 0.3}":
                                                "dropout: {type: float, low: 0.0, high: 1.0}"}),
            "`params.dropout.high` must be within what dropout accepts: a number >= 0 and < 1, got 1.0")


@pytest.mark.parametrize(("config", "match"), [
    ({"epochs": 0}, "`config.epochs` must be an integer >= 1, got 0"),
    ({"lr": float("nan")}, "`config.lr` must be a number > 0, got nan"),
    ({"min_per_class": 0}, "`config.min_per_class` must be an integer >= 1, got 0"),
])
def test_train_configs_are_held_to_the_same_ranges(tmp_path: Path, config: dict, match: str) -> None:
    doc = {"task": "classify_many", "config": config}
    refused(tmp_path, ["train", "cfg.yaml"], {"cfg.yaml": yaml.safe_dump(doc).encode()}, match)


@pytest.mark.parametrize("task", [{"a": 1}, ["classify_many"]])
def test_a_train_config_whose_task_is_not_a_name(tmp_path: Path, task: object) -> None:
    doc = {"task": task, "config": {"epochs": 1}}
    refused(tmp_path, ["train", "cfg.yaml"], {"cfg.yaml": yaml.safe_dump(doc).encode()}, "`task` must be one of")


# ---------------------------------------------------------------- silently taken


def test_a_key_written_twice_is_refused(tmp_path: Path) -> None:
    refused(tmp_path, ["run", "tiny"], study(TINY_STUDY + "name: other\n"),
            "duplicate key 'name' (first at line 1)")
    refused(tmp_path, ["run", "tiny"], study(**{"  model_size: tiny\n": "  model_size: tiny\n  model_size: small\n"}),
            "duplicate key 'model_size'")


@pytest.mark.parametrize(("flag", "match"), [("--storage", "--storage must be a storage URL"),
                                             ("--study-name", "--study-name must be a name")])
def test_an_empty_storage_or_study_name_is_refused(tmp_path: Path, flag: str, match: str) -> None:
    refused(tmp_path, ["run", "tiny", flag, ""], match=match)


@pytest.mark.parametrize("name", ["..", "../outside", "a/b", "/tmp/elsewhere", ".hidden"])
def test_a_study_name_is_held_to_the_rule_of_name(tmp_path: Path, name: str) -> None:
    refused(tmp_path, ["run", "tiny", "--study-name", name], match="--study-name must be a name of letters")


# ---------------------------------------------------------------- damaged storage


@pytest.fixture(scope="module")
def real_db(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a real storage: the tiny study with two finished trials."""
    folder = tmp_path_factory.mktemp("real")
    out = run_case(Case(argv=["run", "tiny", "--trials", "2", "--no-progress"],
                        files={"studies/tiny.yaml": TINY_STUDY.encode()}), folder / "run")
    assert out.code == 0, out.stderr
    db = folder / "run" / "results" / "tiny" / "study.db"
    with sqlite3.connect(db) as conn:  # what a finished process leaves: the WAL folded into the file
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return db.read_bytes()


@pytest.mark.parametrize("command", ["status", "report", "export", "run"])
@pytest.mark.parametrize("damage", ["not a database", "truncated", "empty"])
def test_a_damaged_storage_file_is_named_and_left_as_it_was(tmp_path: Path, damage: str, command: str,
                                                            real_db: bytes) -> None:
    real = real_db
    data = {"not a database": b"hello\n" * 100, "truncated": real[: len(real) // 2], "empty": b""}[damage]
    files = {"results/tiny/study.db": data}
    if damage == "empty" and command == "run":  # an empty file is an empty database: a new study starts
        case = Case(argv=["run", "tiny", "--trials", "1"], files={"studies/tiny.yaml": TINY_STUDY.encode(), **files})
        out = run_case(case, tmp_path / "case")
        assert out.code == 0 and broken_promise(case, out) is None, out.stderr
        return
    match = {"not a database": "is not an SQLite database or is damaged", "truncated": "damaged",
             "empty": "is empty (0 bytes): it holds no study"}[damage]
    refused(tmp_path, [command, "tiny"], files, match)  # compares every byte: a read changed nothing


def test_status_on_a_database_of_something_else_does_not_add_tables(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    db = tmp_path / "other" / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE users (id INTEGER)")
    refused(tmp_path, ["status", "tiny", "--storage", f"sqlite:///{db}"], match="not an Optuna storage")
    with sqlite3.connect(db) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["users"]


# ---------------------------------------------------------------- interrupts


def _foreground_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as a terminal's foreground job gets it


def test_a_second_ctrl_c_while_results_are_written_leaves_them_whole(workdir: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import sweeper.commands as commands
    import sweeper.sweep as sweep

    real_fit, real_write = sweep.fit, commands.write_results
    calls = {"fit": 0, "write": 0}

    def fit_then_ctrl_c(*args, **kwargs):  # the first Ctrl-C lands in the second trial's training
        calls["fit"] += 1
        if calls["fit"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)  # the handler runs at the next bytecode; this gives it one
        return real_fit(*args, **kwargs)

    def write_with_ctrl_c(study, spec, folder):  # the second one lands half-way through the writing
        calls["write"] += 1
        paths = real_write(study, spec, folder)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        return paths

    monkeypatch.setattr(sweep, "fit", fit_then_ctrl_c)
    monkeypatch.setattr(commands, "write_results", write_with_ctrl_c)
    assert main(["run", "tiny", "--no-progress"]) == 130
    assert calls == {"fit": 2, "write": 1}
    folder = workdir / "results" / "tiny"
    assert (folder / "best.yaml").exists() and (folder / "summary.md").exists()
    assert list((folder / "plots").glob("*.png"))
    monkeypatch.setattr(sweep, "fit", real_fit)
    monkeypatch.setattr(commands, "write_results", real_write)
    assert main(["run", "tiny", "--no-progress"]) == 0  # and the same command resumes to the budget
    trials = optuna.load_study(study_name="tiny", storage="sqlite:///results/tiny/study.db").get_trials()
    assert sum(t.state in FINISHED for t in trials) == 4


@pytest.mark.parametrize("delay", [0.3, pytest.param(1.0, marks=pytest.mark.slow),
                                   pytest.param(2.0, marks=pytest.mark.slow)])
def test_ctrl_c_during_start_up_is_one_line_and_no_traceback(workdir: Path, delay: float) -> None:
    argv = ("run", "tiny", "--trials", "1", "--no-progress")
    proc = subprocess.Popen(sweeper_cmd(*argv), cwd=workdir, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_foreground_signals)
    time.sleep(delay)  # while Python imports torch and optuna, reads the study, opens the storage
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (130, 0), err  # 0: the one trial ran before the signal came
    assert "Traceback" not in err
    if proc.returncode == 130:
        assert f"interrupted: finished runs are kept; resume with: sweeper {' '.join(argv)}" in err
    again = subprocess.run(sweeper_cmd(*argv), cwd=workdir, env=ENV, text=True, capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr
    trials = optuna.load_study(study_name="tiny", storage="sqlite:///results/tiny/study.db").get_trials()
    assert sum(t.state in FINISHED for t in trials) == 1


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.5, 1.5, 3.0])
def test_ctrl_c_in_the_first_seconds_of_two_workers_is_an_interrupt(workdir: Path, delay: float) -> None:
    argv = ("run", "tiny", "--workers", "2", "--no-progress")
    proc = subprocess.Popen(sweeper_cmd(*argv), cwd=workdir, env=ENV, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=_foreground_signals, start_new_session=True)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (130, 0), err
    assert "Traceback" not in err and "no study named" not in err
    again = subprocess.run(sweeper_cmd(*argv), cwd=workdir, env=ENV, text=True, capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr
    trials = optuna.load_study(study_name="tiny", storage="sqlite:///results/tiny/study.db").get_trials()
    assert sum(t.state in FINISHED for t in trials) == 4


# ---------------------------------------------------------------- journal storage


def test_the_budget_lock_is_not_the_journals_own_lock_file() -> None:
    lock = BudgetLock("journal:///results/x/journal.log", "x")
    assert lock._path == Path("results/x/journal.log.budget.lock")
    from optuna.storages.journal._file import LOCK_FILE_SUFFIX

    assert str(lock._path) != f"results/x/journal.log{LOCK_FILE_SUFFIX}"


@pytest.mark.slow
def test_two_workers_on_a_journal_storage_neither_stall_nor_overshoot(workdir: Path) -> None:
    storage = f"journal:///{workdir}/results/tiny/journal.log"
    started = time.monotonic()
    proc = subprocess.run(sweeper_cmd("run", "tiny", "--workers", "2", "--trials", "4", "--storage", storage,
                                      "--no-progress"), cwd=workdir, env=ENV, capture_output=True, text=True,
                          timeout=600)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert "lock" not in proc.stderr.lower(), proc.stderr  # Optuna's "stale lock removed" warnings
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    trials = optuna.load_study(study_name="tiny", storage=JournalStorage(JournalFileBackend(
        str(workdir / "results" / "tiny" / "journal.log")))).get_trials()
    assert sum(t.state in FINISHED for t in trials) == 4
    # a stall is Optuna waiting out its 30-second grace for a lock file that is never released
    assert seconds < 30 + 60, f"{seconds:.0f} s"
    print(f"two workers, 4 trials on a journal: {seconds:.1f} s", file=sys.stderr)


# ---------------------------------------------------------------- found by the fuzz harness


@pytest.mark.parametrize("sampler", ["tpe", *(pytest.param(s, marks=pytest.mark.slow)
                                              for s in ("random", "cmaes", "qmc"))])
def test_the_largest_sampler_seed_runs_every_trial_and_resumes(workdir: Path, sampler: str) -> None:
    # a resumed study offsets the seed by the trials already in it: past 2^32 - 1 numpy
    # refused it, and every trial of the resumed invocation failed
    spec = workdir / "studies" / "tiny.yaml"
    spec.write_text(spec.read_text().replace("  type: tpe\n  seed: 0\n", f"  type: {sampler}\n  seed: 4294967295\n"))
    assert main(["run", "tiny", "--trials", "1", "--no-progress"]) == 0
    assert main(["run", "tiny", "--trials", "3", "--no-progress"]) == 0
    trials = optuna.load_study(study_name="tiny", storage="sqlite:///results/tiny/study.db").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3


def test_a_training_that_raises_in_sweeper_train_is_one_line_and_exit_1(tmp_path: Path) -> None:
    (tmp_path / "boom.py").write_text("def train(config, run):\n    raise ValueError('shapes do not match')\n")
    doc = {"task": "boom:train", "metric": "loss", "direction": "minimize", "config": {"seed": 0}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(doc))
    proc = subprocess.run(sweeper_cmd("train", "cfg.yaml"), cwd=tmp_path, env=ENV, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "sweeper: training failed: ValueError: shapes do not match; traceback in cfg.run/traceback.txt"]
    assert "raise ValueError('shapes do not match')" in (tmp_path / "cfg.run" / "traceback.txt").read_text()
