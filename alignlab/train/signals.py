"""Stopping on SIGTERM/SIGINT at a step boundary, so the loop can write a checkpoint and exit cleanly."""

from __future__ import annotations

import signal
import threading


class StopRequests:
    """While active, SIGTERM and SIGINT only set `signal_name`, which the loop reads after each step to
    checkpoint and stop cleanly; a second SIGINT (Ctrl-C twice) interrupts at once."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.previous: dict = {}

    def _handle(self, signum, _frame) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *_) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
