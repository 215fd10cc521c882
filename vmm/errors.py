"""User-facing errors.

Anything a user can cause (a bad path, a wrong option, a damaged file) raises
:class:`VmmError` with a one-line message that names the file or option and the
fix. The CLI prints ``error: <message>`` and exits with status 2 instead of a
traceback; library callers can catch it like any other exception.
"""
import argparse
import numbers
from typing import Optional


class VmmError(Exception):
    """A problem with the user's input, files or environment, with a one-line fix."""


class CheckpointError(VmmError):
    """A checkpoint file that cannot be loaded into the requested model."""


class RunFinished(VmmError):
    """A resumed training run that has already trained all its steps and exported its final model."""


def is_whole_number(value) -> bool:
    """An int or NumPy integer, not a bool: what counts, sizes and ``k`` accept.

    >>> is_whole_number(3), is_whole_number(True), is_whole_number(2.0)
    (True, False, False)
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]} | {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}


def one_line(text: str) -> str:
    r"""``text`` with control characters escaped, for printing a message or a path on one line.

    A file name may hold a newline: printed as is, it splits ``failed: PATH: error`` in two
    and the second half reads as another message.

    >>> one_line("clips/new\nline.mp4: no video stream")
    'clips/new\\nline.mp4: no video stream'
    """
    return text.translate(_CONTROL)


def error_text(error: BaseException, limit: int = 200) -> str:
    """An exception's message on one line (its whitespace and line breaks collapsed), cut at ``limit`` characters:
    the part of a library's multi-line error (FAISS's C++ trace, torch's state-dict report) that fits in ours.

    >>> error_text(RuntimeError("Error(s) in loading state_dict:\\n\\tMissing key(s): a, b"), 40)
    'Error(s) in loading state_dict: Missing '
    """
    return " ".join(str(error).split())[:limit]


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse whose usage mistakes end in one ``error: ...`` line naming ``--help`` and exit status 2, as every
    other mistake does (argparse printed its whole usage block first). Commands adjust :meth:`error_line`.

    >>> OneLineArgumentParser(prog="tool").error_line("argument --n: invalid int value: 'x'")
    "error: argument --n: invalid int value: 'x' (`tool --help` lists the options)"
    """

    def error(self, message: str):
        line = self.error_line(message)
        self.exit(2, None if line is None else line + "\n")

    def error_line(self, message: str) -> Optional[str]:
        """The line printed for a usage mistake (None: exit with status 2 and print nothing)."""
        return f"error: {one_line(message)} (`{self.prog} --help` lists the options)"
