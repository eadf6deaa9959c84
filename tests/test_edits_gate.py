"""The edit gate's policy rules beyond ||dW||/||W||: each tensor against its own baseline
statistics, and prompt probes on a real tiny model with the byte tokenizer."""

from __future__ import annotations

import pytest
import torch

from engine.detection import BaselineStats
from engine.edits import EditJournal, EditRejected
from engine.edits.gate import GateRules
from engine.health_scan import scan_model
from engine.tokenizer import byte_tokenizer
from tests.conftest import make_tiny_qwen2
from tests.test_edits import assert_state, down_proj, snapshot


@pytest.fixture
def model():
    return make_tiny_qwen2(tied=True, layers=4)


def test_baseline_rule_catches_drift_the_per_edit_limit_misses(model, tmp_path):
    baseline = BaselineStats.from_scan(scan_model(model, grads=False, norms=True))
    drifted = down_proj(model, 1)
    with torch.no_grad():
        drifted.mul_(20)  # earlier changes, made before this journal watched
    with EditJournal(model, tmp_path / "run", rules=GateRules(baseline=baseline)) as journal:
        with journal.edit("nudge another layer") as ok:
            with torch.no_grad():
                down_proj(model, 2).mul_(1.5)  # ||dW||/||W|| = 0.5: within both rules
        assert ok.outcome == "committed"
        assert "baseline" in journal.show(ok.id).gate["baseline_rule"]
        before = snapshot(model)
        with pytest.raises(EditRejected) as info:
            with journal.edit("grow the drifted layer"):
                with torch.no_grad():
                    drifted.mul_(1.5)  # the same 0.5 relative change, but 30x its own baseline
        assert len(info.value.reasons) == 1
        assert "layers.1.mlp.down_proj" in info.value.reasons[0] and "x its baseline" in info.value.reasons[0]
        assert_state(model, before)
    # without baseline statistics the same edit passes: the rule is what rejected it
    with EditJournal(model, tmp_path / "other") as journal:
        with journal.edit("grow the drifted layer") as edit:
            with torch.no_grad():
                drifted.mul_(1.5)
        assert edit.outcome == "committed"


def _prompt_with_printable_answer(model, tokenizer) -> tuple[str, int, float]:
    """A prompt whose top next token is one printable ASCII byte (the byte tokenizer's id = byte),
    that token and its logit."""
    for prompt in ("The capital of France is", "Paris is in", "abc", "hello", "xyz", "0123", "QED"):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        top = int(logits.argmax())
        if 33 <= top < 127:
            return prompt, top, float(logits[top])
    raise AssertionError("no prompt with a printable answer")


def test_prompt_probe_rejects_an_edit_that_breaks_the_next_token(model, tmp_path):
    tokenizer = byte_tokenizer()
    prompt, top, logit = _prompt_with_printable_answer(model, tokenizer)
    probe = [(prompt, chr(top))]
    other = next(b for b in range(33, 127) if b != top and chr(b) not in prompt)
    with EditJournal(model, tmp_path / "run", tokenizer=tokenizer) as journal:
        with journal.edit("harmless", probe=probe) as ok:
            with torch.no_grad():
                down_proj(model, 0).add_(1e-5)
        assert journal.show(ok.id).gate["probe"] == "1/1 prompts"
        before = snapshot(model)
        with pytest.raises(EditRejected) as info:
            with journal.edit("suppress the answer", probe=probe):
                with torch.no_grad():
                    # another token's output row made a scaled copy of the answer's, so its logit
                    # beats the answer's; one row of 300: ||dW||/||W|| stays well under the limit
                    rows = model.lm_head.weight
                    rows[other].copy_(rows[top] * (3.0 if logit > 0 else 0.5))
        [reason] = info.value.reasons
        assert reason.startswith("prompt probe:") and repr(chr(top)) in reason and repr(prompt) in reason
        assert_state(model, before)
    with pytest.raises(ValueError, match="tokenizer"):
        EditJournal(model, tmp_path / "bare").edit("x", probe=probe)
