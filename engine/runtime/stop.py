"""Stopping a running experiment: a flag, forward pre-hooks, and an asynchronous exception.

An emergency stop must not wait behind queued commands or for the experiment's
good will. Three layers, cheapest first:

1. `StopSignal.check()` at every `ctx.step()` boundary;
2. a forward pre-hook on every module of the model (one attribute read per
   module call), so a running forward pass aborts at the next module;
3. `StopSupervisor`: if the engine thread is still inside the experiment
   `grace` seconds after the request, it raises `EmergencyStopRequested`
   asynchronously in that thread (PyThreadState_SetAsyncExc), so even a
   pure-Python loop that never calls step() stops. The supervisor never
   touches the model. An async exception is delivered between bytecodes: a
   single long C call (a big matmul, `time.sleep`) finishes first.

`EmergencyStopRequested` derives from BaseException so that an experiment's
`except Exception:` cannot swallow it. No torch import here.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from typing import Any, Iterator

EMERGENCY = "emergency"
SHUTDOWN = "shutdown"


class EmergencyStopRequested(BaseException):
    """Raised inside the experiment to unwind it; `reason` says who asked."""

    def __init__(self, reason: str = "operator"):
        super().__init__(reason)
        self.reason = reason


class StopSignal:
    """The stop flag. `requested` is a plain attribute so hot paths read it cheaply."""

    def __init__(self) -> None:
        self.requested = False
        self.reason = ""
        self.mode = EMERGENCY
        self.requested_at = 0.0
        self._changed = threading.Condition()

    def request(self, reason: str = "operator", mode: str = EMERGENCY) -> None:
        """Ask the running experiment to stop. A shutdown never downgrades an emergency."""
        with self._changed:
            if self.requested and self.mode == EMERGENCY and mode == SHUTDOWN:
                return
            self.reason = reason
            self.mode = mode
            if not self.requested:
                self.requested_at = time.monotonic()
            self.requested = True
            self._changed.notify_all()

    def clear(self) -> None:
        with self._changed:
            self.requested = False
            self.reason = ""
            self.mode = EMERGENCY
            self._changed.notify_all()

    def check(self) -> None:
        """Raise EmergencyStopRequested if a stop was requested."""
        if self.requested:
            raise EmergencyStopRequested(self.reason or "operator")

    def wait_requested(self, timeout: float | None) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.requested, timeout)


def install_stop_hooks(model: Any, signal: StopSignal) -> list[Any]:
    """Register a forward pre-hook on every module of `model`; return the handles."""

    def stop_hook(module: Any, args: Any) -> None:
        if signal.requested:
            raise EmergencyStopRequested(signal.reason or "operator")

    return [module.register_forward_pre_hook(stop_hook) for module in model.modules()]


def remove_hooks(handles: list[Any]) -> None:
    for handle in handles:
        handle.remove()
    handles.clear()


def raise_in_thread(thread_id: int, exc_type: type[BaseException] | None) -> int:
    """Raise `exc_type` asynchronously in a thread (None clears a pending one); returns threads affected."""
    target = ctypes.c_ulong(thread_id)
    if exc_type is None:
        return ctypes.pythonapi.PyThreadState_SetAsyncExc(target, None)
    return ctypes.pythonapi.PyThreadState_SetAsyncExc(target, ctypes.py_object(exc_type))


class StopSupervisor:
    """Raises the stop exception in the engine thread when the experiment ignores the flag.

    Use `with supervisor.guard():` around the experiment call in the engine
    thread; outside that region nothing is ever raised asynchronously.
    """

    def __init__(self, signal: StopSignal, grace: float = 2.0):
        self.signal = signal
        self.grace = max(0.0, float(grace))
        self.async_raises = 0
        self._lock = threading.Lock()
        self._thread_id: int | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._watch, name="redline-stop-supervisor", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        self.enter()
        try:
            yield
        finally:
            self.leave()

    def enter(self) -> None:
        """Enter the guarded region in the calling thread (`guard()` is enter + leave)."""
        with self._lock:
            self._thread_id = threading.get_ident()

    def leave(self) -> None:
        """Leave the guarded region and cancel an async exception not yet delivered."""
        while True:
            try:
                with self._lock:
                    tid, self._thread_id = self._thread_id, None
                    if tid is not None:
                        raise_in_thread(tid, None)
                return
            except EmergencyStopRequested:
                continue

    def close(self) -> None:
        self._closed = True
        with self.signal._changed:
            self.signal._changed.notify_all()
        self._thread.join(timeout=2.0)

    def _watch(self) -> None:
        while not self._closed:
            if not self.signal.wait_requested(timeout=0.5):
                continue
            deadline = self.signal.requested_at + self.grace
            while not self._closed and self.signal.requested:
                now = time.monotonic()
                if now < deadline:
                    time.sleep(min(deadline - now, 0.02))
                    continue
                with self._lock:
                    if self._thread_id is not None and self.signal.requested:
                        raise_in_thread(self._thread_id, EmergencyStopRequested)
                        self.async_raises += 1
                deadline = now + self.grace
