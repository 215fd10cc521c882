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
    p.add_argument("--checkpoint", metavar="PATH",
                   help="weights for --model (official .pth or .safetensors; default: the library's)")
    p.add_argument("--window", type=float, help="seconds per clip window (default: the library's, else 10; "
                                                "0 = one clip per video)")
    p.add_argument("--stride", type=float, help="seconds between window starts (default: the library's, else 5)")
    p.add_argument("--max-seconds", type=float, metavar="SECONDS",
                   help="index only the first SECONDS of each video (default: the library's, else the whole video)")
    p.add_argument("--frames", type=int, help="frames per clip (default: the library's, else the checkpoint file's, "
                                              "else the model's)")
    p.add_argument("--batch-size", type=int, default=16, help="clips per encoder batch [16]")
    p.add_argument("--workers", type=int, default=None, help="decoder processes [cores - 1: at most 8 with the model on the CPU, 32 on a GPU]")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds before a hung decoder is killed [60]")
    p.add_argument("--device", default=None, help="cpu or cuda[:N] for the model [cuda when available]")
    p.add_argument("--factory", default=None, help="FAISS index type: auto, Flat, HNSW32,Flat, IVF4096,Flat ... "
                                                   "(default: the library's setting, else auto)")
    p.add_argument("--retry-failed", action="store_true", help="try files that failed before again")
    p.add_argument("--remove", action="store_true", help="drop PATHs from the library instead of indexing them")
    p.add_argument("--quiet", action="store_true",
                   help="no progress (a bar on a terminal; where stderr is a log, a line a minute)")
    p.add_argument("--json", action="store_true",
                   help="print the run's summary as one JSON object (counts, failures) instead of the summary line")


# Options that only make sense when indexing, with their defaults: --remove refuses them rather than ignore them.
_INDEXING_OPTIONS = (("model", None), ("checkpoint", None), ("window", None), ("stride", None),
                     ("max_seconds", None), ("frames", None), ("batch_size", 16), ("workers", None), ("timeout", 60.0),
                     ("device", None), ("factory", None), ("retry_failed", False),
                     ("quiet", False))  # --remove draws no progress bar for --quiet to hide


def run(args: argparse.Namespace) -> int:
    from index.library import library_folder
    from vmm.commands import refuse_blank
    from vmm.errors import VmmError
    # The shell expands no `~` in `--library=~/lib` or in a quoted "~/My Videos": taken as written, the library
    # was built in a folder named '~' under the working folder, and such a PATH was "no such file or folder".
    args.paths = [os.path.expanduser(path) for path in args.paths]
    # So in --model=~/models/final, as vmm classify takes it: it was "model folder ~/models/final does not exist".
    args.model, args.checkpoint = (None if v is None else os.path.expanduser(v) for v in (args.model, args.checkpoint))
    if args.library.isspace():  # named by the option here; library_folder names '' (and " " for the Python API)
        refuse_blank("--library", args.library, "pass the library's folder")
    library = library_folder(os.path.expanduser(args.library))
    launch = _launch()
    if args.remove:
        return _remove(args, library, 0 if launch is None else launch.rank)
    from index.decode import DEFAULT_WINDOW, MIN_STRIDE
    from index.library import CATALOG_FILE, check_library_frames
    from retrieval.library import VideoLibrary
    from vmm.commands import check_library_readable
    from vmm.factory import check_frames
    # Checked before the model loads: a bad value costs nothing and names the option.
    if args.window is not None and not (args.window == 0 or args.window >= MIN_STRIDE):
        raise VmmError(f"--window must be 0 (one clip per video) or >= {MIN_STRIDE} seconds, got {args.window}")
    if args.stride is not None and not args.stride >= MIN_STRIDE:
        raise VmmError(f"--stride must be >= {MIN_STRIDE} seconds (at most {round(1 / MIN_STRIDE)} clips per "
                       f"second of video), got {args.stride}")
    if args.window == 0 and args.stride is not None:  # was dropped without a word; alone on such a library, refused
        raise VmmError(f"--stride {args.stride:g} does not apply with --window 0 (one clip per video); drop --stride, "
                       "or pass a --window in seconds")
    if args.max_seconds is not None and not args.max_seconds > 0:
        raise VmmError(f"--max-seconds must be > 0, got {args.max_seconds}")
    if args.frames is not None:
        check_frames(args.frames)
    if args.batch_size < 1:
        raise VmmError(f"--batch-size {args.batch_size}: pass at least 1 clip per encoder batch")
    if not args.timeout > 0:
        raise VmmError(f"--timeout {args.timeout:g}: pass a number of seconds > 0 (the default is 60)")
    check_library_readable(library)  # missing (created by the run) or not a folder (named by the run): checked later
    is_library = os.path.isfile(os.path.join(library, CATALOG_FILE))
    if not is_library:
        # Before the model: `--library ~/videos` (the videos' own folder) or a file was answered "no model given",
        # and with a model given only after it had loaded.
        _check_new_library_folder(library)
        _refuse_stray_space(library)
        new_window = DEFAULT_WINDOW if args.window is None else args.window
        if args.stride is not None and args.stride > new_window:  # an existing library names its own window
            raise VmmError(f"--stride {args.stride:g} is longer than the window ({new_window:g} s"
                           f"{'' if args.window is not None else ', the default'}); pass a --stride of at most "
                           f"{new_window:g} seconds, or a longer --window")
    if is_library and args.frames is not None:
        check_library_frames(library, args.frames)  # before the recorded model loads at them
    device = args.device
    distributed = launch is not None
    if distributed and device is None:
        device = _rank_device(launch)
    # The model given, else the library's recorded one, at the library's frames; a bad --device is named first
    lib = VideoLibrary.create(library, args.model, args.checkpoint, device, args.frames, batch_size=args.batch_size)
    window = math.inf if args.window == 0 else args.window
    kwargs = dict(window=window, stride=args.stride if window != math.inf else None, max_seconds=args.max_seconds,
                  batch_size=args.batch_size, workers=args.workers, timeout=args.timeout,
                  retry_failed=args.retry_failed, factory=args.factory,
                  progress=_progress(args.quiet, launch), on_open=lib.record_model)
    if distributed:
        from index.distributed import build_library_distributed
        summary = build_library_distributed(args.paths, library, lib.encoder, **kwargs)
    else:
        from index.ingest import build_library
        summary = build_library(args.paths, library, lib.encoder, **kwargs)
    if summary is not None:  # non-zero ranks of a distributed run return None
        _print_problems("failed", summary.failures, "failures (listed in the catalog)")
        _print_problems("unreadable", summary.unreadable, "unreadable paths")
        if args.json:
            _print_json(_summary_report(summary))
        else:
            print(summary.line(retry_hint="--retry-failed"))
    return 0


