"""Preemption without lost work: Slurm's warning signal (SIGUSR2, `--signal=USR2@120` before the time limit) and
SIGTERM only set a flag; the loop finishes the optimizer step it is in, every rank agrees at the step boundary,
a complete checkpoint is written (collectively under DeepSpeed), and `Preempted` is raised. Under submitit the
stage job then hands the signal to submitit's own handler, which requeues the job (lingua's pattern); a rerun
resumes from that checkpoint, so no optimizer step is lost or run twice.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

from takd import dist

SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class Preempted(RuntimeError):
    """The stage saved a checkpoint at a step boundary after a preemption signal and stopped."""

    def __init__(self, stage: str, step: int, signum: int):
        self.step, self.signum = step, signum
        super().__init__(f"stage {stage} saved at optimizer step {step} after {signal.Signals(signum).name}; "
                         "rerun the same command to resume from there")


class PreemptionGuard:
    """Installed for the length of a stage (main thread only); restores the previous handlers on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}
        self._depth = 0  # re-entered (the launcher's guard passed down to run_stage): installed once

    def __enter__(self) -> PreemptionGuard:
        self._depth += 1
        if self._depth == 1 and threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self.previous[s] = signal.getsignal(s)
                signal.signal(s, self._flag)
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            for s, handler in self.previous.items():
                signal.signal(s, handler)

    def _flag(self, signum: int, frame: object) -> None:
        if self.signum is None:
            self.signum = signum

    def requested(self) -> bool:
        """True on every rank once any rank got a signal (a collective when there are several)."""
        return dist.any_true(self.signum is not None)

    def handler_before(self, signum: int) -> Callable[[int, Any], Any] | None:
        """The handler that was installed for `signum` before this guard (submitit's requeue), if callable."""
        handler = self.previous.get(signum)
        return handler if callable(handler) else None
