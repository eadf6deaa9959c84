"""GcPacing: Python's full garbage collections, moved off the moments an operator waits for an answer.

A full (oldest-generation) collection scans every object the interpreter tracks. In the console, with
Textual's widget tree, its styles and the engine's snapshot, that was ~90,000 objects and stopped the app
(and the thread that writes frames to the terminal) for 40-95 ms on two cores, at whatever moment the
collector chose: the slowest save answers of bench/attach.py part 5 were drawn that much later. So, for a
console on a real terminal:

- once the first screen is up, everything alive is collected once and frozen (`gc.freeze`): the
  widget tree and styles are never scanned again, and later full collections take a fraction of the time;
- automatic full collections are off; `tick()`, called about once a second, runs one when the collector
  would have (as many younger collections since the last one as its own threshold says) and the console
  is quiet: no key for QUIET seconds and no answer awaited, or at the latest when LATEST times that many
  younger collections have passed. Younger generations stay automatic (a few milliseconds each).

`stop()` puts the collector back as it was (the frozen objects are scanned again from then on). From
Python 3.14 the collector is incremental (no long full pauses) and its thresholds mean something else:
there only the freeze is done.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable

QUIET = 2.0  # seconds without a key before a full collection may run
LATEST = 10  # a full collection runs anyway once this many times its usual interval has passed
HELD = 1 << 30  # the oldest generation's threshold while paced: never reached
PACED = sys.version_info < (3, 14)  # a stop-the-world full collection: pace it


class GcPacing:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.collections = 0  # full collections run by tick()
        self._last_key = clock()
        self._threshold: tuple[int, int, int] | None = None

    @property
    def active(self) -> bool:
        return self._threshold is not None

    def start(self) -> None:
        """Collect, freeze what survives, and hold back automatic full collections."""
        if self.active:
            return
        gc.collect()
        gc.freeze()
        self._threshold = gc.get_threshold()
        if PACED:
            young, middle, _ = self._threshold
            gc.set_threshold(young, middle, HELD)

    def key_pressed(self) -> None:
        self._last_key = self.clock()

    def tick(self, *, awaiting: bool = False) -> bool:
        """Run a full collection if one is due and the console is quiet (or it is long overdue); True if it ran."""
        if not self.active or not PACED:
            return False
        usual = self._threshold[2]
        since = gc.get_count()[2]  # younger collections since the last full one
        quiet = not awaiting and self.clock() - self._last_key >= QUIET
        if since >= usual * LATEST or (since >= usual and quiet):
            gc.collect(2)
            self.collections += 1
            return True
        return False

    def stop(self) -> None:
        if not self.active:
            return
        gc.set_threshold(*self._threshold)
        self._threshold = None
        gc.unfreeze()
