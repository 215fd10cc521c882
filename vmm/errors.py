"""User-facing errors.

Anything a user can cause (a bad path, a wrong option, a damaged file) raises
:class:`VmmError` with a one-line message that names the file or option and the
fix. The CLI prints ``error: <message>`` and exits with status 2 instead of a
traceback; library callers can catch it like any other exception.
"""
import argparse
import numbers
import re
from typing import Callable, Optional, TypeVar

T = TypeVar("T")


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


_MEMORY_TEXTS = ("can't allocate memory", "not enough memory", "out of memory", "Cannot allocate memory")


def out_of_memory(error: BaseException) -> Optional[str]:
    """What ran out when ``error`` is a failed allocation (torch's CPU or CUDA allocator, the mmap of a weights file,
    Python itself), else None.

    >>> out_of_memory(RuntimeError("can't allocate memory: you tried to allocate 20971520 bytes"))
    'could not allocate 20 MiB more'
    >>> out_of_memory(RuntimeError("Expected all tensors to be on the same device")) is None
    True
    """
    text = str(error)
    if not isinstance(error, MemoryError) and not any(t in text for t in _MEMORY_TEXTS):
        return None
    size = re.search(r"(\d+(?:\.\d+)?) ?([KMGTPE]iB|bytes)", text)  # torch says "2.00 GiB" on CUDA, bytes on CPU
    if size is None:
        return "an allocation failed"
    amount = f"{int(size[1]) / 2 ** 20:.0f} MiB" if size[2] == "bytes" else f"{size[1]} {size[2]}"
    return f"could not allocate {amount} more"


def sized_by(run: Callable[[], T], message: Callable[[str], str]) -> T:
    """``run()``; running out of memory in it (:func:`out_of_memory`) is a VmmError of ``message(what ran out)``, which
    names the option that sizes the work, where the CLI's own line could only guess it and scripts ended in a CUDA
    traceback. Raised outside the handler: the error's traceback, and with it the tensors of the failed work on
    the GPU, is freed before a caller that catches this tries again smaller.

    >>> def too_big():
    ...     raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    >>> try:
    ...     sized_by(too_big, lambda what: f"out of memory ({what}); pass a smaller --batch-size")
    ... except VmmError as e:
    ...     print(e)
    out of memory (could not allocate 2.00 GiB more); pass a smaller --batch-size
    """
    try:
        return run()
    except (MemoryError, RuntimeError) as error:
        what = out_of_memory(error)
        if what is None:
            raise
    raise VmmError(message(what))
