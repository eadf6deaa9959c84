"""The engine's socket server with real engines, sockets and clients (console.engine_client)."""

from __future__ import annotations

import json
import os
import socket
import stat
import time

import pytest

from console.engine_client import EngineClient, EngineClientError
from engine import commands as cmd
from engine import events as ev
from engine import protocol
from engine.alert_journal import append_alert, read_journal, read_recent
from engine.runtime.engine_view import journal_alerts
from engine.runtime.registry import live_engines
from engine.runtime.server import MAX_HANDSHAKES
from engine.runtime.server_connection import peer_allowed, peer_uid
from engine.runtime.socket_paths import MAX_SOCKET_PATH, connect, socket_path
from engine.store.store import CheckpointStore
from tests.engine_harness import KEEP_CHANGING, DEADLINE, engines, tiny_model_dir, write_experiment  # noqa: F401  (fixtures)



@pytest.fixture(autouse=True)
def _private_runtime_dir(tmp_path_factory, monkeypatch):
    """Registry and short links in a directory of this test session, not the user's."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path_factory.mktemp("xdg", numbered=True)))


class Seen:
    """Everything a client received, with waits."""

    def __init__(self, client: EngineClient):
        self.client = client
        self.events: list[ev.Event] = []

    def wait_for(self, predicate, timeout: float = DEADLINE):
        deadline = time.monotonic() + timeout
        checked = 0
        while True:
            self.events.extend(self.client.drain_events())
            for event in self.events[checked:]:
                if predicate(event):
                    return event
            checked = len(self.events)
            if time.monotonic() > deadline:
                raise AssertionError(f"not received within {timeout} s; last: {[e.kind for e in self.events[-20:]]}")
            self.client.wait_events(0.1)

    def command(self, command: cmd.Command) -> ev.CommandDone:
        command_id = self.client.submit(command)
        return self.wait_for(lambda e: isinstance(e, ev.CommandDone) and e.command_id == command_id)

    def of(self, cls):
        self.events.extend(self.client.drain_events())
        return [e for e in self.events if isinstance(e, cls)]


def attach(run_dir, **kwargs) -> Seen:
    client = EngineClient(socket_path(run_dir), **kwargs)
    client.start()
    return Seen(client)


def wait_until_attached(run_dir) -> Seen:
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            return attach(run_dir)
        except EngineClientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def raw_hello(path, **fields) -> tuple[socket.socket, protocol.LineReader, dict]:
    sock = connect(path)
    sock.sendall(protocol.encode(protocol.hello(**fields)))
    reader = protocol.LineReader(sock, protocol.MAX_SERVER_LINE)
    return sock, reader, reader.read(protocol.SERVER_TYPES)


def test_attach_gets_the_snapshot_then_live_events_and_on_detach_stop(tmp_path, tiny_model_dir, engines):
    run_dir = tmp_path / "run"
    driver = engines(tiny_model_dir, run_dir, serve=True, on_detach="stop")
    path = socket_path(run_dir)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and stat.S_IMODE(os.stat(run_dir).st_mode) == 0o700
    driver.wait_until(lambda: len(driver.engine.server.view.health) >= 3)  # a few periodic scans: a history
    seen = attach(run_dir)
    assert seen.client.role == "controller" and seen.client.server["pid"] == os.getpid()
    seen.wait_for(lambda e: isinstance(e, ev.EngineStateChanged) and e.state is ev.EngineState.IDLE)
    snapshot = seen.of(ev.Event)
    assert any(isinstance(e, ev.CheckpointList) and any(c.state == "baseline" for c in e.checkpoints) for e in snapshot)
    assert any(isinstance(e, ev.CouplingView) and e.groups for e in snapshot)
    assert any(isinstance(e, ev.PolicyInfo) and e.rules for e in snapshot)
    assert any(isinstance(e, ev.DriftMap) and e.layers for e in snapshot)
    assert sum(isinstance(e, ev.HealthSnapshot) for e in snapshot) >= 3
    assert any(isinstance(e, ev.Alert) and "Baseline checkpoint" in e.message for e in snapshot)
    done = seen.command(cmd.Save(purpose="over the socket"))
    assert done.ok and done.result.startswith("checkpoint_")
    seen.wait_for(lambda e: isinstance(e, ev.CheckpointSaved) and e.checkpoint.id == done.result)
    assert [info["socket"] for info in live_engines()] == [str(path)]
    seen.client.shutdown()  # the last console leaves: --on-detach stop stops the engine safely, by itself
    driver.wait_until(lambda: not driver.engine.is_alive())
    final = CheckpointStore(run_dir / "checkpoints", readonly=True).read_manifest(
        driver.engine.shutdown_result.checkpoint_id)
    assert final.metadata["purpose"] == "Final checkpoint at shutdown" and final.metadata["state"] == "shutdown"
    assert not os.path.lexists(path) and live_engines() == []


def test_controller_and_observer(tmp_path, tiny_model_dir, engines):
    run_dir = tmp_path / "run"
    experiment = write_experiment(tmp_path, KEEP_CHANGING)
    driver = engines(tiny_model_dir, run_dir, experiment=experiment, serve=True)
    controller, observer = attach(run_dir, name="first"), attach(run_dir, name="second")
    assert (controller.client.role, observer.client.role) == ("controller", "observer")
    observer.wait_for(lambda e: isinstance(e, ev.ExperimentStep) and e.step >= 2)
    refused = observer.command(cmd.Save(purpose="observer"))
    assert not refused.ok and "observer" in refused.message
    assert observer.command(cmd.Compare(checkpoint_a=controller.of(ev.CheckpointList)[-1].checkpoints[0].id)).ok
    observer.client.emergency_stop("observer ctrl+x")
    outcome = observer.wait_for(lambda e: isinstance(e, ev.RunOutcome))
    assert outcome.outcome == "stopped"
    controller.wait_for(lambda e: isinstance(e, ev.RunOutcome))
    assert any("observer ctrl+x" in a.message for a in driver.of(ev.Alert))

    observer.client.take_control()
    controller.wait_for(lambda e: isinstance(e, ev.Alert) and "now the observer" in e.message
                        and "second" in e.message)
    assert controller.client.role == "observer"
    assert not controller.command(cmd.Pause()).ok
    assert observer.command(cmd.Save(purpose="new controller")).ok

    readonly = attach(run_dir, readonly=True)
    assert readonly.client.role == "observer"
    readonly.client.emergency_stop("should not")
    readonly.wait_for(lambda e: isinstance(e, ev.Alert) and "refused" in e.message and "read-only" in e.message)
    for seen in (controller, observer, readonly):
        seen.client.shutdown()


def test_a_client_that_stops_reading_does_not_slow_the_engine(tmp_path, tiny_model_dir, engines):
    run_dir = tmp_path / "run"
    driver = engines(tiny_model_dir, run_dir, serve=True)
    stuck, _, hello = raw_hello(socket_path(run_dir), role="observer")
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    assert hello["t"] == "hello"
    server = driver.engine.server
    publish = driver.engine._events.publish
    for i in range(20_000):  # the publisher never waits for the stuck reader (a block would hang here)
        publish(ev.Alert(severity="INFO", message=f"flood {i} " + "x" * 200, source="test"))
        publish(ev.LogLine(text=f"line {i}"))
    stuck_connection = next(c for c in server.connections if c.number == 1)
    assert stuck_connection.outbox.pending() <= 2 * stuck_connection.outbox.capacity + 10
    fresh = attach(run_dir)  # the engine still serves others at once
    assert fresh.command(cmd.Compare(checkpoint_a=driver.of(ev.CheckpointList)[-1].checkpoints[0].id)).ok
    late, late_reader, _ = raw_hello(socket_path(run_dir), role="observer")  # reads only after the burst
    while json.loads(late_reader.read_line())["t"] != "snapshot_end":
        pass
    published = []  # more than a socket takes at once: gathered batches, the rest sent by the client's own thread
    for i in range(400):
        for event in (ev.ExperimentStep(experiment="burst", step=i), ev.HealthSnapshot(status="OK", step=i),
                      ev.LogLine(text=f"burst {i}", source="test"),
                      ev.Alert(severity="INFO", message=f"burst {i} " + "x" * 500)):
            publish(event)
            published.append(event)
    fresh.wait_for(lambda e: isinstance(e, ev.HealthSnapshot) and e.step == 399)
    fresh.wait_for(lambda e: isinstance(e, ev.Alert) and e.message.startswith("burst 399 "))
    late_events = []
    while not late_events or not (isinstance(late_events[-1], ev.Alert) and late_events[-1].message.startswith("burst 399 ")):
        message = protocol.decode(late_reader.read_line(), protocol.SERVER_TYPES)
        if message["t"] == "event":
            late_events.append(protocol.read_event(message))

    def burst(events):
        return [(e.kind, getattr(e, "text", None), getattr(e, "message", None))
                for e in events if isinstance(e, (ev.LogLine, ev.Alert))
                and "burst" in (getattr(e, "text", None) or e.message)]

    def steps(events):
        return [e.step for e in events if isinstance(e, ev.ExperimentStep) and e.experiment == "burst"]

    assert burst(fresh.events) == burst(published) == burst(late_events)  # complete, in publish order
    for seen in (steps(fresh.events), steps(late_events)):  # steps: the latest wins, as a console shows only that
        assert seen[-1] == 399 and seen == sorted(set(seen)) and len(seen) < 400
    late.close()
    fresh.client.shutdown()
    stuck.close()


def test_slow_client_is_resynchronised_with_a_fresh_snapshot(tmp_path, tiny_model_dir, engines):
    run_dir = tmp_path / "run"
    driver = engines(tiny_model_dir, run_dir, serve=True)
    seen = attach(run_dir)
    connection = driver.engine.server.connections[0]
    for i in range(3 * connection.outbox.capacity):
        driver.engine._events.publish(ev.Alert(severity="INFO", message=f"burst {i}", source="test"))
    seen.wait_for(lambda e: isinstance(e, ev.Alert) and e.message == f"burst {3 * connection.outbox.capacity - 1}")
    messages = [a.message for a in seen.of(ev.Alert) if a.message.startswith("burst")]
    assert len(messages) == len(set(messages))  # a resync repeats nothing already received
    seen.client.shutdown()


def test_resync_after_a_private_alert_repeats_nothing(tmp_path, tiny_model_dir, engines):
    """The last alert a client got was its own (a refusal, never in the engine's picture): a resync still
    skips the shared alerts it had before."""
    run_dir = tmp_path / "run"
    driver = engines(tiny_model_dir, run_dir, serve=True)
    seen = attach(run_dir)
    connection = driver.engine.server.connections[0]
    for i in range(5):
        driver.engine._events.publish(ev.Alert(severity="INFO", message=f"before {i}", source="test"))
    seen.wait_for(lambda e: isinstance(e, ev.Alert) and e.message == "before 4")
    connection._tell("emergency stop refused: this console attached read-only")
    seen.wait_for(lambda e: isinstance(e, ev.Alert) and e.message.startswith("emergency stop refused"))
    connection.busy = True  # as while its own thread sends what its socket refused: the writer skips it
    for i in range(3 * connection.outbox.capacity):  # events that matter, none an alert: the outbox overflows
        driver.engine._events.publish(ev.CheckpointDeleted(checkpoint_id=f"gone {i}"))
    connection.busy = False
    driver.engine.server.fanout.wake()
    driver.engine._events.publish(ev.Alert(severity="INFO", message="after", source="test"))
    seen.wait_for(lambda e: isinstance(e, ev.Alert) and e.message == "after")
    assert seen.client.snapshots > 1  # the burst did force a resync
    messages = [a.message for a in seen.of(ev.Alert) if a.message.startswith(("before", "after"))]
    assert len(messages) == len(set(messages))
    seen.client.shutdown()


def test_consoles_owed_the_same_batch_share_it_and_each_resyncs_after_what_it_got(tmp_path, tiny_model_dir, engines):
    """Two consoles get the same alerts in shared batches (encoded once); a resync of either repeats none."""
    run_dir = tmp_path / "run"
    driver = engines(tiny_model_dir, run_dir, serve=True)
    first, second = attach(run_dir), attach(run_dir)
    for i in range(5):
        driver.engine._events.publish(ev.Alert(severity="INFO", message=f"shared {i}", source="test"))
    for seen in (first, second):
        seen.wait_for(lambda e: isinstance(e, ev.Alert) and e.message == "shared 4")
    for connection in driver.engine.server.connections:
        assert connection.last_alert is not None and connection.last_alert.message == "shared 4"
    later = driver.engine.server.connections[1]
    later.busy = True  # the writer skips it: its outbox overflows and it resynchronises
    for i in range(3 * later.outbox.capacity):
        driver.engine._events.publish(ev.CheckpointDeleted(checkpoint_id=f"gone {i}"))
    later.busy = False
    driver.engine.server.fanout.wake()
    driver.engine._events.publish(ev.Alert(severity="INFO", message="after", source="test"))
    for seen in (first, second):
        seen.wait_for(lambda e: isinstance(e, ev.Alert) and e.message == "after")
        messages = [a.message for a in seen.of(ev.Alert) if a.message.startswith(("shared", "after"))]
        assert messages == [f"shared {i}" for i in range(5)] + ["after"]
    assert second.client.snapshots > 1  # the skipped one did resynchronise (the other may have too, in such a flood)
    for seen in (first, second):
        seen.client.shutdown()


@pytest.mark.parametrize("garbage", [
    b"\xff\xfe\xfd\n",
    b"{this is not json}\n",
    b'{"t": "command", "id": 1, "c": {"command": "__import__"}}\n',
    b'{"t": "snapshot"}\n',
    b"x" * (protocol.MAX_CLIENT_LINE + 10),
    b'{"t": "command", "id": 1, "c": {"command": "save"',  # then the connection ends: truncated
])
def test_garbage_closes_only_that_connection(tmp_path, tiny_model_dir, engines, garbage):
    run_dir = tmp_path / "run"
    engines(tiny_model_dir, run_dir, serve=True)
    good = attach(run_dir)
    bad, reader, _ = raw_hello(socket_path(run_dir), role="controller")
    try:
        bad.sendall(garbage)
        if not garbage.endswith(b"\n"):
            bad.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the server may close first on an oversized line
    lines = []
    bad.settimeout(DEADLINE)
    try:
        while (line := reader.read_line()) is not None:
            lines.append(json.loads(line))
    except (OSError, protocol.ProtocolError):
        pass
    assert any(m.get("t") == "error" for m in lines) or not garbage.endswith(b"\n")
    bad.close()
    assert good.command(cmd.Save(purpose="still served")).ok
    good.client.shutdown()


def test_hello_mismatch_and_peer_uid(tmp_path, tiny_model_dir, engines):
    run_dir = tmp_path / "run"
    engines(tiny_model_dir, run_dir, serve=True)
    sock = connect(socket_path(run_dir))
    sock.sendall(b'{"t": "hello", "version": 99}\n')
    answer = json.loads(protocol.LineReader(sock, protocol.MAX_SERVER_LINE).read_line())
    assert answer["t"] == "error" and "version 99" in answer["message"] and "version 1" in answer["message"]
    sock.close()
    assert peer_uid(connect(socket_path(run_dir))) == os.getuid()
    silent = [connect(socket_path(run_dir)) for _ in range(MAX_HANDSHAKES)]  # connect, never say hello
    extra = connect(socket_path(run_dir))
    extra.settimeout(DEADLINE)
    answer = json.loads(protocol.LineReader(extra, protocol.MAX_SERVER_LINE).read_line())
    assert answer["t"] == "error" and "saying hello" in answer["message"]
    extra.close()
    for sock in silent:
        sock.close()
    attached = wait_until_attached(run_dir)  # the silent ones no longer count once they are gone
    attached.client.shutdown()
    assert peer_allowed(os.getuid()) and not peer_allowed(os.getuid() + 1) and not peer_allowed(0, own_uid=1000)
    with pytest.raises(EngineClientError, match="cannot connect"):
        EngineClient(tmp_path / "nothing" / "engine.sock").start()


def test_a_too_long_run_dir_is_served_through_a_short_link(tmp_path, tiny_model_dir, engines):
    run_dir = tmp_path / ("d" * 60) / ("e" * 60)
    assert len(os.fsencode(str(socket_path(run_dir)))) > MAX_SOCKET_PATH
    engines(tiny_model_dir, run_dir, serve=True)
    assert socket_path(run_dir).is_socket()
    seen = attach(run_dir)
    seen.wait_for(lambda e: isinstance(e, ev.EngineStateChanged))
    seen.client.shutdown()


def test_a_second_engine_on_the_same_run_dir_is_refused(tmp_path, tiny_model_dir, engines):
    from engine.runtime import Engine, EngineConfig
    from engine.runtime.server import EngineServerError

    run_dir = tmp_path / "run"
    engines(tiny_model_dir, run_dir, serve=True)
    with pytest.raises(EngineServerError, match="already serves"):
        Engine(EngineConfig(model=str(tiny_model_dir), run_dir=run_dir, experiment=None, serve=True)).start()


def test_reattaching_shows_what_happened_while_away(tmp_path, tiny_model_dir, engines):
    run_dir = tmp_path / "run"
    experiment = write_experiment(tmp_path, KEEP_CHANGING)
    driver = engines(tiny_model_dir, run_dir, experiment=experiment, serve=True, on_detach="pause")
    first = attach(run_dir)
    first.wait_for(lambda e: isinstance(e, ev.ExperimentStep))
    first.client.shutdown()  # the last console leaves: --on-detach pause holds the experiment
    driver.wait_for(lambda e: isinstance(e, ev.EngineStateChanged) and e.state is ev.EngineState.PAUSED)
    driver.engine._events.publish(ev.Alert(severity="HIGH", message="while nobody watched", source="test"))
    assert driver.command(cmd.Save(purpose="while away")).ok
    again = attach(run_dir)
    summary = again.wait_for(lambda e: isinstance(e, ev.Alert) and e.source == "away")
    assert "1 HIGH" in summary.message and "1 checkpoints" in summary.message and summary.severity == "HIGH"
    again.wait_for(lambda e: isinstance(e, ev.EngineStateChanged) and e.state is ev.EngineState.RUNNING)  # resumed
    again.client.shutdown()


def test_recent_alerts_are_read_from_the_end_of_the_journal(tmp_path):
    journal = tmp_path / "alerts.jsonl"
    for i in range(1200):
        append_alert(journal, {"time": float(i), "severity": "INFO", "message": f"alert {i} " + "x" * 40})
    with open(journal, "ab") as file:
        file.write(b'{"torn": ')  # a crash mid-line: skipped, never fatal
    recent = read_recent(journal, 100, keep=lambda r: r["time"] < 1000, block=1024)
    assert recent == [r for r in read_journal(journal).alerts if r["time"] < 1000][-100:]
    assert [a.message for a in journal_alerts(tmp_path, before=1000.0, limit=3)] == [
        f"alert {i} " + "x" * 40 for i in (997, 998, 999)]
    assert read_recent(journal, 5000) == read_journal(journal).alerts  # fewer than asked: all of them
