"""Errors a user can act on.

Raise :class:`ImredError` for bad input (a missing file, a wrong setting, a header
that does not say what the instrument file promises). The command line and the
workflow print its message as one line, without a traceback; anything else is a
bug and keeps its traceback.
"""


class ImredError(Exception):
    """A problem with the user's input, with a message saying what to do."""
