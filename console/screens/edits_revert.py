"""The question asked before reverting an edit: which edits it undoes, and which tensors change."""

from __future__ import annotations

from textual.containers import VerticalScroll
from textual.widgets import Label, Static

from console.screens.confirm import ConfirmScreen
from console.text import shorten, visible
from engine.events import EditInfo, RevertPlanned

MAX_TENSORS = 20


def revert_question(plan: RevertPlanned, known: dict[int, EditInfo]) -> ConfirmScreen:
    """What `plan` reverts: the edit, the later edits a cascade also reverts (newest first), the tensors."""
    target = known.get(plan.edit_id)
    title = f"Revert edit {plan.edit_id}" + (f": {shorten(visible(target.description), 40)}" if target else "") + "?"
    lines = []
    if plan.later:
        lines.append(f"Later edit(s) {', '.join(map(str, plan.later))} touched the same tensors; "
                     f"they are reverted too, newest first:")
        for edit_id in plan.edits:
            info = known.get(edit_id)
            lines.append(f"  #{edit_id} {shorten(visible(info.description), 56) if info else ''}")
    else:
        lines.append("No later edit touched these tensors: only this edit is reverted.")
    tensors = "\n".join(f"  {visible(name)}" for name in plan.tensors[:MAX_TENSORS])
    if len(plan.tensors) > MAX_TENSORS:
        tensors += f"\n  … and {len(plan.tensors) - MAX_TENSORS} more"
    body = [*lines, Label(f"Tensors put back to their content from before ({len(plan.tensors)}):", classes="title"),
            VerticalScroll(Static(tensors, markup=False))]
    yes = f"Revert {len(plan.edits)} edits" if plan.later else "Revert"
    return ConfirmScreen(title, body, yes=yes, no="Cancel", width=76)
