"""User-facing errors.

Anything a user can cause (a bad path, a wrong option, a damaged file) raises
:class:`VmmError` with a one-line message that names the file or option and the
fix. The CLI prints ``error: <message>`` and exits with status 2 instead of a
traceback; library callers can catch it like any other exception.
"""


class VmmError(Exception):
    """A problem with the user's input, files or environment, with a one-line fix."""


class CheckpointError(VmmError):
    """A checkpoint file that cannot be loaded into the requested model."""


class RunFinished(VmmError):
    """A resumed training run that has already trained all its steps and exported its final model."""
