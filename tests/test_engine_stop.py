"""The stop mechanism on its own: flag, forward pre-hooks, asynchronous exception."""

from __future__ import annotations

import threading
import time

import pytest

from engine.runtime.stop import (
    EMERGENCY,
    SHUTDOWN,
    EmergencyStopRequested,
    StopSignal,
    StopSupervisor,
    install_stop_hooks,
    remove_hooks,
)
from tests.conftest import make_tiny_qwen2


def test_stop_exception_is_not_an_exception():
    # a user's `except Exception` must not swallow it
    assert not issubclass(EmergencyStopRequested, Exception)
    signal = StopSignal()
    signal.check()
    signal.request("test")
    with pytest.raises(EmergencyStopRequested, match="test"):
        try:
            signal.check()
        except Exception:  # noqa: BLE001 - what a careless experiment does
            pass


def test_shutdown_never_downgrades_an_emergency():
    signal = StopSignal()
    signal.request("operator", EMERGENCY)
    signal.request("shutdown", SHUTDOWN)
    assert signal.mode == EMERGENCY and signal.reason == "operator"
    signal.clear()
    signal.request("shutdown", SHUTDOWN)
    signal.request("operator", EMERGENCY)
    assert signal.mode == EMERGENCY


def test_forward_hooks_abort_a_forward_pass_and_are_removable():
    import torch

    model = make_tiny_qwen2()
    signal = StopSignal()
    handles = install_stop_hooks(model, signal)
    assert len(handles) == len(list(model.modules()))
    ids = torch.tensor([[1, 2, 3]])
    model(input_ids=ids)  # no stop requested: runs
    reached = []
    model.model.layers[1].register_forward_pre_hook(lambda m, a: reached.append("layer1"))
    # request the stop from inside the forward pass, as another thread would
    model.model.layers[0].mlp.register_forward_hook(lambda m, a, o: signal.request("mid-forward"))
    with pytest.raises(EmergencyStopRequested, match="mid-forward"):
        model(input_ids=ids)
    assert reached == []  # layer 1 never ran
    remove_hooks(handles)
    model(input_ids=ids)  # the flag is still set but the hooks are gone


def _run_guarded(supervisor: StopSupervisor, body) -> dict:
    outcome: dict = {}

    def target() -> None:
        try:
            with supervisor.guard():
                body()
            outcome["result"] = "returned"
        except EmergencyStopRequested:
            outcome["result"] = "stopped"

    thread = threading.Thread(target=target)
    thread.start()
    outcome["thread"] = thread
    return outcome


def test_supervisor_stops_a_pure_python_loop():
    signal = StopSignal()
    supervisor = StopSupervisor(signal, grace=0.1)
    try:
        def spin() -> None:
            n = 0
            while True:  # never calls step(), never runs a forward pass
                n += 1

        outcome = _run_guarded(supervisor, spin)
        time.sleep(0.05)
        signal.request("stuck")
        outcome["thread"].join(timeout=30)
        assert not outcome["thread"].is_alive()
        assert outcome["result"] == "stopped"
        assert supervisor.async_raises >= 1
    finally:
        signal.clear()
        supervisor.close()


def test_supervisor_does_not_raise_outside_the_guarded_region():
    signal = StopSignal()
    supervisor = StopSupervisor(signal, grace=0.05)
    try:
        caught = []

        def target() -> None:
            try:
                with supervisor.guard():
                    pass
                deadline = time.monotonic() + 0.5
                while time.monotonic() < deadline:  # outside the region: must not be interrupted
                    pass
            except EmergencyStopRequested:
                caught.append(True)

        thread = threading.Thread(target=target)
        thread.start()
        time.sleep(0.01)
        signal.request("late")
        thread.join(timeout=30)
        assert caught == [] and supervisor.async_raises == 0
    finally:
        signal.clear()
        supervisor.close()


def test_supervisor_keeps_raising_when_the_experiment_swallows_it():
    signal = StopSignal()
    supervisor = StopSupervisor(signal, grace=0.05)
    try:
        swallowed = []

        def stubborn() -> None:
            while True:
                try:
                    while True:
                        pass
                except BaseException:  # noqa: BLE001 - a hostile experiment
                    if len(swallowed) >= 2:
                        raise
                    swallowed.append(1)

        outcome = _run_guarded(supervisor, stubborn)
        signal.request("stubborn")
        outcome["thread"].join(timeout=30)
        assert outcome["result"] == "stopped" and len(swallowed) == 2
    finally:
        signal.clear()
        supervisor.close()
