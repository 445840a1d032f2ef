"""Opening Optuna storages: SQLite (WAL, busy timeout), PostgreSQL/MySQL, journal files."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import optuna
import sqlalchemy.exc
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend

from .errors import UserError
from .spec import HeartbeatSpec, check_storage_url

SQLITE_BUSY_TIMEOUT_S = 60  # how long a writer waits for another worker's lock
SQLITE_JOURNAL_MODE = "WAL"
SCHEMA_RACE_RETRIES = 3  # readers do not block the writer; bench/overhead.py compares with DELETE


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None for other schemes or in-memory)."""
    if not url.startswith("sqlite:///"):
        return None
    rest = url[len("sqlite:///"):]
    return None if rest in ("", ":memory:") else Path(rest)


def journal_path(url: str) -> Path | None:
    return Path(url[len("journal:///"):]) if url.startswith("journal:///") else None


def check_writable(path: Path, *, what: str) -> None:
    """Fail (without creating anything) unless ``path`` could be created or written."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe != path and not probe.is_dir():
        raise UserError(f"cannot write {what} {path}: {probe} is not a folder")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK if probe.is_dir() else os.W_OK):
        raise UserError(f"cannot write {what} {path}: {probe} is not writable")


def check_storage(url: str) -> None:
    """Validate a storage URL and, for file storages, that the file can be written."""
    check_storage_url(url, where="--storage")
    for path in (sqlite_path(url), journal_path(url)):
        if path is not None:
            if path.exists() and path.is_dir():
                raise UserError(f"storage {url}: {path} is a folder, not a database file")
            check_writable(path, what="storage file")


def open_storage(url: str, heartbeat: HeartbeatSpec | None = None, *, retries: int = 2,
                 create: bool = True) -> BaseStorage:
    """Open (creating if allowed) the storage at ``url``.

    SQLite gets WAL journal mode (readers do not block the writer) and a busy
    timeout (several workers wait for the lock instead of failing with
    "database is locked"). RDB storages get Optuna's heartbeat, so a trial of
    a killed worker is failed and retried up to ``retries`` times.
    """
    check_storage(url)
    journal = journal_path(url)
    if journal is not None:
        if not create and not journal.exists():
            raise UserError(f"storage {url} does not exist")
        journal.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(journal)))

    db = sqlite_path(url)
    engine_kwargs: dict = {}
    if db is not None:
        if not create and not db.exists():
            raise UserError(f"storage {url} does not exist (no study has run there yet)")
        db.parent.mkdir(parents=True, exist_ok=True)
        # WAL is a property of the database file: set once, kept by every later connection
        with sqlite3.connect(db, timeout=SQLITE_BUSY_TIMEOUT_S) as conn:
            conn.execute(f"PRAGMA journal_mode={SQLITE_JOURNAL_MODE}")
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    else:
        engine_kwargs["pool_pre_ping"] = True
    hb = heartbeat or HeartbeatSpec()

    def rdb() -> RDBStorage:
        return RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=hb.interval,
            grace_period=hb.grace,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=retries),
        )

    try:
        try:
            return rdb()
        except sqlalchemy.exc.IntegrityError:
            # two processes created the schema of a new database at once; the other one
            # won, so opening again finds the tables in place
            return rdb()
    except ImportError as e:
        raise UserError(f"storage {url}: missing database driver ({e}); "
                        "for PostgreSQL install sweeper[postgres]") from None
    except Exception as e:  # sqlalchemy raises many kinds for unreachable or refused servers
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot open storage {url}: {first}") from None


def study_exists(storage: BaseStorage, name: str) -> bool:
    return any(s.study_name == name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))
