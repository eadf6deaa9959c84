"""The drift heat strip: one cell per layer, coloured by how far it has moved from the baseline.

One line under the header: the operator sees where the surgery happens at a
glance. Each cell is a layer in the model's order (consecutive layers share a
cell when there are more layers than room), coloured by the severity the
engine gave its drift (engine.policy's thresholds for relative change); ⇄
marks a layer holding a tied tensor, as the coupling view does. The line ends
with the layer that moved most. Hidden until the engine sends its first
DriftMap (a read-only engine has no baseline to measure against).
"""

from __future__ import annotations

import math

from rich.text import Text
from textual.widget import Widget

from console.severity import severity_style
from console.text import shorten, visible
from engine.events import DriftMap, LayerDrift
from engine.policy import SEVERITIES

LABEL = "drift "
MIN_SUMMARY = 22  # cells kept for the most-moved layer after the strip


def percent(relative: float) -> str:
    if not math.isfinite(relative):
        return "inf"
    if relative >= 0.1:
        return f"{relative:.0%}"
    return f"{relative:.2%}" if relative >= 0.0001 else f"{relative:.0e}"


def buckets(layers: tuple[LayerDrift, ...], cells: int) -> list[LayerDrift]:
    """`layers` merged into at most `cells` consecutive groups, each shown as its worst layer (tied if any is)."""
    if len(layers) <= cells:
        return list(layers)
    out = []
    for index in range(cells):
        group = layers[index * len(layers) // cells:(index + 1) * len(layers) // cells]
        worst = max(group, key=_rank)
        out.append(LayerDrift(worst.layer, worst.relative, worst.tensor, any(g.tied for g in group), worst.severity))
    return out


def _rank(layer: LayerDrift) -> tuple:
    relative = layer.relative if not math.isnan(layer.relative) else math.inf
    return -SEVERITIES.index(layer.severity) if layer.severity in SEVERITIES else 0, relative


class DriftStrip(Widget):
    DEFAULT_CSS = """
    DriftStrip { height: 1; width: 1fr; display: none; padding: 0 1; }
    DriftStrip.-active { display: block; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.drift: DriftMap | None = None

    def show(self, drift: DriftMap | None) -> None:
        self.drift = drift
        self.set_class(drift is not None and bool(drift.layers), "-active")
        if drift is not None:
            worst = max(drift.layers, key=_rank, default=None)
            self.tooltip = (f"Drift from baseline {drift.baseline} at step {drift.step}: per layer, the largest "
                            f"||W - W0|| / ||W0|| of its tensors; ⇄ tied. Most moved: "
                            f"{worst.layer if worst else '-'} {percent(worst.relative) if worst else ''}")
        self.refresh()

    def render(self) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        drift = self.drift
        if drift is None or not drift.layers:
            return text
        width = max(self.size.width, 20)
        room = max(4, width - len(LABEL) - 1 - MIN_SUMMARY)
        text.append(LABEL, "bold")
        for cell in buckets(drift.layers, room):
            moved = cell.relative != 0.0
            style = severity_style(self.app, cell.severity) if moved else "dim"
            text.append("⇄" if cell.tied else ("█" if moved else "·"), style)
        text.append(" ")
        worst = max(drift.layers, key=_rank)
        left = max(width - text.cell_len, 8)
        if worst.relative == 0.0:
            text.append(shorten("no layer has moved from the baseline", left), "dim")
            return text
        leaf = worst.tensor.removeprefix(worst.layer + ".") if worst.tensor else ""
        value = percent(worst.relative)
        text.append(value, severity_style(self.app, worst.severity))
        text.append(" " + shorten(visible(f"{worst.layer} {leaf}".strip()), left - len(value) - 1))
        return text
