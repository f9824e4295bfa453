"""One exception type for every problem a user can fix, so entry points can print it as one line."""


class CellerError(Exception):
    """A user-facing error: the message names the file / column / value and what to do."""
