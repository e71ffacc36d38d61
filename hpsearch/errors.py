"""Errors the command line reports as one line with exit code 2 (bad input, missing data)."""


class HpsearchError(Exception):
    """A problem the user can fix; the message says what was wrong and how to fix it."""
