"""The footer: Textual's Footer, rebuilt only when the keys it shows change, and not while hidden.

Textual's Footer re-creates all its key widgets on every change of the bindings, and every focus move
is one (the save prompt's field taking and giving back the focus: two rebuilds, each a mount and a
layout, right when the save's answer is due). What it shows rarely changes with the focus here.
"""

from __future__ import annotations

from textual.screen import Screen
from textual.widgets import Footer


class ConsoleFooter(Footer):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._shown: tuple | None = None  # the keys the footer was last built with
        self._stale = False  # the bindings changed while it was hidden

    def bindings_changed(self, screen: Screen) -> None:
        if not self.display:
            self._stale = True
            return
        keys = tuple((binding.key, binding.action, binding.description, enabled, tooltip)
                     for _, binding, enabled, tooltip in screen.active_bindings.values() if binding.show)
        if keys == self._shown:
            return
        self._shown = keys
        super().bindings_changed(screen)

    def show_again(self) -> None:
        """Shown after being hidden: catch up with the bindings it missed."""
        self.display = True
        if self._stale:
            self._stale = False
            self.call_later(self.bindings_changed, self.screen)  # in the footer's own context, as Textual's signal does
