"""Redline's operator console (Textual). Talks to the engine only through
`engine.commands` and `engine.events`; never calls torch."""
