"""Errors patchdb raises for bad input.

Every user-facing problem is a ``PatchdbError`` (a ``ValueError``) whose message is one line
naming the bad value and the fix; the CLI prints it and exits with code 2.
"""


class PatchdbError(ValueError):
    """Bad input or a file patchdb cannot use; the message says what to do instead."""


class PatchdbFileError(PatchdbError, FileNotFoundError):
    """A dataset, index or checkpoint file is missing."""
