"""Every key of the console, as Bindings with ids (for keymaps), descriptions and tooltips.

The Footer, the help screen, the command palette, the keymap loader and the
read-only guard all read this one list: each entry also names its palette
title and the engine command its action sends, and that command's `mutates`
flag decides whether a read-only console hides and refuses the action.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding

from engine import commands as cmd
from engine.events import SEVERITIES


@dataclass(frozen=True)
class ConsoleBinding(Binding):
    """A Binding that also knows its command-palette title and the engine command it sends."""

    palette: str = ""  # title in the command palette ("" keeps the action off it); its help is the tooltip
    command: type[cmd.Command] | None = None  # what the action asks of the engine, None: nothing


BINDINGS: list[ConsoleBinding] = [
    ConsoleBinding("ctrl+x", "emergency_stop", "STOP", priority=True, id="emergency_stop",
                   tooltip="EMERGENCY STOP: halt the experiment now and roll back to the last healthy checkpoint "
                           "(the state rolled back from is kept as a forensic checkpoint)",
                   palette="Emergency stop", command=cmd.EmergencyStop),
    ConsoleBinding("s", "save", "Save", id="save",
                   tooltip="Save a checkpoint of the live model (asks for a purpose; Enter accepts the default)",
                   palette="Save checkpoint", command=cmd.Save),
    ConsoleBinding("R", "restore", "Restore", id="restore",
                   tooltip="Restore the selected checkpoint (shows what will change, asks; the default is No)",
                   palette="Restore selected checkpoint", command=cmd.Restore),
    ConsoleBinding("p", "pause", "Pause/Resume", id="pause",
                   tooltip="Pause the experiment at its next step, or resume it",
                   palette="Pause / resume experiment", command=cmd.Pause),
    ConsoleBinding("d", "compare", "Diff", id="compare",
                   tooltip="Compare the selected checkpoint with the baseline: the most-changed tensors",
                   palette="Compare with baseline", command=cmd.Compare),
    ConsoleBinding("slash", "filter", "Filter", id="filter",
                   tooltip="Filter the alert stream by text (Enter keeps the filter, Esc clears it)",
                   palette="Filter alerts"),
    *(
        ConsoleBinding(str(i), f"toggle_severity('{sev}')", f"{sev.title()}", show=False, id=f"toggle_{sev.lower()}",
                       tooltip=f"Show or hide {sev} entries in the alert stream")
        for i, sev in enumerate(SEVERITIES, 1)
    ),
    ConsoleBinding("0", "clear_filters", "All", show=False, id="show_all",
                   tooltip="Show every severity in the alert stream and clear the text filter",
                   palette="Show all alerts"),
    ConsoleBinding("left_square_bracket", "panel(-1)", "Prev panel", id="previous_panel",
                   tooltip="Show the previous panel (compact layout)"),
    ConsoleBinding("right_square_bracket", "panel(1)", "Next panel", id="next_panel",
                   tooltip="Show the next panel (compact layout)"),
    ConsoleBinding("question_mark,f1", "help", "Help", id="help",
                   tooltip="Show every key and what the console shows", palette="Help"),
    ConsoleBinding("c", "take_control", "Take control", id="take_control",
                   tooltip="Attached as an observer: become the controller (asks first; the console that had "
                           "control becomes an observer and is told)", palette="Take control"),
    ConsoleBinding("q", "quit", "Quit", id="quit",
                   tooltip="Quit: asks whether to stop the engine safely (y), detach and leave it running (d), "
                           "or stay",
                   palette="Quit", command=cmd.Shutdown),
    ConsoleBinding("ctrl+q", "quit", "Quit", show=False, priority=True, id="quit_now",
                   tooltip="Quit: stops the engine safely (asks first while an experiment runs)",
                   command=cmd.Shutdown),
    ConsoleBinding("ctrl+p", "command_palette", "Palette", show=False, priority=True, id="command_palette",
                   tooltip="Open the command palette: every action and the theme switch"),
    ConsoleBinding("ctrl+c", "help_quit", show=False, system=True),
    ConsoleBinding("e", "edits", "Edits", show=False, id="edits",
                   tooltip="The edit journal: every edit, its outcome, touched tensors and ||dW||; "
                           "r there reverts the selected edit (asks first)",
                   palette="Edit journal"),
    ConsoleBinding("P", "policy", "Policy", show=False, id="policy",
                   tooltip="Show the engine's active policy: every rule, threshold and action, and where each "
                           "value came from (default, the run directory's policy.toml, --policy FILE)",
                   palette="Show policy"),
]

#: actions that change the model or the run directory: hidden and refused when read-only
MUTATING_ACTIONS = frozenset(b.action for b in BINDINGS if b.command is not None and b.command.mutates)

#: palette entries, in key order: (action, title, help)
PALETTE_ACTIONS = tuple((b.action, b.palette, b.tooltip) for b in BINDINGS if b.palette)
