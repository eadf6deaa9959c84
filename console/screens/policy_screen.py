"""The policy screen: the engine's active rules, thresholds and actions, and where each value came from.

Read-only: it shows the PolicyInfo the engine sent (the console never loads a
policy; the active one may belong to an engine in another process). A value's
origin is "default", "run dir" (the run directory's policy.toml) or
"--policy" (the file given on the command line).
"""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from console.text import literal, visible
from engine.events import PolicyInfo


def _table(*columns: str) -> Table:
    table = Table(box=None, pad_edge=False, show_header=True, header_style="bold", expand=True)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def policy_view(info: PolicyInfo | None) -> Group:
    """The files applied, the values they changed, every rule, then every threshold."""
    if info is None:
        return Group(Text("The engine has not sent its policy yet.", "dim"))
    heading = Text("Policy files applied, in order: " if info.sources else "No policy file: every value is the default.",
                   "bold")
    parts: list = [heading]
    parts += [literal(f"  {source}") for source in info.sources]
    changed = [s for s in info.settings if s.origin != "default"]
    if changed:
        table = _table("changed value", "now", "from")
        for s in changed:
            table.add_row(visible(s.name), visible(s.value), Text(visible(s.origin), "bold"))
        parts += [Text(""), table]
    rules = _table("rule", "on", "parameters", "actions", "from")
    for r in info.rules:
        rules.add_row(visible(r.rule), "on" if r.enabled else Text("off", "bold"), visible(r.params or "-"),
                      visible(r.actions), Text(visible(r.origin), "dim" if r.origin == "default" else "bold"))
    parts += [Text(""), rules]
    thresholds = _table("threshold", "value", "from", "meaning")
    for s in info.settings:
        if "." not in s.name:
            thresholds.add_row(visible(s.name), visible(s.value),
                               Text(visible(s.origin), "dim" if s.origin == "default" else "bold"), visible(s.meaning))
    parts += [Text(""), thresholds]
    return Group(*parts)


class PolicyScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,P", "close", "Close", tooltip="Back to the console")]
    DEFAULT_CSS = """
    PolicyScreen { align: center middle; }
    PolicyScreen > Vertical { width: 120; max-width: 100%; height: 100%; max-height: 100%; border: thick $accent; background: $surface; }
    PolicyScreen VerticalScroll { height: 1fr; padding: 0 1; }
    PolicyScreen .title { text-style: bold; padding: 0 1; }
    """

    def __init__(self, info: PolicyInfo | None) -> None:
        super().__init__()
        self.info = info

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Active policy (read-only)  ·  Esc closes", classes="title", markup=False)
            with VerticalScroll():
                yield Static(policy_view(self.info), id="policy-view")

    def action_close(self) -> None:
        self.dismiss(None)
