"""Errors meant for the user of a command, shown as one line (a traceback only with --debug)."""


class BrainkernelsError(Exception):
    """A problem with the user's input, configuration, data or environment, not a bug."""
