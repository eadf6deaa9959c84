"""The main screen: header, progress, the drift strip, the four panels, footer.

Large terminals (>= 120x36) show the panels as a grid; smaller ones show one
panel at a time behind a row of tabs ([ and ] switch).
"""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Container, Vertical
from textual.events import Resize
from textual.reactive import Reactive
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Tab, Tabs

from console.console_state import ConsoleState
from console.formatting import human_bytes
from console.widgets.alert_stream import AlertStream
from console.widgets.checkpoint_table import CheckpointTable
from console.widgets.console_footer import ConsoleFooter
from console.widgets.coupling_view import CouplingPanel
from console.widgets.drift_strip import DriftStrip
from console.widgets.engine_header import EngineHeader
from console.widgets.health_gauges import HealthGauges
from console.widgets.progress_panel import ProgressPanel
from console.widgets.save_prompt import SavePrompt

PANELS = (("health", "Health"), ("alerts", "Alerts"), ("checkpoints", "Checkpoints"), ("coupling", "Coupling"))
WIDE = (120, 36)  # columns, rows from which the grid layout is used


class MainScreen(Screen):
    # Textual repaints the whole screen when the focus moves (~40 ms at 160x48 on two cores); the widgets whose
    # look depends on the focus are restyled and repainted by the stylesheet anyway, so this repaints only them.
    focused: Reactive[Widget | None] = Reactive(None, repaint=False)

    def __init__(self, state: ConsoleState) -> None:
        """The panels are made here so the app holds them directly (no query per update)."""
        super().__init__(id="main")
        self.header = EngineHeader(id="header")
        self.progress = ProgressPanel(id="progress")
        self.drift = DriftStrip(id="drift")
        self.gauges = HealthGauges(id="gauges")
        self.coupling = CouplingPanel(id="coupling")
        self.checkpoints = CheckpointTable(id="checkpoints")
        self.alerts = AlertStream(state.stream, id="alerts")
        self.save_prompt = SavePrompt(id="save-prompt")
        self.footer = ConsoleFooter()

    def compose(self) -> ComposeResult:
        yield self.header
        yield self.progress
        yield self.drift
        yield Tabs(*(Tab(title, id=f"tab-{name}") for name, title in PANELS), id="panel-tabs")
        with Container(id="panels"):
            with Vertical(id="panel-health", classes="panel -current"):
                yield self.gauges
            with Vertical(id="panel-coupling", classes="panel"):
                yield self.coupling
            with Vertical(id="panel-checkpoints", classes="panel"):
                yield self.checkpoints
            with Vertical(id="panel-alerts", classes="panel"):
                yield self.alerts
        yield self.save_prompt
        yield self.footer

    def show_checkpoints(self, checkpoints: tuple, disk_usage: int) -> None:
        """The table, and in the panel's title how many there are and what the store takes on disk."""
        self.checkpoints.show(checkpoints)
        title = f"Checkpoints · {len(checkpoints)}" + (f" · {human_bytes(disk_usage)} on disk" if disk_usage else "")
        self.query_one("#panel-checkpoints").border_title = title

    def open_save_prompt(self) -> None:
        """The prompt takes the footer's line while it is open."""
        self.footer.display = False
        self.save_prompt.open()

    @on(SavePrompt.Closed)
    def _footer_back(self) -> None:
        self.footer.show_again()

    def on_screen_resume(self) -> None:
        """Back on top (a dialog closed): catch up with what the engine said meanwhile."""
        self.app.show_held_changes()

    def on_mount(self) -> None:
        for name, title in PANELS:
            self.query_one(f"#panel-{name}").border_title = title

    @on(Resize)
    def _choose_layout(self, event: Resize) -> None:
        columns, rows = event.size
        self.set_class(columns < WIDE[0] or rows < WIDE[1], "-compact")
        self.app.refresh_bindings()

    @property
    def compact(self) -> bool:
        return self.has_class("-compact")

    @on(Tabs.TabActivated, "#panel-tabs")
    def _show_panel(self, event: Tabs.TabActivated) -> None:
        event.stop()
        name = event.tab.id.removeprefix("tab-")
        for panel in self.query(".panel"):
            panel.set_class(panel.id == f"panel-{name}", "-current")

    def show_panel(self, name: str) -> None:
        self.query_one("#panel-tabs", Tabs).active = f"tab-{name}"

    def cycle_panel(self, step: int) -> None:
        tabs = self.query_one("#panel-tabs", Tabs)
        (tabs.action_next_tab if step > 0 else tabs.action_previous_tab)()
