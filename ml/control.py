"""Control of long fits: rate-limited progress reports and prompt cancellation.

Any training loop in ``ml`` (VAE, classifier, lens) takes ``progress(fraction, info)`` and
``should_stop()`` callables; the app's worker passes ones that write the job row and read its
"cancel requested" flag, a notebook passes ``None``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

ProgressFn = Callable[[float, dict[str, Any]], None]
StopFn = Callable[[], bool]


class Stopped(Exception):
    """Raised by a fit when its ``should_stop()`` callable returned True (a cancelled job, not an error)."""


def check_stop(should_stop: StopFn | None) -> None:
    """Raise ``Stopped`` if ``should_stop`` says so (poll it once per batch)."""
    if should_stop is not None and should_stop():
        raise Stopped("stopped on request")


class Throttle:
    """Forward progress reports to ``callback`` at most once every ``interval`` seconds.

    The first report and every ``final=True`` report always go through, so a caller sees the
    start and the end (fraction 1.0) however fast the fit is. Fractions are clipped to [0, 1] and
    never go backwards, so a progress bar fed by this never jumps back.
    """

    def __init__(
        self,
        callback: ProgressFn | None,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (isinstance(interval, int | float) and math.isfinite(interval) and interval >= 0):
            raise ValueError(f"interval must be a finite number of seconds >= 0, got {interval!r}")
        self.callback = callback
        self.interval = float(interval)
        self.clock = clock
        self.last_time: float | None = None
        self.last_fraction = 0.0
        self.calls = 0

    def due(self) -> bool:
        """Whether a non-final report made now would go through (lets callers skip costly ``info``)."""
        if self.callback is None:
            return False
        return self.last_time is None or self.clock() - self.last_time >= self.interval

    def __call__(self, fraction: float, info: Mapping[str, Any] | None = None, *, final: bool = False) -> bool:
        """Report ``fraction`` done with ``info``; return whether the callback was called."""
        if self.callback is None:
            return False
        f = float(fraction)
        f = 0.0 if math.isnan(f) else min(max(f, 0.0), 1.0)
        f = max(f, self.last_fraction)
        now = self.clock()
        due = self.last_time is None or now - self.last_time >= self.interval
        if not (final or due):
            return False
        self.last_time, self.last_fraction = now, f
        self.calls += 1
        self.callback(f, dict(info or {}))
        return True


def sub_progress(progress: ProgressFn | None, lo: float, hi: float, **extra: Any) -> ProgressFn | None:
    """A progress callback mapping a sub-step's [0, 1] onto [lo, hi] of ``progress`` (None stays None).

    ``extra`` keys are added to every info dict (e.g. ``stage="selection"``).
    """
    if progress is None:
        return None
    return lambda f, info: progress(lo + (hi - lo) * float(f), {**info, **extra})
