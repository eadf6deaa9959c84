"""Shared part of the screens that show a comparison the engine computes on request."""

from __future__ import annotations

from console.widgets.change_bars import ChangeBars
from engine.events import ComparisonReady


class AwaitsComparison:
    """Mixed into a Screen holding a ChangeBars; the app routes ComparisonReady events here."""

    comparison_pair: tuple[str, str]

    def show_comparison(self, comparison: ComparisonReady) -> None:
        if (comparison.checkpoint_a, comparison.checkpoint_b) == self.comparison_pair:
            self.query_one(ChangeBars).show(comparison)

    def comparison_refused(self, message: str) -> None:
        bars = self.query_one(ChangeBars)
        if bars.comparison is None:
            bars.show_note(f"no comparison: {message}")
