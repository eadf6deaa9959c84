"""Every key of the console, as Bindings with ids (for keymaps), descriptions and tooltips.

The Footer, the help screen, the command palette and the keymap loader all
read this one list.
"""

from __future__ import annotations

from textual.binding import Binding

from engine.events import SEVERITIES

BINDINGS: list[Binding] = [
    Binding("ctrl+x", "emergency_stop", "STOP", priority=True, id="emergency_stop",
            tooltip="EMERGENCY STOP: halt the experiment now and roll back to the last healthy checkpoint "
                    "(the state rolled back from is kept as a forensic checkpoint)"),
    Binding("s", "save", "Save", id="save",
            tooltip="Save a checkpoint of the live model (asks for a purpose; Enter accepts the default)"),
    Binding("R", "restore", "Restore", id="restore",
            tooltip="Restore the selected checkpoint (shows what will change, asks; the default is No)"),
    Binding("p", "pause", "Pause/Resume", id="pause",
            tooltip="Pause the experiment at its next step, or resume it"),
    Binding("d", "compare", "Diff", id="compare",
            tooltip="Compare the selected checkpoint with the baseline: the most-changed tensors"),
    Binding("slash", "filter", "Filter", id="filter",
            tooltip="Filter the alert stream by text (Enter keeps the filter, Esc clears it)"),
    *(
        Binding(str(i), f"toggle_severity('{sev}')", f"{sev.title()}", show=False, id=f"toggle_{sev.lower()}",
                tooltip=f"Show or hide {sev} entries in the alert stream")
        for i, sev in enumerate(SEVERITIES, 1)
    ),
    Binding("left_square_bracket", "panel(-1)", "Prev panel", id="previous_panel",
            tooltip="Show the previous panel (compact layout)"),
    Binding("right_square_bracket", "panel(1)", "Next panel", id="next_panel",
            tooltip="Show the next panel (compact layout)"),
    Binding("question_mark,f1", "help", "Help", id="help",
            tooltip="Show every key and what the console shows"),
    Binding("q", "quit", "Quit", id="quit",
            tooltip="Quit: stops the engine safely (asks first while an experiment runs)"),
    Binding("ctrl+q", "quit", "Quit", show=False, priority=True, id="quit_now",
            tooltip="Quit: stops the engine safely (asks first while an experiment runs)"),
    Binding("ctrl+p", "command_palette", "Palette", show=False, priority=True, id="command_palette",
            tooltip="Open the command palette: every action and the theme switch"),
    Binding("ctrl+c", "help_quit", show=False, system=True),
]

#: actions that change the model or the run directory: hidden and refused when read-only
MUTATING_ACTIONS = frozenset({"save", "restore", "emergency_stop", "pause"})

#: palette entries: (action, title, help); severity toggles and panel keys are left to the keys
PALETTE_ACTIONS = (
    ("emergency_stop", "Emergency stop", "Halt the experiment now and roll back to the last healthy checkpoint"),
    ("save", "Save checkpoint", "Save a checkpoint of the live model"),
    ("restore", "Restore selected checkpoint", "Restore the checkpoint selected in the table (asks first)"),
    ("pause", "Pause / resume experiment", "Pause the experiment at its next step, or resume it"),
    ("compare", "Compare with baseline", "Most-changed tensors between the selected checkpoint and the baseline"),
    ("filter", "Filter alerts", "Filter the alert stream by text"),
    ("clear_filters", "Show all alerts", "Clear the text filter and show every severity"),
    ("help", "Help", "Every key and what the console shows"),
    ("quit", "Quit", "Stop the engine safely and quit"),
)
