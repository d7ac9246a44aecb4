"""The one exception type that reaches users as a clear message.

Anything raised as :class:`UserError` is printed by the command line as a single
``error: ...`` line and the process exits with status 2, without a traceback.
"""

import contextlib
import re


class UserError(ValueError):
    """Bad input from the user: a file, a folder, an option or a value.

    The message must name the culprit (file path or option) and say what was
    expected, in one line.
    """


@contextlib.contextmanager
def options(**names):
    """Within this block, a lower layer's ValueError about one of its parameters becomes a UserError naming the option.

    The bottom of the library (:mod:`lib.data` and the like) knows nothing of the configuration: its
    messages begin with its parameter, e.g. ``fraction=0.9 leaves no training item out of 1``. Inside
    ``with options(fraction="data.val_fraction"):`` that is raised as
    ``UserError("data.val_fraction=0.9 leaves no training item out of 1")``. A message about a file
    (a UserError that begins with its path) may name the parameter in brackets, ``(classes=3)``:
    that becomes ``(model.classes=3)``. Other errors pass unchanged. Also a function decorator.
    """
    try:
        yield
    except ValueError as exc:
        text = str(exc)
        if not isinstance(exc, UserError):
            for parameter, option in names.items():
                if text.startswith(parameter) and text[len(parameter):len(parameter) + 1] in ("=", ":", " "):
                    raise UserError(option + text[len(parameter):]) from None
        named = text
        for parameter, option in names.items():
            named = re.sub(rf"\({re.escape(parameter)}=", f"({option}=", named)
        if isinstance(exc, UserError) and named != text:
            raise UserError(named) from None
        raise
