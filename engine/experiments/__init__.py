"""Built-in experiments. `demo` is redline's default: it shows every alert level and an automatic rollback."""
