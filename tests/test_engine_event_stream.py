"""EventStream: order, coalescing, bounded memory, alerts never dropped, thread safety."""

from __future__ import annotations

import threading

import pytest

from engine.runtime.event_stream import EventStream
from engine.events import Alert, CommandDone, ExperimentStep, HealthSnapshot, LogLine, Progress


def test_drain_returns_publish_order_and_empties():
    stream = EventStream()
    events = [LogLine(text="a"), Alert(severity="INFO", message="b"), ExperimentStep(experiment="x", step=1)]
    for e in events:
        stream.publish(e)
    assert stream.drain() == events
    assert stream.drain() == []


def test_health_latest_wins_at_position_of_newest_publish():
    stream = EventStream()
    stream.publish(HealthSnapshot(status="OK", step=1))
    stream.publish(LogLine(text="between"))
    stream.publish(HealthSnapshot(status="WARNING", step=2))
    stream.publish(LogLine(text="after"))
    drained = stream.drain()
    assert [type(e).__name__ for e in drained] == ["LogLine", "HealthSnapshot", "LogLine"]
    assert drained[1].step == 2 and drained[1].status == "WARNING"


def test_progress_coalesced_per_task():
    stream = EventStream()
    for i in range(50):
        stream.publish(Progress(task="model", done=i, total=50))
        stream.publish(Progress(task="restore", done=i, total=50))
    drained = stream.drain()
    assert [(e.task, e.done) for e in drained] == [("model", 49), ("restore", 49)]


def test_bounded_buffer_drops_oldest_and_reports_it_but_never_alerts():
    stream = EventStream(capacity=100)
    for i in range(1000):
        stream.publish(LogLine(text=str(i)))
        if i % 10 == 0:
            stream.publish(Alert(severity="HIGH", message=f"alert {i}"))
        stream.publish(HealthSnapshot(status="OK", step=i))
    stream.publish(CommandDone(command_id=1, command="save", ok=True))
    assert stream.pending() <= 100 + 100 + 1 + 1 + 1
    drained = stream.drain()
    notice = drained[0]
    assert isinstance(notice, LogLine) and notice.source == "engine" and "900 events were dropped" in notice.text
    logs = [e.text for e in drained[1:] if isinstance(e, LogLine)]
    assert logs == [str(i) for i in range(900, 1000)]
    alerts = [e for e in drained if isinstance(e, Alert)]
    assert len(alerts) == 100
    assert sum(isinstance(e, HealthSnapshot) for e in drained) == 1
    assert isinstance(drained[-1], CommandDone)
    assert stream.dropped_total == 900


def test_max_events_keeps_the_rest_in_order():
    stream = EventStream()
    for i in range(10):
        stream.publish(LogLine(text=str(i)))
    stream.publish(HealthSnapshot(status="OK"))
    first = stream.drain(max_events=4)
    rest = stream.drain()
    assert [e.text for e in first] == ["0", "1", "2", "3"]
    assert [getattr(e, "text", "health") for e in rest] == [str(i) for i in range(4, 10)] + ["health"]


def test_capacity_must_be_positive():
    with pytest.raises(ValueError, match="capacity"):
        EventStream(capacity=0)


def test_concurrent_publishers_lose_no_alert():
    stream = EventStream(capacity=50)
    drained: list = []
    done = threading.Event()

    def publisher(tag: int) -> None:
        for i in range(2000):
            stream.publish(Alert(severity="LOW", message=f"{tag}-{i}"))
            stream.publish(LogLine(text="noise"))

    def consumer() -> None:
        while not done.is_set():
            drained.extend(stream.drain(max_events=64))
        drained.extend(stream.drain())

    threads = [threading.Thread(target=publisher, args=(t,)) for t in range(4)]
    reader = threading.Thread(target=consumer)
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    reader.join()
    alerts = [e.message for e in drained if isinstance(e, Alert)]
    assert len(alerts) == 8000 and len(set(alerts)) == 8000
    for tag in range(4):
        mine = [int(m.split("-")[1]) for m in alerts if m.startswith(f"{tag}-")]
        assert mine == sorted(mine)


def test_wait_wakes_on_publish():
    stream = EventStream()
    assert stream.wait(timeout=0.01) is False
    timer = threading.Timer(0.05, lambda: stream.publish(LogLine(text="x")))
    timer.start()
    assert stream.wait(timeout=10) is True
    timer.join()
