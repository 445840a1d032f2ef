"""Errors that carry a user-facing message and an exit code."""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """Bad input from the user: the CLI prints the message on one line and exits 2.

    Raised before anything is written, so a failed command leaves no trace.
    """

    exit_code = 2


class SweepFailed(Exception):
    """A run that started but could not finish (exit code 1)."""

    exit_code = 1


def first_line(error: BaseException | str) -> str:
    """The first line of an error's message ("" when it has none), for one-line reports."""
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def save_traceback(path: Path) -> bool:
    """Write the traceback of the exception being handled to ``path``; False if it cannot be
    written (the error it belongs to is reported either way)."""
    import traceback

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(traceback.format_exc())
    except OSError:
        return False
    return True
