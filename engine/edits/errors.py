"""What the edit journal raises; each message says what happened to the model and what to do."""

from __future__ import annotations


class EditRejected(Exception):
    """The edit gate rejected an edit; the tensors it touched were put back bit for bit.

    `reasons`: one line per failed check; `edit_id`: its journal entry (outcome "rejected").
    """

    def __init__(self, description: str, reasons: list[str], edit_id: int | None = None):
        self.description = description
        self.reasons = list(reasons)
        self.edit_id = edit_id
        where = f" (journal entry {edit_id})" if edit_id is not None else ""
        super().__init__(f"edit {description!r} rejected{where}; the touched tensors were put back bit for "
                         "bit. Reasons: " + "; ".join(self.reasons))


class RevertRefused(Exception):
    """A revert was not done: later committed edits touched the same tensors (`later`: their ids),
    or the edit is not a live committed edit. The model was not changed."""

    def __init__(self, message: str, later: list[int] | None = None):
        self.later = list(later or [])
        super().__init__(message)


class RevertFailed(Exception):
    """A revert could not be verified or its pre-edit content is missing or damaged; the model
    was not changed."""


class JournalBusy(Exception):
    """Another journal (another engine or process) holds the model of this run directory."""


class JournalWriteFailed(Exception):
    """The journal's writer could not make an edit durable (its pre-edit blob or its row): the
    edit's change is in the model, not yet on record. `cause`: the error it met."""

    def __init__(self, message: str, cause: BaseException | None = None):
        self.cause = cause
        super().__init__(message)
