"""``vmm index PATH... --library LIB``: build or update a searchable video library."""
from __future__ import annotations

import argparse
import math
import os
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="video files or folders (searched recursively)")
    p.add_argument("--library", required=True, metavar="LIB", help="library folder (created if missing)")
    p.add_argument("--model", help="model name (e.g. vmm_nano, videomamba_m16_25m), a save_pretrained folder, "
                                   "or 'color-histogram'; default: the library's model")
    p.add_argument("--checkpoint", metavar="PATH", help="weights for --model (official .pth or .safetensors)")
    p.add_argument("--window", type=float, help="seconds per clip window (default 10; 0 = one clip per video)")
    p.add_argument("--stride", type=float, help="seconds between window starts (default 5)")
    p.add_argument("--max-seconds", type=float, help="index only the first N seconds of each video")
    p.add_argument("--frames", type=int, help="frames per clip (default: the model's)")
    p.add_argument("--batch-size", type=int, default=16, help="clips per encoder batch [16]")
    p.add_argument("--workers", type=int, default=None, help="decoder processes [cores - 1]")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds before a hung decoder is killed [60]")
    p.add_argument("--device", default=None, help="cuda or cpu [cuda when available]")
    p.add_argument("--factory", default=None, help="FAISS index type: auto, Flat, HNSW32,Flat, IVF4096,Flat ...")
    p.add_argument("--retry-failed", action="store_true", help="try files that failed before again")
    p.add_argument("--remove", action="store_true", help="drop PATHs from the library instead of indexing them")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from retrieval.library import _read_model_file, _write_model_file, load_encoder
    from vmm.errors import VmmError
    library = os.path.abspath(args.library)
    if args.remove:
        from index.library import remove_paths
        n = remove_paths(library, args.paths)
        print(f"removed {n} file(s) from {library}")
        return 0
    saved = _read_model_file(library) if os.path.isdir(library) else {}
    model, checkpoint = args.model, args.checkpoint
    if model is None and checkpoint is None:
        model, checkpoint = saved.get("model"), saved.get("checkpoint")
    if model is None and checkpoint is None:
        raise VmmError("no model given; pass --model NAME (e.g. vmm_nano) or --checkpoint PATH")
    frames = args.frames or saved.get("frames")
    device = args.device
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and device is None:
        import torch
        if torch.cuda.is_available():  # one GPU per rank under accelerate launch / torchrun
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    encoder = load_encoder(model, checkpoint, device, frames, batch_size=args.batch_size)
    window = math.inf if args.window == 0 else args.window
    kwargs = dict(window=window, stride=args.stride if window != math.inf else None, max_seconds=args.max_seconds,
                  batch_size=args.batch_size, workers=args.workers, timeout=args.timeout,
                  retry_failed=args.retry_failed, factory=args.factory, progress=not args.quiet)
    if distributed:
        from index.distributed import build_library_distributed
        summary = build_library_distributed(args.paths, library, encoder, **kwargs)
    else:
        from index.library import build_library
        summary = build_library(args.paths, library, encoder, **kwargs)
    if summary is not None:  # non-zero ranks of a distributed run return None
        _write_model_file(library, model, checkpoint, frames)
        for path, error in summary.failures[:20]:
            print(f"failed: {path}: {error}", file=sys.stderr)
        if len(summary.failures) > 20:
            print(f"... and {len(summary.failures) - 20} more failures (listed in the catalog)", file=sys.stderr)
        print(summary.line(retry_hint="--retry-failed"))
    return 0
