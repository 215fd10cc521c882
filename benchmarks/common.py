"""Shared by the benchmark scripts: naming the hardware a number was measured on, their command lines and
writing their result files."""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

from vmm.errors import OneLineArgumentParser, VmmError


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what the platform module reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parser(script: str, doc: str) -> argparse.ArgumentParser:
    """The script's parser: a usage mistake is one ``error:`` line and status 2, as for ``vmm`` itself, not the
    usage block (or, for a value argparse accepts but the run cannot use, a traceback minutes later)."""
    return OneLineArgumentParser(prog=f"python benchmarks/{Path(script).name}", description=doc.splitlines()[0])


def positive_int(text: str) -> int:
    """argparse type of a count, size or repeat: 0 or less ended in a traceback deep inside the run."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def positive_seconds(text: str) -> float:
    """argparse type of a time limit or budget in seconds: a --max-wall of 0 or less skipped every encoder run and
    wrote the empty tables over --out."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds > 0")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return value


def output_path(ap: argparse.ArgumentParser, value, option: str = "--out", folder: bool = False) -> Path:
    """``value`` of an output option as a Path, refused now with one ``error:`` line if the run could not write it
    at its end: a read-only folder, a file in the way or a folder given for a file was a traceback after minutes
    of timing, and every number of the run was lost. Missing folders are left to the writer to create.

    >>> output_path(OneLineArgumentParser(prog="bench"), "/tmp/vmm-bench-example/result.json")
    PosixPath('/tmp/vmm-bench-example/result.json')
    """
    path = Path(os.path.expanduser(str(value)))  # a quoted "~/r.json" or --out=~/r.json: the shell left it
    if folder != path.is_dir() and path.exists():
        wanted = "a folder" if folder else f"a file in it, e.g. {path / 'result.json'}"
        ap.error(f"argument {option}: {value} is {'a file' if folder else 'a folder'}; name {wanted}")
    existing = (path if folder else path.parent).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        ap.error(f"argument {option}: {existing} is a file, not a folder; choose another path")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as error:
        ap.error(f"argument {option}: cannot write in {existing} ({error.strerror}); choose a folder you can write to")
    if path.is_file() and not os.access(path, os.W_OK):
        ap.error(f"argument {option}: {value} is read-only; make it writable or choose another path")
    return path


def write_result(path, text: str) -> None:
    """Writes ``text`` to ``path`` whole or not at all, creating its folder (``retrieval.report.atomic_write``, as
    the evaluation's reports). A plain write_text cut short (a Ctrl-C, a full disk) left a truncated JSON in place of
    the recorded result, and a write error was a traceback after the whole run.

    >>> write_result("/tmp/vmm-bench-example/result.json", "{}\\n")
    """
    from retrieval.report import atomic_write
    path = Path(path)
    kept = "the file there is unchanged" if path.exists() else "no file was written"
    atomic_write(path, lambda file: file.write(text), fix=f"the run's numbers are printed above, {kept}")


def run(main) -> None:
    """Runs a script's ``main`` and exits as ``vmm`` does: a Ctrl-C minutes into a run is the line ``interrupted``
    and status 130, a VmmError (a damaged model folder or corpus) its ``error:`` line and status 2, not a
    traceback; otherwise ``main``'s return value is the status."""
    try:
        status = main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except VmmError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    sys.exit(status or 0)
