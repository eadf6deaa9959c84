"""ClientOutbox: latest-wins coalescing, drops of the rest counted, a resync instead of losing what matters."""

from __future__ import annotations

import time

from engine import events as ev
from engine.runtime.client_outbox import ClientOutbox


def test_publish_order_and_coalescing():
    box = ClientOutbox(capacity=10)
    box.put(ev.HealthSnapshot(status="OK", step=1))
    box.put(ev.Alert(severity="HIGH", message="a"))
    box.put(ev.HealthSnapshot(status="WARNING", step=2))
    box.put_private({"t": "clients", "count": 2})
    items, resync, dropped = box.take(everything=True)
    assert [getattr(i, "kind", i.get("t") if isinstance(i, dict) else None) for i in items] == \
        ["alert", "health", "clients"]
    assert items[1].step == 2 and not resync and dropped == 0
    assert box.take(everything=True) == ([], False, 0)


def test_the_rest_drops_oldest_and_counts():
    box = ClientOutbox(capacity=5)
    for i in range(12):
        box.put(ev.LogLine(text=str(i)))
    items, resync, dropped = box.take(everything=True)
    assert [e.text for e in items] == [str(i) for i in range(7, 12)] and dropped == 7 and not resync


def test_falling_behind_on_what_matters_asks_for_a_resync_and_stays_bounded():
    box = ClientOutbox(capacity=5)
    box.put_private(ev.CommandDone(command_id=7, command="save", ok=True))
    for i in range(1000):
        box.put(ev.Alert(severity="INFO", message=str(i)))
        assert box.pending() <= 7
    items, resync, _ = box.take()
    assert resync and [i.command_id for i in items] == [7]  # the snapshot stands for the alerts; the answer still goes


def test_closed_outbox_takes_nothing_more():
    box = ClientOutbox()
    box.close()
    box.put(ev.Alert(severity="INFO", message="late"))
    assert box.take(everything=True) == ([], False, 0)


def test_private_items_survive_a_resync_and_a_snapshot():
    box = ClientOutbox(capacity=3)
    box.put_private(ev.CommandDone(command_id=1, command="save", ok=True))
    for i in range(10):
        box.put(ev.Alert(severity="INFO", message=str(i)))
    box.discard_shared()
    box.put_private({"t": "role", "role": "observer"})
    items, resync, _ = box.take(everything=True)
    assert not resync and [type(i).__name__ for i in items] == ["CommandDone", "dict"]


def test_health_goes_at_its_own_pace_and_with_anything_that_matters():
    box = ClientOutbox(gather=0.0, health_every=3600.0)
    assert box.due() is None
    box.put(ev.HealthSnapshot(status="OK", step=1))
    assert box.due() <= time.monotonic()
    assert [i.step for i in box.take()[0]] == [1]  # the first health goes at once
    box.put(ev.HealthSnapshot(status="OK", step=2))
    assert box.due() > time.monotonic() + 3000  # the next one at the health pace
    box.put(ev.LogLine(text="routine"))
    assert box.due() < time.monotonic() + 3000
    items, _, _ = box.take()
    assert [i.kind for i in items] == ["log"]  # routine events go on; health waits for its time
    box.put(ev.HealthSnapshot(status="WARNING", step=3))
    box.put(ev.Alert(severity="HIGH", message="matters"))
    items, _, _ = box.take()
    assert [(i.kind, getattr(i, "step", None)) for i in items] == [("health", 3), ("alert", None)]
    box.put(ev.HealthSnapshot(status="OK", step=4))
    assert [i.step for i in box.take(everything=True)[0]] == [4]


def test_an_experiments_steps_coalesce_to_the_latest_in_publish_order():
    box = ClientOutbox(capacity=10)
    box.put(ev.ExperimentStep(experiment="a", step=1))
    box.put(ev.LogLine(text="between"))
    box.put(ev.ExperimentStep(experiment="a", step=2))
    box.put(ev.ExperimentStep(experiment="b", step=7))
    items, _, dropped = box.take(everything=True)
    assert [(i.kind, getattr(i, "step", None)) for i in items] == [("log", None), ("step", 2), ("step", 7)]
    assert dropped == 0


def test_a_writer_that_will_look_anyway_is_not_woken():
    from engine.runtime.client_outbox import WakeClock

    clock = WakeClock()
    notified = []
    notify = clock.cond.notify
    clock.cond.notify = lambda n=1: (notified.append(n), notify(n))
    box = ClientOutbox(gather=0.010, clock=clock)
    clock.wake_at = time.monotonic() + 0.005  # the writer looks again sooner than the step would be due
    before = clock.wake_at
    box.put(ev.ExperimentStep(experiment="a", step=1))
    assert clock.wake_at == before and not notified  # not woken
    box.take(everything=True)
    clock.wake_at = float("inf")  # the writer sleeps until woken
    box.put(ev.ExperimentStep(experiment="a", step=2))
    assert clock.wake_at <= time.monotonic() + 0.010  # woken, told when the step is due
    assert len(notified) == 1


def test_health_due_within_the_horizon_goes_with_the_batch():
    box = ClientOutbox(gather=0.0, health_every=0.5)
    box.put(ev.HealthSnapshot(status="OK", step=1))
    box.take()  # health just sent: the next is due in 0.5 s
    box.put(ev.HealthSnapshot(status="OK", step=2))
    box.put(ev.LogLine(text="routine"))
    assert [i.kind for i in box.take()[0]] == ["log"]  # by now: health waits
    box.put(ev.LogLine(text="routine again"))
    items = box.take(horizon=time.monotonic() + 1.0)[0]  # the writer serves it with a batch due sooner
    assert [i.kind for i in items] == ["health", "log"]
