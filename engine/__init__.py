"""Redline's engine: everything that touches torch. Never imports Textual.

The guide's modules keep their names: `engine.checkpointing`,
`engine.safety_monitor`, `engine.introspection`, `engine.memory`,
`engine.benchmarks`, `engine.model_manager`, plus `engine.experiment` and
`engine.dashboard`. `engine.events` and `engine.commands` are the boundary the
console talks through; they import no torch.
"""
