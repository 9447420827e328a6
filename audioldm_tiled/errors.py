"""Errors the command line reports as one line, importable without torch."""


class RankFailed(RuntimeError):
    """A rank failed; every rank raises this with the same message (the failing rank chains its own error)."""
