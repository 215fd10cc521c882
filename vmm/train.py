"""``accelerate launch -m vmm.train --config RECIPE.yaml [key=value ...]`` (or ``python -m vmm.train ...``).

Trains the multimodal VideoMamba model with the recipe's losses; see docs/training.md. A mistake in the command
line, a bad recipe, missing data or absent teacher weights print one ``error: ...`` line and exit with status 2
before any work starts (only the first process prints it).

>>> main(["--config", "configs/pretrain/tiny.yaml", "no_such.key=1"])
2
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Optional, Sequence

from vmm.errors import OneLineArgumentParser, RunFinished, VmmError


def _first_process() -> bool:
    from vmm.training.launch import launch_rank  # read before the accelerator exists
    return launch_rank() == 0


class _Parser(OneLineArgumentParser):
    """Usage mistakes are one line, printed by the first process only (under ``accelerate launch`` every process
    parses the same command line)."""

    def error_line(self, message: str) -> Optional[str]:
        return super().error_line(message) if _first_process() else None

    def parse_args(self, args=None, namespace=None):
        # Overrides on both sides of an option (`a=1 --config R b=2`, `--config R a=1 --check b=2`): plain
        # parse_args fills the overrides once and refused the second group as "unrecognized arguments".
        return self.parse_intermixed_args(args, namespace)


def build_parser() -> argparse.ArgumentParser:
    """The command's parser (also used by tests/test_doc_commands.py to check the documented command lines).

    >>> build_parser().parse_args(["--config", "configs/pretrain/tiny.yaml", "optim.lr=1e-4"]).overrides
    ['optim.lr=1e-4']
    """
    parser = _Parser(
        prog="python -m vmm.train",
        description="Pretrain a multimodal VideoMamba model (VTC, VTM, MLM, UTA) from a YAML recipe.",
        epilog="example: python -m vmm.train --config configs/pretrain/tiny.yaml schedule.max_steps=5")
    parser.add_argument("--config", required=True, help="recipe YAML, e.g. configs/pretrain/vmm_nano_synthetic.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides with Python literal values, e.g. optim.lr=1e-4 data.batch_size=16")
    parser.add_argument("--check", action="store_true", help="only check the recipe and its inputs, then exit")
    return parser


def _resume_hint(cfg) -> str:
    """What to run after Ctrl-C: train.resume=auto continues only from a complete checkpoint."""
    if cfg is None:
        return ""
    from vmm.training.loop import find_latest_checkpoint
    if find_latest_checkpoint(Path(cfg.train.output_dir)) is None:
        return (f"; nothing to resume, as no checkpoint was saved yet (train.save_every={cfg.train.save_every}): "
                f"run again into a new or empty train.output_dir")
    return "; resume with train.resume=auto"


def _stop_line(cfg, signum: int) -> Optional[str]:
    """The one line a stopped run prints, by process 0 only (every process of a run receives the signal)."""
    if not _first_process():
        return None
    what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    return f"{what}{_resume_hint(cfg)}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command; returns the exit status (0 done or already finished, 2 bad input).

    Ctrl-C (SIGINT) or SIGTERM ends the process from within, with status 130 or 143 (see
    :mod:`vmm.training.stop`); 130 is also returned where signals cannot be handled (not the main thread).
    """
    args = build_parser().parse_args(argv)
    cfg = None
    from vmm.training import stop
    with stop.on_signals(lambda signum: _stop_line(cfg, signum)):
        try:
            from vmm.training.config import load_config
            from vmm.training.loop import check_inputs, train
            cfg = load_config(args.config, args.overrides)
            inputs = check_inputs(cfg)
            if args.check:
                n = len(inputs.corpora)
                print(f"ok: {args.config} with {n} {'corpus' if n == 1 else 'corpora'} "
                      f"({sum(len(c) for c in inputs.corpora)} items)")
                return 0
            train(cfg, inputs)
        except RunFinished as done:  # the same command again after the run ended (a retried job): nothing to do
            if _first_process():
                print(f"done: {done}")
            return 0
        except VmmError as err:
            if _first_process():
                print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # where the handlers could not be installed (not the main thread)
            line = _stop_line(cfg, signal.SIGINT)
            if line:
                print(line, file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
