"""Shared by the benchmark scripts: naming the hardware a number was measured on, and their command lines."""
from __future__ import annotations

import argparse
import platform
from pathlib import Path

from vmm.errors import OneLineArgumentParser


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


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return value
