"""PaintNotice: a widget that says when a frame has drawn its new content, so work can wait for that frame.

An answer's widget (the header, the save line) is refreshed and then travels through Textual's message
hops (widget -> screen) before a frame takes it; a frame already due can go out without it (the screen's
update timer runs as a task of its own), and work queued for "after the next frame" (the panels a save
changed: tens of milliseconds of Python) would then run before the answer is on screen and push it back
by that much. `when_painted(callback)` runs the callback once, when a frame takes the widget's repaint.

That moment is the compositor collecting the widget's dirty regions (`Widget._exchange_repaint_regions`,
called for each widget of a frame's update): Textual has no public hook for it. Rendering its lines is no
sign: a frame renders every widget its update crosses and writes only the dirty parts. If a later Textual
stops calling it, the callbacks simply never run and whoever waits falls back on its own timeout
(tests/console/test_paint_notice.py says so at once).
"""

from __future__ import annotations

from collections.abc import Callable


class PaintNotice:
    """Mixed into a Widget subclass (before it in the bases)."""

    _paint_callbacks: list[Callable[[], None]] | None = None

    def when_painted(self, callback: Callable[[], None]) -> None:
        if self._paint_callbacks is None:
            self._paint_callbacks = []
        self._paint_callbacks.append(callback)

    def _exchange_repaint_regions(self):
        regions = super()._exchange_repaint_regions()
        if regions and self._paint_callbacks:
            callbacks, self._paint_callbacks = self._paint_callbacks, None
            for callback in callbacks:
                callback()
        return regions
