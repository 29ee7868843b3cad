"""Errors a stage reports to its user in one line (the CLI prints them without a traceback)."""


class StageError(Exception):
    """A stage could not finish for a reason the message names (e.g. another stage it ran failed)."""
