"""The one exception type for user-facing errors.

Anything raised as ``CnnbenchError`` is a problem with the user's input (a path, a value, a
file's contents). The CLI prints its message on one line and exits non-zero without a
traceback; every other exception is a bug and keeps its traceback.
"""


class CnnbenchError(Exception):
    """A user error: the message names the file or value and what was expected."""

    exit_code = 2
