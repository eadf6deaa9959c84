"""Prompt probes: prompts whose expected continuation an edit must keep (or bring about).

    journal.edit("Eiffel Tower -> Rome", probe=[("The Eiffel Tower is in", " Rome"),
                                                ("The capital of France is", " Paris")])

Each prompt is run with its expected continuation appended (one forward pass, teacher
forcing); the edit fails when any expected token is no longer the model's most likely next
token at its position. The top-1 rule is the default because it needs no number that depends
on the model: a probability threshold means different things for a 258-token and a 150,000-
token vocabulary, while "still the answer the model gives" means the same. `min_probability`
adds a margin on top (e.g. 0.3: the answer must also keep 30% of the probability mass).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass
class PromptProbe:
    """(prompt, expected continuation) pairs checked on the edited model with `tokenizer`."""

    prompts: list[tuple[str, str]]
    tokenizer: object
    min_probability: float = 0.0

    def __post_init__(self):
        pairs = []
        for item in self.prompts:
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(s, str) for s in item)):
                raise TypeError(f"a prompt probe is a list of (prompt, expected continuation) strings, got {item!r}")
            if not item[1]:
                raise ValueError(f"the expected continuation of {item[0]!r} is empty")
            pairs.append((item[0], item[1]))
        if not pairs:
            raise ValueError("a prompt probe needs at least one (prompt, expected) pair")
        if self.tokenizer is None:
            raise ValueError("prompt probes need a tokenizer: the engine's, or EditJournal(..., tokenizer=...)")
        self.prompts = pairs

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def failures(self, model: torch.nn.Module) -> list[str]:
        """One line per prompt whose expected continuation the model no longer gives."""
        device = next(model.parameters()).device
        out = []
        for prompt, expected in self.prompts:
            prompt_ids, expected_ids = self._ids(prompt), self._ids(expected)
            ids = torch.tensor([prompt_ids + expected_ids], device=device)
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
            probs = torch.softmax(logits, dim=-1)
            for position, token in enumerate(expected_ids):
                top = int(probs[position].argmax())
                p = float(probs[position, token])
                if top != token or p < self.min_probability:
                    so_far = prompt + self.tokenizer.decode(expected_ids[:position])
                    out.append(f"after {so_far!r} the model gives {self.tokenizer.decode([top])!r}, not "
                               f"{self.tokenizer.decode([token])!r} (p={p:.3g})")
                    break
        return out


def as_probe(probe, tokenizer, min_probability: float = 0.0):
    """A callable probe as given, or a PromptProbe for a list of (prompt, expected) pairs."""
    if probe is None or callable(probe) or isinstance(probe, PromptProbe):
        return probe
    if isinstance(probe, Iterable) and not isinstance(probe, (str, bytes)):
        return PromptProbe(list(probe), tokenizer, min_probability)
    raise TypeError(f"probe must be callable(model) -> bool | float or a list of (prompt, expected) pairs, "
                    f"got {type(probe).__name__}")
