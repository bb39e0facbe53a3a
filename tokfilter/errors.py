"""The one exception type users see: a message that names the field and the limit."""


class TokfilterError(Exception):
    """A user-facing error. The CLI prints its message and exits non-zero, with no traceback."""
