"""The engine runtime: the `Engine` facade a client drives, and the engine thread behind it.

Importing this package imports no torch (the console imports it); torch is
imported inside the engine thread, by `engine.runtime.core`.
"""

from engine.runtime.engine import Engine, EngineConfig

__all__ = ["Engine", "EngineConfig"]
