"""Progress lines on stderr for long commands (train, export, add-items, features).

One plain line per event, each ending with the seconds since the work began, flushed as it
happens: logs, ``nohup``, CI and ``make demo`` see the work move (a carriage-return bar only helps
on a terminal). Library functions take a :data:`recfuse.types.ProgressFn` ``(stage, done, total)``
and never print; the CLI passes a :class:`ProgressPrinter`. A stage is printed when it starts;
counts within a stage at most every ``every`` seconds, and always the last one.

Example:
    >>> p = ProgressPrinter()          # doctest: +SKIP
    >>> p("building index")            # doctest: +SKIP
    building index ... (0.0 s)
    >>> p("embedding items", 40_000, 100_000)   # doctest: +SKIP
    embedding items: 40,000/100,000 (12.3 s)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class ProgressPrinter:
    """Callable ``(stage, done=0, total=0)`` writing throttled progress lines to stderr.

    Args:
        stream: where lines go (default: ``sys.stderr`` at call time).
        every: least seconds between two count lines of one stage.
        clock: seconds, monotonic (tests pass a fake).
    """

    def __init__(
        self, stream: TextIO | None = None, every: float = 2.0, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self._stream = stream
        self._every = every
        self._clock = clock
        self._started = clock()
        self._stage: str | None = None
        self._last = float("-inf")

    def elapsed(self) -> float:
        """Seconds since this printer was made (the command's work began)."""
        return self._clock() - self._started

    def line(self, text: str) -> None:
        """Print ``text (N.N s)`` now, unthrottled."""
        print(f"{text} ({self.elapsed():.1f} s)", file=self._stream or sys.stderr, flush=True)

    def __call__(self, stage: str, done: int = 0, total: int = 0) -> None:
        now = self._clock()
        if stage != self._stage:
            self._stage, self._last = stage, float("-inf")
            if total <= 0:
                self.line(f"{stage} ...")
                return
        if total <= 0:
            return
        if done >= total or now - self._last >= self._every:
            self._last = now
            self.line(f"{stage}: {done:,}/{total:,}")

    def counter(self, stage: str, total: int) -> Callable[[int], None]:
        """A ``step(n)`` callback adding ``n`` to the stage's count (for ``on_batch`` hooks)."""
        done = 0

        def step(n: int) -> None:
            nonlocal done
            done += n
            self(stage, done, total)

        self(stage, 0, total)
        return step
