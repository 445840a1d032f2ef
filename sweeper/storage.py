"""Opening Optuna storages: SQLite (WAL, busy timeout), PostgreSQL/MySQL, journal files."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import optuna
import sqlalchemy.exc
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend

from . import _optuna_warnings  # noqa: F401  (silences Optuna's experimental warnings)
from .errors import UserError, first_line
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
        if not create and journal.stat().st_size == 0:
            raise UserError(f"storage {url}: {journal} is empty (0 bytes): it holds no study")
        journal.parent.mkdir(parents=True, exist_ok=True)
        try:
            return JournalStorage(JournalFileBackend(str(journal)))
        except Exception as e:  # the log is replayed on opening: a damaged line fails here
            raise UserError(f"storage {url}: {journal} is not an Optuna journal or is damaged "
                            f"({type(e).__name__}: {first_line(e)}); move it away or restore it from a copy") from None

    db = sqlite_path(url)
    engine_kwargs: dict = {}
    if db is not None:
        if not create and not db.exists():
            raise UserError(f"storage {url} does not exist (no study has run there yet)")
        if db.exists():
            check_sqlite_file(db, url, create=create)
        if create:  # a read-only command changes nothing, not even the journal mode
            db.parent.mkdir(parents=True, exist_ok=True)
            # WAL is a property of the database file: set once, kept by every later connection
            with contextlib.closing(sqlite3.connect(db, timeout=SQLITE_BUSY_TIMEOUT_S)) as conn:
                conn.execute(f"PRAGMA journal_mode={SQLITE_JOURNAL_MODE}")
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    else:
        engine_kwargs["pool_pre_ping"] = True
        if not create:
            _require_tables(url)
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
        raise UserError(f"cannot open storage {url}: {first_line(e) or type(e).__name__}") from None


def check_sqlite_file(db: Path, url: str, *, create: bool) -> None:
    """Refuse a file that is not an Optuna SQLite storage, or is damaged, with one line saying
    so (before anything opens it for writing). An empty file is an empty database: a new
    study may start there, a read-only command finds no study in it."""
    if db.is_file() and db.stat().st_size == 0:
        if create:
            return
        raise UserError(f"storage {url}: {db} is empty (0 bytes): it holds no study")
    if (cut := _truncated(db)) is not None:
        raise UserError(f"storage {url}: {db} is damaged ({cut}); move it away to start anew, or restore it "
                        "from a copy")
    try:
        # a plain reading connection: quick_check reads every page, so a truncated or torn
        # file is found here rather than half-way through a sweep
        with contextlib.closing(sqlite3.connect(db, timeout=SQLITE_BUSY_TIMEOUT_S)) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            verdict = [row[0] for row in conn.execute("PRAGMA quick_check(3)")]
    except sqlite3.DatabaseError as e:
        raise UserError(f"storage {url}: {db} is not an SQLite database or is damaged ({e}); "
                        "move it away to start anew, or restore it from a copy") from None
    if verdict != ["ok"]:
        raise UserError(f"storage {url}: {db} is damaged (SQLite's check: {first_line('; '.join(verdict))}); "
                        "move it away to start anew, or restore it from a copy")
    if tables and "studies" not in tables:
        raise UserError(f"storage {url}: {db} is an SQLite database of something else "
                        f"(tables {', '.join(sorted(tables)[:5])}), not an Optuna storage")
    if not tables and not create:
        raise UserError(f"storage {url}: {db} holds no study (an empty database)")


def _truncated(db: Path) -> str | None:
    """Why an SQLite file is shorter than its own header says (a cut copy), else None."""
    try:
        with db.open("rb") as f:
            header = f.read(100)
        size = db.stat().st_size
    except OSError:
        return None
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        return None  # not SQLite at all: the connection below says so
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    if pages and size < page_size * pages:
        return f"truncated: its header counts {page_size * pages} bytes, the file has {size}"
    return None


def _require_tables(url: str) -> None:
    """A read-only command on a server database: Optuna's tables must be there already
    (opening an RDBStorage would create them)."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        try:
            present = sqlalchemy.inspect(engine).has_table("studies")
        finally:
            engine.dispose()
    except ImportError as e:
        raise UserError(f"storage {url}: missing database driver ({e}); "
                        "for PostgreSQL install sweeper[postgres]") from None
    except Exception as e:
        raise UserError(f"cannot open storage {url}: {first_line(e) or type(e).__name__}") from None
    if not present:
        raise UserError(f"storage {url} holds no study (no Optuna tables in that database)")


def study_exists(storage: BaseStorage, name: str) -> bool:
    return any(s.study_name == name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))