def _summary_report(summary) -> dict:
    """The run's summary as JSON types, its (path, detail) pairs as objects that say which is which."""
    import dataclasses
    report = dataclasses.asdict(summary)
    for name, detail in (("failures", "error"), ("unreadable", "reason"), ("duplicates", "indexed_as"),
                         ("kept", "folder")):
        report[name] = [{"path": path, detail: value} for path, value in getattr(summary, name)]
    return report


def _print_json(report: dict) -> None:
    import json
    print(json.dumps(report, indent=2))


def _progress(quiet: bool, launch):
    """A bar on a terminal; in a log (a batch job's output) a plain line a minute, each rank its own: a bar there left
    only its last frame, and hours of indexing showed nothing."""
    if quiet:
        return False
    if sys.stderr.isatty():
        return True
    from index.progress import log_lines
    return log_lines(label="indexing" if launch is None else f"rank {launch.rank}: indexing")


def _launch():
    """This process's place under torchrun / accelerate launch (WORLD_SIZE above 1), else None; a WORLD_SIZE or
    RANK that is no number is named in one line (int() of it ended the command with a traceback)."""
    if os.environ.get("WORLD_SIZE", "").strip() in ("", "1"):
        return None
    from index.distributed import launch_info
    info = launch_info()
    return info if info.world_size > 1 else None


def _rank_device(launch) -> str | None:
    """This rank's GPU under torchrun / accelerate launch: its local rank's, from launch_info (LOCAL_RANK, else the
    rank within its node: every rank took cuda:0 where LOCAL_RANK was not set), shared round-robin where a node runs
    more ranks than it has GPUs (cuda:N beyond them failed); None without a GPU.

    >>> from index.distributed import LaunchInfo
    >>> _rank_device(LaunchInfo(rank=5, world_size=8, local_rank=1, local_world_size=4)) in (None, "cuda:0", "cuda:1")
    True
    """
    import torch
    if not torch.cuda.is_available():
        return None
    return f"cuda:{launch.local_rank % torch.cuda.device_count()}"


def _check_new_library_folder(library: str) -> None:
    """Refuse a --library that no run can make a library of (a file, a folder of other files) in the run's words."""
    from index.library import refuse_foreign_folder, refuse_non_folder
    refuse_non_folder(library)
    if os.path.isdir(library):
        refuse_foreign_folder(library)


def _refuse_stray_space(library: str) -> None:
    """Refuse a new --library whose name has a space at an end (pasted) beside a library named without it: the run
    built a second library from scratch there, and searches of the first never saw the videos."""
    import shlex
    from index.library import CATALOG_FILE
    from vmm.errors import VmmError
    folder, name = os.path.split(library)
    meant = os.path.join(folder, name.strip())
    if meant != library and os.path.isfile(os.path.join(meant, CATALOG_FILE)):
        raise VmmError(f"--library {shlex.quote(library)} has a space at an end of its name, and {shlex.quote(meant)} "
                       "is a library; drop the space (or index into a folder of another name)")


def _print_problems(label: str, problems: list, more: str) -> None:
    from vmm.errors import one_line
    for path, error in problems[:20]:
        print(one_line(f"{label}: {path}: {error}"), file=sys.stderr)
    if len(problems) > 20:
        print(f"... and {len(problems) - 20} more {more}", file=sys.stderr)


def _remove(args: argparse.Namespace, library: str, rank: int) -> int:
    from index.library import remove_paths
    from vmm.errors import VmmError, one_line
    given = [f"--{name.replace('_', '-')}" for name, default in _INDEXING_OPTIONS if getattr(args, name) != default]
    if given:
        raise VmmError(f"--remove takes only PATHs, --library and --json; {', '.join(given)} would be ignored, drop "
                       f"{'it' if len(given) == 1 else 'them'}")
    if rank != 0:
        # Under torchrun / accelerate every rank runs this command: one removal is the job, and the other ranks
        # found the files already gone ("matched nothing") or failed on the lock rank 0 held.
        return 0
    not_found: list[str] = []
    n = remove_paths(library, args.paths, not_found=not_found)
    for path in not_found:
        print(f"not in the library: {one_line(path)} (check the path; nothing under it was indexed)", file=sys.stderr)
    if args.json:
        # absolute, as `library` and the indexing run's `empty` are: a relative PATH meant nothing to a script
        # reading the object from another working folder
        _print_json({"library": library, "removed": n, "not_found": [os.path.abspath(path) for path in not_found]})
    else:
        print(f"removed {n} file(s) from {library}"
              + (f"; {len(not_found)} of the PATHs matched nothing" if not_found else ""))
    return 0
