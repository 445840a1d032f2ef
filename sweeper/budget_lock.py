"""A lock around "count the budget, then create the trial", shared by every worker of a storage.

Without it, two workers that both see one trial left both start one and the
study overshoots its budget. The lock is held only from the count until the
new trial is RUNNING in the storage (milliseconds), never while training.

- SQLite and journal files: an exclusive ``flock`` on ``<file>.budget.lock`` beside the
  storage (workers on one machine, as those storages require). Not ``<file>.lock``: that is
  the path of Optuna's own journal lock, which takes a file there for a lock held and
  deletes it after 30 seconds as stale.
- PostgreSQL: a session advisory lock keyed by the study name (workers anywhere).
- Other storages: no lock; the budget can then overshoot by a trial per extra worker.
"""

from __future__ import annotations

import fcntl
import zlib
from pathlib import Path
from types import TracebackType
from typing import Any

from .storage import journal_path, sqlite_path

LOCK_SUFFIX = ".budget.lock"


class BudgetLock:
    """``acquire()``/``release()`` (idempotent), or ``with lock:``."""

    def __init__(self, storage_url: str, study_name: str) -> None:
        self.url = storage_url
        self.key = zlib.crc32(f"sweeper:{study_name}".encode()) & 0x7FFFFFFF
        self._file: Any = None
        self._conn: Any = None
        self._held = False
        path = sqlite_path(storage_url) or journal_path(storage_url)
        self._path = Path(f"{path}{LOCK_SUFFIX}") if path is not None else None
        self._postgres = storage_url.startswith("postgresql")

    def acquire(self) -> None:
        if self._held:
            return
        if self._path is not None:
            if self._file is None:
                self._file = self._path.open("a")
            fcntl.flock(self._file, fcntl.LOCK_EX)
        elif self._postgres:
            import sqlalchemy

            if self._conn is None:
                self._conn = sqlalchemy.create_engine(self.url, poolclass=sqlalchemy.pool.NullPool).connect()
            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
        elif self._conn is not None:
            import sqlalchemy

            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            self._conn.commit()

    def close(self) -> None:
        self.release()
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> BudgetLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
