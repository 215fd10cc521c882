"""``vmm demo``: the offline demo (see vmm/demo.py): generate, index, search, evaluate."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_output", help="output folder [demo_output]")
    p.add_argument("--model", help="model folder (default: the shipped vmm_nano checkpoint)")
    p.add_argument("--videos", type=int, default=300, help="videos to generate [300]")
    p.add_argument("--seed", type=int, default=1234, help="corpus seed [1234]")
    p.add_argument("--queries", type=int, default=4, help="example searches to print [4]")
    p.add_argument("--workers", type=int, default=None, help="decoder processes")
    p.add_argument("--device", default=None)


def run(args: argparse.Namespace) -> int:
    from vmm.demo import DemoConfig, run_demo
    run_demo(DemoConfig(out_dir=Path(args.out), model=args.model, num_videos=args.videos, seed=args.seed,
                        queries=args.queries, workers=args.workers, device=args.device))
    return 0
