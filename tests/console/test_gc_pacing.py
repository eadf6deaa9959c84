"""GcPacing with the real collector: what lives at start is frozen, no full collection runs while keys come
or an answer is awaited, one runs when it is due and the console is quiet, and stop() gives the collector
back as it was."""

from __future__ import annotations

import gc

import pytest

from console import gc_pacing
from console.gc_pacing import GcPacing


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def full_collection_due(threshold: tuple[int, int, int]) -> None:
    """As many younger (generation 1) collections as make a full one due (by the usual threshold)."""
    for _ in range(threshold[2] + 1):
        gc.collect(1)


@pytest.mark.skipif(not gc_pacing.PACED, reason="an incremental collector (Python 3.14+) is only frozen, not paced")
def test_full_collections_wait_for_a_quiet_console_and_stop_restores_the_collector():
    threshold = gc.get_threshold()
    clock = Clock()
    pacing = GcPacing(clock)
    try:
        pacing.start()
        assert gc.get_freeze_count() > 0 and gc.get_threshold()[2] == gc_pacing.HELD
        full_collection_due(threshold)
        assert gc.get_count()[2] >= threshold[2]  # the collector itself ran none: it is held back

        pacing.key_pressed()
        assert not pacing.tick()  # a key just came
        clock.now += gc_pacing.QUIET
        assert not pacing.tick(awaiting=True)  # an answer is awaited
        assert pacing.tick() and pacing.collections == 1
        assert gc.get_count()[2] == 0
        assert not pacing.tick()  # nothing due now

        pacing.key_pressed()
        for _ in range(gc_pacing.LATEST):
            full_collection_due(threshold)
        assert pacing.tick(awaiting=True)  # long overdue: it runs whatever the console is doing
    finally:
        pacing.stop()
    assert gc.get_threshold() == threshold and gc.get_freeze_count() == 0
    assert not pacing.tick()  # stopped: nothing more
