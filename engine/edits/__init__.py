"""Edits as transactions: `from engine.edits import EditJournal, EditRejected`.

journal (EditJournal: edit, list, show, plan, revert, flush), transaction (one edit:
copy-on-write, gate, commit or roll back), writer (the thread that makes decided edits durable,
in order), pending (what it writes per edit, write-ahead), post_hashes (exact post-edit hashes
taken late), buffers (copy buffers mapped ahead), gate (the policy's checks and the probe),
probes (PromptProbe), content (host copies, hashes, pre-edit blobs), records (the SQLite journal; no
torch), report (entries as console events; no torch), owner (which process holds it; no
torch), errors, cli (`redline edits`). Names are loaded on first use, so `engine.edits.records`
and `engine.edits.cli` stay free of torch for the console's command line.
"""

from __future__ import annotations

_EXPORTS = {
    "EditJournal": "engine.edits.journal",
    "Edit": "engine.edits.transaction",
    "EditRejected": "engine.edits.errors",
    "RevertRefused": "engine.edits.errors",
    "RevertFailed": "engine.edits.errors",
    "JournalBusy": "engine.edits.errors",
    "JournalWriteFailed": "engine.edits.errors",
    "EditRecord": "engine.edits.records",
    "TensorChange": "engine.edits.records",
    "PromptProbe": "engine.edits.probes",
    "GateRules": "engine.edits.gate",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine.edits' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
