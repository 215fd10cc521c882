"""The ``vmm`` command: a thin argparse layer over the Python API.

Each subcommand lives in ``vmm/commands/<name>.py`` with ``add_arguments(parser)`` and ``run(args) -> int``.
User errors (:class:`vmm.errors.VmmError`) print one line ``error: ...`` and exit with status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from vmm.errors import VmmError

COMMANDS = {
    "demo": "run the offline demo: generate a video library, index it, search it, evaluate",
    "index": "index a folder of videos into a searchable library",
    "search": "search a library by text or by example video",
    "eval": "zero-shot retrieval evaluation (MSRVTT, DiDeMo, ActivityNet, LSMDC, MSVD protocols)",
    "classify": "top-5 Kinetics-400 labels of a video with a VideoMamba classifier",
    "encode": "encode a video clip with a VideoMamba encoder and print shape and timing",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmm", description="Video-text retrieval with VideoMamba.")
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
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "_run"):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except VmmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
