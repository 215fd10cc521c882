"""The ``vmm`` command: a thin argparse layer over the Python API.

Each subcommand lives in ``vmm/commands/<name>.py`` with ``add_arguments(parser)`` and ``run(args) -> int``.
User errors (:class:`vmm.errors.VmmError`) print one line ``error: ...`` and exit with status 2.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

from vmm.errors import VmmError, one_line

COMMANDS = {
    "demo": "run the offline demo: generate a video library, index it, search it, evaluate",
    "index": "index a folder of videos into a searchable library",
    "search": "search a library by text or by example video",
    "eval": "zero-shot retrieval evaluation (MSRVTT, DiDeMo, ActivityNet, LSMDC, MSVD protocols)",
    "classify": "top-5 Kinetics-400 labels of a video with a VideoMamba classifier",
    "encode": "encode a video clip with a VideoMamba encoder and print shape and timing",
}


class _Parser(argparse.ArgumentParser):
    """argparse, whose usage errors name a file that was read as an option because its name starts with '-'."""

    def __init__(self, *args, dash_files: Sequence[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.dash_files = list(dash_files)

    def error(self, message: str):
        if self.dash_files:
            name = self.dash_files[0]
            message += (f"; {one_line(name)!r} is a file, but a name that starts with '-' reads as an option: "
                        f"write it as ./{one_line(name)}")
        super().error(message)


def _dash_files(argv: Sequence[str]) -> list[str]:
    argv = list(argv)
    if "--" in argv:  # what follows is never read as an option
        argv = argv[:argv.index("--")]
    return [a for a in argv if a.startswith("-") and a != "-" and os.path.exists(a)]


def build_parser(dash_files: Sequence[str] = ()) -> argparse.ArgumentParser:
    parser = _Parser(prog="vmm", description="Video-text retrieval with VideoMamba.", dash_files=dash_files)
    from vmm import __version__
    parser.add_argument("--version", action="version", version=f"vmm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        try:
            module = importlib.import_module(f"vmm.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"vmm.commands.{name}":
                continue  # command not part of this build
            raise
        p = sub.add_parser(name, help=help_text, description=help_text, dash_files=dash_files)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_dash_files(argv))
    args = parser.parse_args(argv)
    if not hasattr(args, "_run"):
        parser.print_help()
        return 2
    try:
        code = int(args._run(args) or 0)
        sys.stdout.flush()  # stdout to a pipe is block-buffered: a closed pipe shows here, not at exit
        return code
    except VmmError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of the output went away (`vmm search ... | head`): stop quietly like other tools, and point
        # stdout at /dev/null so that flushing it at exit does not fail again.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass  # stdout is no file (captured)
        return 141  # 128 + SIGPIPE, the status of a command the signal ended


if __name__ == "__main__":
    sys.exit(main())
