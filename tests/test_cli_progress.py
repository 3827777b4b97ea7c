"""The CLI's progress lines: a line per stage, counts throttled, the last count always printed."""

from __future__ import annotations

import io

from recfuse.cli.progress import ProgressPrinter


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_stages_and_throttled_counts() -> None:
    clock, out = FakeClock(), io.StringIO()
    p = ProgressPrinter(out, every=2.0, clock=clock)
    p("loading model")
    clock.now += 1.25
    step = p.counter("embedding items", 100_000)
    for _ in range(10):  # ten batches of 10,000, 0.5 s each: a count line every 2 s, and the last one
        clock.now += 0.5
        step(10_000)
    p("building index")
    p("building index")  # the same stage again: nothing new to say
    p.line("epoch 1/2: val_recall@10 = 0.1234")
    assert out.getvalue().splitlines() == [
        "loading model ... (0.0 s)",
        "embedding items: 0/100,000 (1.2 s)",
        "embedding items: 40,000/100,000 (3.2 s)",
        "embedding items: 80,000/100,000 (5.2 s)",
        "embedding items: 100,000/100,000 (6.2 s)",
        "building index ... (6.2 s)",
        "epoch 1/2: val_recall@10 = 0.1234 (6.2 s)",
    ]
