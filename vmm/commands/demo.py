"""``vmm demo``: the offline demo (see vmm/demo.py): generate, index, search, evaluate."""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_output", help="output folder [demo_output]")
    p.add_argument("--model", help="model folder (default: the shipped vmm_nano checkpoint)")
    p.add_argument("--videos", type=int, default=300, help="videos to generate [300]")
    p.add_argument("--seed", type=int, default=1234, help="corpus seed [1234]")
    p.add_argument("--queries", type=int, default=4, help="example searches to print [4]")
    p.add_argument("--workers", type=int, default=None,
                   help="processes that generate, decode and evaluate the videos; 0 works in this process "
                        "[up to 4 to generate, as vmm index to index, 1 to evaluate]")
    p.add_argument("--device", default=None, help="cpu or cuda[:N] [cuda when available]")


def _check(args: argparse.Namespace) -> None:
    """What would otherwise fail after the corpus is generated (minutes) is refused before any work."""
    from vmm.errors import VmmError
    if not args.out.strip():  # " " was named by run_demo as "--out PosixPath(' ') (out_dir=PosixPath(' '))"
        raise VmmError("--out is empty; pass a folder for the demo's output (e.g. --out demo_output)")
    out = os.path.expanduser(args.out)  # where run_demo writes: a "~" the shell left alone is the home folder
    if args.videos < 2 or args.queries < 0 or (Path(out).exists() and not Path(out).is_dir()):
        return  # run_demo names these, before it writes anything
    # The seed, the device, a --model that does not load or does not fit a demo library already in --out: refused
    # by run_demo, before it writes anything.
    _check_writable(out)


def _check_writable(out: str) -> None:
    """Try to create a folder where the output goes, so a read-only or impossible --out fails now."""
    import tempfile
    from vmm.errors import VmmError
    parent = Path(os.path.abspath(out))
    while not parent.exists():
        parent = parent.parent
    try:
        os.rmdir(tempfile.mkdtemp(dir=parent, prefix=".vmm-demo-"))
    except OSError as e:
        raise VmmError(f"--out {out}: cannot create folders in {parent} ({e.strerror}); pass a folder you can "
                       "write to") from None


def run(args: argparse.Namespace) -> int:
    from vmm.demo import DemoConfig, run_demo
    _check(args)
    run_demo(DemoConfig(out_dir=Path(args.out), model=args.model, num_videos=args.videos, seed=args.seed,
                        queries=args.queries, workers=args.workers, device=args.device))
    return 0
