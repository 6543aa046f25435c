"""``StopSignals``: SIGTERM and SIGINT recorded instead of killing the process mid-step, so that a run (and an
ablation between its rows) stops where it is consistent: after the current update, with a checkpoint."""

from __future__ import annotations

import signal
import time
from typing import Any

import torch
from accelerate import Accelerator


class StopSignals:
    """Records SIGTERM/SIGINT instead of dying mid-step; the previous handlers come back on exit.

    >>> with StopSignals() as stop:
    ...     stop.received is None
    True
    """

    def __init__(self) -> None:
        self.received: str | None = None  # the name of the first signal that arrived
        self.arrived: float | None = None  # time.monotonic() when this process learned of it
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
            outer = getattr(handler, "__self__", None)  # a StopSignals around this one (ablate's, between rows)
            if self.received and isinstance(outer, StopSignals):  # a signal that came as the run ended: pass it on
                outer.received, outer.arrived = outer.received or self.received, outer.arrived or self.arrived

    def _handle(self, signum: int, _frame: object) -> None:
        self.received = self.received or signal.Signals(signum).name
        self.arrived = self.arrived or time.monotonic()

    def requested(self, accelerator: Accelerator) -> bool:
        """Whether any process received a signal; with several processes all answer the same (one all-reduce)."""
        stopping = self.received is not None
        if accelerator.num_processes > 1:
            flag = torch.tensor(float(stopping), device=accelerator.device)
            stopping = accelerator.reduce(flag, reduction="sum").item() > 0
            self.received = self.received or ("a signal to another process" if stopping else None)
        if stopping:
            self.arrived = self.arrived or time.monotonic()
        return stopping

    def seconds_left(self, budget: float) -> float:
        """What is left of ``budget`` seconds counted from the signal (train.preempt_seconds), at least 0."""
        return max(0.0, budget - (time.monotonic() - (self.arrived or time.monotonic())))
