"""`ctx.journal` / `ctx.edit` in an experiment the engine runs."""

from __future__ import annotations

import torch

from engine.edits.records import JournalDB
from engine.commands import RunExperiment
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
        ctx.step("edited")
"""


def test_experiment_edits_through_the_context(tmp_path, engines, tiny_model_dir):  # noqa: F811
    experiment = write_experiment(tmp_path, EDITING)
    driver = engines(tiny_model_dir, tmp_path / "run")
    weight = driver.core.model.model.layers[0].mlp.down_proj.weight
    original = weight.detach().clone()
    assert driver.command(RunExperiment(path=str(experiment))).ok
    assert driver.wait_outcome() == "finished"
    assert torch.equal(weight.detach().view(torch.uint8), original.view(torch.uint8))
    db = JournalDB(tmp_path / "run" / "edits", create=False)
    assert [(r.description, r.outcome, r.kind) for r in db.list()] == [
        ("small", "committed", "edit"), ("disabling", "rejected", "edit"), ("revert edit 1: small", "committed", "revert")]
    db.close()
