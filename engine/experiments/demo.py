"""The built-in demo experiment: real modifications of the demo model, some of them harmful.

It cycles through small, harmless changes (scale one attention head's output
projection, perturb an MLP, nudge the tied embedding — recorded as a coupled
modification) and, now and then, harmful ones, so that within a minute a
newcomer sees every alert level and an automatic rollback:

- an exploding scale (one q_proj row x12) -> HIGH update size, undone on the next step (a larger
  one, x1e4, is a huge edit: CRITICAL and a rollback);
- a zeroed MLP unit and a backward pass -> MEDIUM dead units (all-zero gradients);
- a small perplexity drift (the final norm scaled so perplexity rises ~10%) -> LOW, undone
  after it was measured;
- a NaN (even cycles) or heavy noise in every layer (odd cycles) -> CRITICAL ->
  automatic rollback; the engine restarts the demo after a short pause.

Options (ctx.options): `interval` seconds between steps (default 0.25),
`max_steps`, `auto_restart` (the engine's; True for the demo).
Works on any decoder with `model.model.layers[i].self_attn.{q,o}_proj`,
`.mlp.{up,down}_proj` and `model.model.norm` (Qwen2, Llama, Mistral...).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

CYCLE = 20  # a multiple of the engine's default evaluate_every (5) and auto_checkpoint_every (10)
DRIFT_TARGET = (0.08, 0.15)  # relative perplexity rise of the drift: above LOW (5%), below HIGH (20%)
EXPLODE_FACTOR = 12.0  # ||dW||/||W|| about 1 on a 128-row matrix: HIGH, below the update-size CRITICAL
HARMFUL_AT = 13  # position in the cycle of the NaN / degrading change
# Position in the cycle -> action. The step that follows position p is step p + 1 of the cycle, so the
# drift (p=4) is measured at step 5 and undone before the automatic checkpoints at steps 10 and 20.
SCHEDULE = {
    0: "scale_head", 1: "nudge_embedding", 2: "explode", 3: "undo_explode", 4: "drift", 5: "undo_drift",
    6: "perturb_mlp", 7: "kill_unit", 8: "revive_unit", 9: "scale_head", 10: "nudge_embedding",
    11: "perturb_mlp", 12: "scale_head", HARMFUL_AT: "harmful", 14: "perturb_mlp", 15: "scale_head",
    16: "nudge_embedding", 17: "perturb_mlp", 18: "scale_head", 19: "perturb_mlp",
}


class _Demo:
    def __init__(self, ctx: Any):
        self.ctx = ctx
        self.model = ctx.model
        self.layers = _decoder_layers(self.model)
        self.names = {id(p): n for n, p in self.model.named_parameters(remove_duplicate=False)}
        self.rng = torch.Generator().manual_seed(1234 + ctx.restarts)
        self.undo: dict[str, Callable[[], str]] = {}

    def pick_layer(self) -> tuple[int, Any]:
        index = int(torch.randint(len(self.layers), (1,), generator=self.rng))
        return index, self.layers[index]

    def name_of(self, param: torch.Tensor) -> str:
        return self.names.get(id(param), "?")

    def noise_like(self, weight: torch.Tensor, scale: float) -> torch.Tensor:
        noise = torch.randn(weight.shape, generator=self.rng, dtype=torch.float32)
        return (noise * float(weight.float().std()) * scale).to(weight.device, weight.dtype)

    def record(self, param: torch.Tensor, data: dict) -> None:
        memory = self.ctx.memory
        if memory is not None:
            memory.record_modification(self.name_of(param), data)

    # -- harmless -------------------------------------------------------------------
    def scale_head(self) -> str:
        index, layer = self.pick_layer()
        attn = layer.self_attn
        heads = int(getattr(attn, "num_heads", 0) or self.model.config.num_attention_heads)
        head_dim = attn.o_proj.weight.shape[1] // heads
        head = int(torch.randint(heads, (1,), generator=self.rng))
        factor = 1.0 + (float(torch.rand((), generator=self.rng)) - 0.5) * 0.1
        attn.o_proj.weight[:, head * head_dim:(head + 1) * head_dim] *= factor
        self.record(attn.o_proj.weight, {"method": "scale_head", "head": head, "factor": factor})
        return f"scaled head {head} of layer {index} by {factor:.3f}"

    def perturb_mlp(self) -> str:
        index, layer = self.pick_layer()
        weight = layer.mlp.down_proj.weight
        weight += self.noise_like(weight, 0.01)
        self.record(weight, {"method": "perturb", "relative_std": 0.01})
        return f"perturbed the MLP of layer {index} (1% noise)"

    def nudge_embedding(self) -> str:
        weight = self.model.get_input_embeddings().weight
        rows = torch.randint(weight.shape[0], (4,), generator=self.rng)
        weight[rows] += self.noise_like(weight[rows], 0.02)
        self.record(weight, {"method": "nudge_rows", "rows": rows.tolist(), "relative_std": 0.02})
        return f"nudged embedding rows {rows.tolist()} (tied: the output head moves too)"

    # -- harmful, undone on a later step ------------------------------------------------
    def explode(self) -> str:
        index, layer = self.pick_layer()
        weight = layer.self_attn.q_proj.weight
        row = int(torch.randint(weight.shape[0], (1,), generator=self.rng))
        saved = weight[row].clone()
        weight[row] *= EXPLODE_FACTOR

        def undo() -> str:
            weight[row] = saved
            return f"undid the x{EXPLODE_FACTOR:g} scale of layer {index} q_proj row {row}"

        self.undo["undo_explode"] = undo
        return f"HARMFUL: scaled layer {index} q_proj row {row} by {EXPLODE_FACTOR:g} (exploding weights)"

    def kill_unit(self) -> str:
        index, layer = self.pick_layer()
        up = layer.mlp.up_proj.weight
        saved = up.clone()
        up.zero_()
        inputs = torch.randint(min(256, self.model.config.vocab_size), (1, 32), generator=self.rng).to(up.device)
        with torch.enable_grad():
            self.model.zero_grad(set_to_none=True)
            loss = self.model(input_ids=inputs, labels=inputs).loss
            loss.backward()

        def undo() -> str:
            up.copy_(saved)
            self.model.zero_grad(set_to_none=True)
            return f"revived the MLP units of layer {index} and cleared gradients"

        self.undo["revive_unit"] = undo
        return f"zeroed the up-projection of layer {index} and ran a backward pass (its units are dead)"

    def drift(self) -> str:
        norm = _final_norm(self.model)
        factor = self.drift_factor(norm)
        saved = norm.clone()
        norm *= factor

        def undo() -> str:
            norm.copy_(saved)
            return "undid the final-norm drift"

        self.undo["undo_drift"] = undo
        return f"scaled the final norm by {factor:.3f} (a small perplexity drift)"

    def drift_factor(self, norm: torch.Tensor) -> float:
        """The final-norm scale that raises perplexity by about DRIFT_TARGET (measured once, kept across restarts)."""
        if "drift_factor" in self.ctx.state:
            return self.ctx.state["drift_factor"]
        if self.ctx.tokenizer is None:  # perplexity is off: a fixed, mild scale
            return self.ctx.state.setdefault("drift_factor", 0.9)
        from engine.benchmarks import run_benchmarks

        def rise(factor: float) -> float:
            saved = norm.clone()
            norm.mul_(factor)
            try:
                ppl = run_benchmarks(self.model, self.ctx.tokenizer, max_tokens=1024, seq_len=128)["perplexity"]
            finally:
                norm.copy_(saved)
            return ppl / base - 1.0

        base = run_benchmarks(self.model, self.ctx.tokenizer, max_tokens=1024, seq_len=128)["perplexity"]
        low, high = 0.5, 1.0  # rise(high) = 0; a smaller factor raises perplexity more
        factor = 0.9
        for _ in range(7):
            change = rise(factor)
            if DRIFT_TARGET[0] <= change <= DRIFT_TARGET[1]:
                break
            if change < DRIFT_TARGET[0]:
                high = factor
            else:
                low = factor
            factor = (low + high) / 2
        self.ctx.state["drift_factor"] = factor
        return factor

    def harmful(self) -> str:
        if (self.ctx.steps // CYCLE) % 2 == 0:
            index, layer = self.pick_layer()
            weight = layer.mlp.up_proj.weight
            weight[0, 0] = float("nan")
            return f"HARMFUL: wrote a NaN into layer {index} mlp.up_proj (expect CRITICAL and a rollback)"
        for layer in self.layers:
            for param in layer.parameters():
                scale = float(param.detach().abs().mean()) * 3.0
                param += torch.randn(param.shape, generator=self.rng).to(param.device, param.dtype) * scale
        return "HARMFUL: heavy noise in every decoder layer (expect perplexity > +50% and a rollback)"

    def act(self, action: str) -> str:
        if action in self.undo:
            return self.undo.pop(action)()
        if action.startswith(("undo_", "revive_")):
            return f"{action}: nothing to undo"
        return getattr(self, action)()


def _final_norm(model: Any) -> torch.Tensor:
    norm = getattr(getattr(model, "model", None), "norm", None)
    if norm is None or getattr(norm, "weight", None) is None:
        raise TypeError(f"the demo experiment needs model.model.norm.weight; got {type(model).__name__}")
    return norm.weight


def _decoder_layers(model: Any) -> list:
    body = getattr(model, "model", None)
    layers = getattr(body, "layers", None)
    if layers is None:
        raise TypeError(
            f"the demo experiment needs a decoder with model.model.layers (Qwen2, Llama...); got {type(model).__name__}"
        )
    return list(layers)


def run(ctx: Any) -> None:
    """Modify the model forever (until stopped or max_steps), one change per step."""
    demo = _Demo(ctx)
    interval = float(ctx.options.get("interval", 0.25))
    ctx.log(f"demo experiment {'restarted' if ctx.restarts else 'started'}: "
            f"{len(demo.layers)} layers, one change every {interval:g} s")
    while True:
        action = SCHEDULE[ctx.steps % CYCLE]
        with torch.no_grad():
            description = demo.act(action)
        ctx.log(description)
        ctx.step(action)
        ctx.wait(interval)
