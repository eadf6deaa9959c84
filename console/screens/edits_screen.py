"""The Edits screen: the run's edit journal, live, and reverting one edit after a confirmation.

The console never reads the journal itself: the engine sends every entry (EditRecorded) and
answers PlanRevert with what a revert would undo (RevertPlanned), shown in the confirmation;
a confirmed revert is a RevertEdit command naming exactly the edits confirmed, so the engine
refuses it if the journal changed in between.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label

from console.screens.edits_revert import revert_question
from console.text import visible
from console.widgets.edit_detail import EditDetail
from console.widgets.edit_table import EditTable
from engine import commands as cmd
from engine.events import CommandDone, RevertPlanned


class EditsChanged(Message):
    """The app's state has new or changed journal entries."""


class RevertPlanArrived(Message):
    """The engine answered a PlanRevert."""

    def __init__(self, plan: RevertPlanned) -> None:
        super().__init__()
        self.plan = plan


class EditsScreen(Screen[None]):
    BINDINGS = [
        Binding("r", "revert", "Revert", tooltip="Revert the selected edit (shows what will change, asks first)"),
        Binding("escape,e,q", "close", "Back", tooltip="Back to the console"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._asked: int | None = None  # the edit whose plan this screen asked for

    def compose(self) -> ComposeResult:
        yield Label("", id="edits-title")
        yield EditTable(id="edit-table")
        with VerticalScroll(id="edit-detail-box"):
            yield EditDetail(id="edit-detail")
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_edits()
        self.query_one(EditTable).focus()

    @property
    def edits(self) -> dict:
        return self.app.state.edits

    def refresh_edits(self) -> None:
        entries = tuple(self.edits.values())
        live = sum(1 for e in entries if e.entry == "edit" and e.outcome == "committed" and e.reverted_by is None)
        rejected = sum(1 for e in entries if e.outcome != "committed")
        self.query_one("#edits-title", Label).update(
            f"Edit journal: {len(entries)} entries shown, {live} live, {rejected} rejected or failed")
        self.query_one(EditTable).show(entries)
        self._show_selected()

    def _show_selected(self) -> None:
        selected = self.query_one(EditTable).selected_id
        self.query_one(EditDetail).show(self.edits.get(selected) if selected is not None else None)

    def on_data_table_row_highlighted(self, _event: DataTable.RowHighlighted) -> None:
        self._show_selected()

    def on_edits_changed(self, _message: EditsChanged) -> None:
        self.refresh_edits()

    def action_revert(self) -> None:
        if self.app.readonly:
            self.notify("revert refused: this console is read-only.", title="Read-only", severity="warning")
            return
        selected = self.query_one(EditTable).selected_id
        info = self.edits.get(selected) if selected is not None else None
        if info is None:
            self.notify("No edit selected.", severity="warning")
            return
        if info.entry != "edit" or info.outcome != "committed" or info.reverted_by is not None:
            why = (f"it is the revert of edit {info.reverts}" if info.entry == "revert" else
                   f"it was reverted by entry {info.reverted_by}" if info.reverted_by is not None else
                   f"it was {info.outcome}: the gate already put its tensors back")
            self.notify(visible(f"Edit {info.id} cannot be reverted: {why}."), severity="warning", markup=False)
            return
        self._asked = info.id
        self.app.send(cmd.PlanRevert(edit_id=info.id), self._refused)

    def _refused(self, done: CommandDone) -> None:
        if not done.ok:
            self._asked = None
            self.notify(visible(f"revert refused: {done.message}"), title="Revert", severity="error", markup=False)

    def on_revert_plan_arrived(self, message: RevertPlanArrived) -> None:
        plan = message.plan
        if plan.edit_id != self._asked:
            return
        self._asked = None

        def answered(yes: bool | None) -> None:
            if yes:
                self.app.send(cmd.RevertEdit(edit_id=plan.edit_id, cascade=bool(plan.later), expected=plan.edits),
                              self._reverted)

        self.app.push_screen(revert_question(plan, self.edits), answered)

    def _reverted(self, done: CommandDone) -> None:
        if done.ok:
            self.notify(visible(done.message), title="Revert", markup=False)
        else:
            self.notify(visible(f"revert failed: {done.message}"), title="Revert", severity="error", markup=False)

    def action_close(self) -> None:
        self.dismiss(None)
