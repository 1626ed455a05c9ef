"""The one exception type that means "the user gave us something we cannot use"."""


class LeaderError(Exception):
    """Bad input or a refused operation.

    The CLI prints the message on one line and exits with status 2, without a traceback, so the
    message must name the file, row or field and say what was expected.
    """
