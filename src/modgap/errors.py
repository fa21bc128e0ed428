"""The one exception type users see: the CLI prints its message on one line and exits non-zero."""


class ModgapError(Exception):
    """An error caused by the user's input (a file, a flag, a value), stated so they can fix it."""


class BadVectorsError(ModgapError):
    """NaN, Inf or zero vectors were found where unit-normalisable vectors are required."""

    def __init__(self, message: str, ids: list[str]):
        super().__init__(message)
        self.ids = ids
