"""`redline checkpoints`: the run directory's checkpoints from the shell (ls, show, verify, diff, export, gc, rm).

command_line (the parser, exit codes, dispatch; torch-free at import), run_store (which directory,
opened how, the failures and their exit codes), inventory (ls, show), verification (verify),
differences (diff), exporting (export), cleanup (gc, rm), progress (bars on a terminal), output
(text and JSON). Every command reads the store directly: no model is loaded.
"""
