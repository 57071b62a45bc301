"""The one exception type that reaches the user as a one-line message.

Raise :class:`CflowError` for anything the user can fix (a missing folder, a wrong
flag, an unreadable file). ``main.py`` prints its message without a traceback and
exits with status 2. Everything else is a bug and keeps its traceback.
"""


class CflowError(Exception):
    """A problem with the user's input, with a message naming the problem and the fix."""


def user_message(exc: BaseException) -> str:
    """The one-line message of a CflowError, also when a DataLoader worker re-raised it.

    DataLoader workers re-raise exceptions with the worker's traceback folded into the
    message; the user only needs the last line, which is the original message.
    """
    text = str(exc).strip()
    marker = 'CflowError: '
    if marker in text:
        text = text.rsplit(marker, 1)[1]
    return text.splitlines()[-1] if text else type(exc).__name__
