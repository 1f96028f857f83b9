"""Eval progress: a tqdm bar (problems/s, ETA) in a terminal, plain lines in a log.

A bar redrawn with carriage returns is unreadable in a CI log or `> eval.log`, and no output at
all looks like a hang, so when the stream is not a terminal we print one line each time another
10% is done or a minute has passed, whichever comes first:

    eval: 320/700 problems (45%), 51.2 problems/s, ETA 00:07
"""
from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

LINE_EVERY_FRACTION = 0.1
LINE_EVERY_S = 60.0


class Progress:
    """update(n) after each batch; close() at the end. `unit`: 'problem' (one sample each) or 'sample'."""

    def __init__(self, total: int, unit: str = "problem", desc: str = "eval", stream=None, enabled: bool = True,
                 clock=time.monotonic):
        self.total, self.unit, self.desc, self.clock = total, unit, desc, clock
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and total > 0
        self.done, self.t0 = 0, clock()
        self.last_line_at, self.last_line_done = self.t0, 0
        self.bar = None
        if self.enabled and self.stream.isatty():
            self.bar = tqdm(total=total, unit=unit, desc=desc, file=self.stream, dynamic_ncols=True, mininterval=0.5)

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            return
        now = self.clock()
        if (self.done - self.last_line_done >= LINE_EVERY_FRACTION * self.total or now - self.last_line_at >= LINE_EVERY_S
                or self.done >= self.total):
            print(self.line(now), file=self.stream, flush=True)
            self.last_line_at, self.last_line_done = now, self.done

    def line(self, now: float) -> str:
        """'eval: 320/700 problems (45%), 51.2 problems/s, ETA 00:07'"""
        rate = self.done / max(now - self.t0, 1e-9)
        eta_text = tqdm.format_interval((self.total - self.done) / rate) if rate > 0 else "?"
        return (f"{self.desc}: {self.done}/{self.total} {self.unit}s ({100 * self.done / self.total:.0f}%), "
                f"{rate:.1f} {self.unit}s/s, ETA {eta_text}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
