"""The base class of every error a user can fix. The CLI prints these as one clear message (exit status 2)
instead of a traceback; anything else is a bug and keeps its traceback."""


class ThinktuneError(Exception):
    """A problem with the user's input, configuration or environment; the message says how to fix it."""
