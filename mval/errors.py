"""The one exception type a user can fix: the CLI prints its message on one line and exits 2."""


class MvalError(ValueError):
    """Bad input or a store problem the user can fix; the message names the file/row/column and the fix."""


class StoreBusyError(MvalError):
    """Another process holds the store's write lock."""
