"""The project's exceptions. Everything a user can cause raises an ``AIRError`` with a message that says
what was wrong and what to do; the command line prints that message instead of a traceback."""


class AIRError(Exception):
    """Base class of every error this package raises on purpose."""


class DataError(AIRError, ValueError):
    """Data that cannot be found, read or used (missing MNIST, corrupt files, bad arrays)."""


class InputError(AIRError, ValueError):
    """Input to a public function that has the wrong type, shape, range or value."""


class CheckpointError(AIRError):
    """A checkpoint that is missing, truncated, not a checkpoint, or from an incompatible configuration."""


class OutputError(AIRError, OSError):
    """A file or folder that cannot be written (read-only, a folder where a file is meant, a full disk). Also an
    ``OSError``, so code that handles file-system errors keeps handling it."""
