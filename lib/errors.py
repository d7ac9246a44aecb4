"""The one exception type that reaches users as a clear message.

Anything raised as :class:`UserError` is printed by the command line as a single
``error: ...`` line and the process exits with status 2, without a traceback.
"""


class UserError(ValueError):
    """Bad input from the user: a file, a folder, an option or a value.

    The message must name the culprit (file path or option) and say what was
    expected, in one line.
    """
