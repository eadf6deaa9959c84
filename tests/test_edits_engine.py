"""`ctx.journal` / `ctx.edit` in an experiment the engine runs; the engine's edit events,
the policy's checkpoint on commit, and reverts asked for by a client (PlanRevert, RevertEdit)."""

from __future__ import annotations

import torch

from engine.codec import decode_event
from engine.commands import PlanRevert, RevertEdit, RunExperiment
from engine.edits.records import JournalDB
from engine.events import CheckpointSaved, EditRecorded, RevertPlanned
from tests.engine_harness import engines, tiny_model_dir, write_experiment  # noqa: F401

EDITING = """
    import torch
    from engine.edits import EditRejected

    def run(ctx):
        w = ctx.model.model.layers[0].mlp.down_proj.weight
        with ctx.edit("small", layer=0) as edit:
            with torch.no_grad():
                w.add_(1e-3)
        try:
            with ctx.edit("disabling", layer=0):
                with torch.no_grad():
                    w.mul_(50)
        except EditRejected as exc:
            ctx.log(f"rejected: {exc.reasons[0]}")
        ctx.journal.revert(edit.id)
        with ctx.edit("again", layer=0):
            with torch.no_grad():
                w.add_(1e-3)
        with ctx.edit("on top", layer=0):
            with torch.no_grad():
                w.add_(1e-3)
        ctx.step("edited")
"""


def test_experiment_edits_and_a_client_reverts_with_cascade(tmp_path, engines, tiny_model_dir):  # noqa: F811
    experiment = write_experiment(tmp_path, EDITING)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "policy.toml").write_text("[rules.edit_checkpoint]\nevery = 2\n")
    driver = engines(tiny_model_dir, run_dir)
    weight = driver.core.model.model.layers[0].mlp.down_proj.weight
    original = weight.detach().clone()
    assert driver.command(RunExperiment(path=str(experiment))).ok
    assert driver.wait_outcome() == "finished"
    db = JournalDB(run_dir / "edits", create=False)
    assert [(r.description, r.outcome, r.kind) for r in db.list()] == [
        ("small", "committed", "edit"), ("disabling", "rejected", "edit"), ("revert edit 1: small", "committed", "revert"),
        ("again", "committed", "edit"), ("on top", "committed", "edit")]
    # the policy asked for a checkpoint every 2 commits: after "again" (the 2nd), tagged with its id
    saved = [e.checkpoint for e in driver.of(CheckpointSaved) if e.checkpoint.state == "edit"]
    assert len(saved) == 1 and "edit-4" in saved[0].tags
    assert db.show(4).gate["checkpoint"] == saved[0].id and "checkpoint" not in db.show(5).gate

    # every entry reached the clients, and survives the JSON codec; the revert marks edit 1
    recorded = {e.edit.id: e.edit for e in driver.of(EditRecorded)}
    assert sorted(recorded) == [1, 2, 3, 4, 5] and recorded[4].checkpoint == saved[0].id
    assert recorded[2].reasons and "exceeds" in recorded[2].reasons[0]
    event = driver.of(EditRecorded)[-1]
    assert decode_event(event.to_dict()) == event

    # a client asks what reverting edit 4 would do: edit 5 touched the same tensor
    assert driver.command(PlanRevert(edit_id=4)).ok
    plan = driver.of(RevertPlanned)[-1]
    assert (plan.edits, plan.later, plan.tensors) == ((5, 4), (5,), ("model.layers.0.mlp.down_proj.weight",))
    refused = driver.command(RevertEdit(edit_id=4))
    assert not refused.ok and "5" in refused.message
    assert not driver.command(RevertEdit(edit_id=4, cascade=True, expected=(4,))).ok  # not what was confirmed
    assert not driver.command(RevertEdit(edit_id=2)).ok  # a rejected edit has nothing to revert
    done = driver.command(RevertEdit(edit_id=4, cascade=True, expected=plan.edits))
    assert done.ok, done.message
    assert torch.equal(weight.detach().view(torch.uint8), original.view(torch.uint8))
    driver.wait_until(lambda: len(driver.of(EditRecorded)) >= 7)
    reverts = [e.edit for e in driver.of(EditRecorded)[-2:]]
    assert [(r.entry, r.reverts) for r in reverts] == [("revert", 5), ("revert", 4)]
    db.close()


def test_the_attach_snapshot_carries_the_newest_edits_with_reverts_marked():
    from engine.events import EditInfo
    from engine.runtime.engine_view import RECENT_EDITS, EngineView

    view = EngineView(None, started_at=0.0)
    for i in range(1, RECENT_EDITS + 6):
        view.apply(EditRecorded(edit=EditInfo(id=i, entry="edit", description=f"e{i}", outcome="committed",
                                              created=float(i))))
    view.apply(EditRecorded(edit=EditInfo(id=RECENT_EDITS + 6, entry="revert", description="revert", outcome="committed",
                                          created=0.0, reverts=RECENT_EDITS)))
    shown = [e.edit for e in view.snapshot_events() if isinstance(e, EditRecorded)]
    assert [e.id for e in shown] == list(range(7, RECENT_EDITS + 7))
    assert next(e for e in shown if e.id == RECENT_EDITS).reverted_by == RECENT_EDITS + 6
