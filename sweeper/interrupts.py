"""Ctrl-C and SIGTERM, from a command's first instruction to its last.

One flag per process (signal handlers are per process). The first signal is acted on and
every later one is ignored, so a second Ctrl-C cannot cut short the clean-up the first
started. Where the first one lands decides what it does:

- *armed* (start-up, training): KeyboardInterrupt at once; nothing half-written can be left.
- *disarmed* (storage writes, the sampler, writing results): only the flag is set, and the
  code raises at the next safe point (``check``) or finishes what it was writing.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class _Interrupt:
    """The process's interrupt flag (``INTERRUPT``); see the module docstring."""

    def __init__(self) -> None:
        self.requested = False
        self.armed = False

    def reset(self, *, armed: bool = False) -> None:
        self.requested = False
        self.armed = armed

    def handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            return
        self.requested = True
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt

    def check(self) -> None:
        """Raise KeyboardInterrupt here if a signal came at a moment that was not safe."""
        if self.requested:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        """While the block runs, a signal raises KeyboardInterrupt at once."""
        self.check()
        self.armed = True
        try:
            yield
        finally:
            self.armed = False

    @contextlib.contextmanager
    def shielded(self) -> Iterator[None]:
        """A write a signal must not interrupt half-way: a signal waits until the block is
        done, and is raised then if the code around it was armed."""
        was, self.armed = self.armed, False
        try:
            yield
        finally:
            self.armed = was
        if was:
            self.check()


INTERRUPT = _Interrupt()  # one per process, as signal handlers are


def install_interrupt_handlers() -> None:
    """SIGINT and SIGTERM both stop the work as Ctrl-C does, once (main thread only)."""
    signal.signal(signal.SIGINT, INTERRUPT.handler)
    signal.signal(signal.SIGTERM, INTERRUPT.handler)


@contextlib.contextmanager
def handling(*, armed: bool = False, restore: bool = True) -> Iterator[None]:
    """SIGINT and SIGTERM go to a fresh ``INTERRUPT`` (``armed`` or not) while the block runs,
    and the previous handlers come back after it when ``restore``. Handlers can only be set
    from the main thread: elsewhere only the flag is reset."""
    INTERRUPT.reset(armed=armed)
    main = is_main_thread()
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    if main:
        install_interrupt_handlers()
    try:
        yield
    finally:
        if main and restore:
            signal.signal(signal.SIGINT, previous[0])
            signal.signal(signal.SIGTERM, previous[1])


def is_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
