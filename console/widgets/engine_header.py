"""The one-line header: engine state, role when attached, model, device, where rollback reads,
experiment and step, uptime."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from console.console_state import ConsoleState
from console.formatting import duration
from console.severity import severity_style
from console.text import visible
from console.widgets.paint_notice import PaintNotice
from engine.policy import STATE_SEVERITY, status_severity


class EngineHeader(PaintNotice, Static):
    DEFAULT_CSS = """
    EngineHeader { height: 1; width: 1fr; background: $panel; color: $foreground; }
    """

    def show(self, state: ConsoleState, now: float, *, source_label: str, readonly: bool, attachment: str = "") -> None:
        """`attachment`: this console's role and how many are attached, for a console attached over the socket."""
        app = self.app
        text = Text(no_wrap=True, overflow="ellipsis")
        engine_state = state.engine_state
        text.append(f" {engine_state.value.upper()} ", severity_style(app, STATE_SEVERITY.get(engine_state.value, "INFO"), badge=True))
        if readonly:
            text.append(" READ-ONLY ", "reverse bold")
        if attachment:
            text.append(f" {visible(attachment)} ", "reverse")
        if state.health is not None:
            text.append(" ")
            text.append(f" {state.health.status} ", severity_style(app, status_severity(state.health.status), badge=True))
        info = state.engine
        if info is not None:
            text.append(f" {visible(info.model) or '…'}", "bold")
            if info.device:
                text.append(f" · {info.device}/{info.dtype}")
            if state.rollback_memory is not None:
                text.append(" · rollback from " + ("memory" if state.rollback_memory.on else "disk"))
            experiment = info.experiment or "no experiment"
            text.append(f" · {visible(experiment)}")
            step = state.step.step if state.step else info.step
            name = state.step.name if state.step else info.step_name
            if step:
                text.append(f" step {step}")
                if name:
                    text.append(f" ({visible(name)})")
            if info.started_at:
                text.append(f" · up {duration(now - info.started_at)}")
        else:
            text.append(f" {source_label} · starting…")
        self.update(text, layout=False)  # one line, full width: a new text never changes the layout
