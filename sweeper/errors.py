"""Errors that carry a user-facing message and an exit code."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: the CLI prints the message on one line and exits 2.

    Raised before anything is written, so a failed command leaves no trace.
    """

    exit_code = 2


class SweepFailed(Exception):
    """A run that started but could not finish (exit code 1)."""

    exit_code = 1
