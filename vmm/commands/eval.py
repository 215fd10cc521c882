"""``vmm eval``: the official zero-shot retrieval evaluation on one test set (see docs/evaluation.md)."""
from __future__ import annotations

import argparse
import os
import sys

from retrieval.annotations import DATASETS
from vmm.errors import VmmError


def add_arguments(p: argparse.ArgumentParser) -> None:
    # str.lower: the datasets' own spellings (MSRVTT, DiDeMo) name them too, as in the Python API.
    p.add_argument("dataset", type=str.lower, choices=tuple(DATASETS),
                   help="test-set protocol (text length, paragraphs, DiDeMo 30 s trim)")
    p.add_argument("--annotations", required=True, metavar="FILE.json",
                   help="official test annotation file, e.g. msrvtt_ret_test1k.json")
    p.add_argument("--videos", required=True, metavar="DIR", help="folder the annotation's video paths are relative to")
    p.add_argument("--model", default=None,
                   help="registered model name or save_pretrained folder [the model matching --checkpoint, "
                        "else videomamba_m16_25m]")
    p.add_argument("--checkpoint", default=None,
                   help="weights: .pth/.safetensors path or hf-hub:OpenGVLab/VideoMamba/<file> "
                        "[the model's official file]")
    p.add_argument("--frames", type=int, default=None,
                   help="frames per video (official: 8) [a model folder's or checkpoint file's own, else 8]")
    p.add_argument("--rerank-k", type=int, default=128, help="ITM re-ranks the top k by ITC per query [128]")
    p.add_argument("--batch-size", type=int, default=16, help="videos per encoder batch [16]")
    p.add_argument("--text-batch-size", type=int, default=256, help="texts per encoder batch [256]")
    p.add_argument("--itm-batch-size", type=int, default=128, help="(video, text) pairs per ITM batch [128]")
    p.add_argument("--json", metavar="OUT", help="write the report as JSON")
    p.add_argument("--markdown", metavar="OUT", help="write the report as a Markdown table")
    p.add_argument("--save-scores", metavar="OUT.npz", help="also write the ITC and re-ranked score matrices")
    p.add_argument("--allow-missing", action="store_true",
                   help="evaluate without missing or unreadable videos (numbers then not comparable)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N [auto]")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                   help="auto: bf16 weights and autocast on CUDA (as the official eval), fp32 on CPU [auto]")
    # None: counted at run time as vmm index counts them (asking here imported FAISS for every `vmm --help`)
    p.add_argument("--workers", type=int, default=None,
                   help="decoder processes per rank; 0 decodes in the main process [the CPUs this process may "
                        "use, shared among a node's ranks, at most 8]")
    p.add_argument("--decode-timeout", type=float, default=120.0, help="seconds before a hung decoder is killed [120]")
    p.add_argument("--index", default="flat", choices=("flat", "ivf"),
                   help="FAISS index of the 'index' row: exact flat or IVF (ANN) [flat]")
    p.add_argument("--nlist", type=int, default=None, help="IVF lists [about 4*sqrt(N)]")
    p.add_argument("--nprobe", type=int, default=None,
                   help="IVF lists probed per query [as a library: nlist/32, 16 to 256, at most nlist]")
    p.add_argument("--sim-chunk", type=int, default=None, help="videos per ITC block [automatic, ~128 MiB]")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from retrieval.evaluate import EvalConfig, _default_workers, default_frames, default_model_for, evaluate
    from retrieval.report import check_outputs, write_json, write_markdown
    from vmm.commands import refuse_blank
    for option in ("json", "markdown", "save_scores"):
        # Path("") is the working folder ("--json  is a directory"), and " " wrote a report named " " there
        refuse_blank(f"--{option.replace('_', '-')}", getattr(args, option),
                     "pass an output file path, or leave it out")
    # A "~" the shell left alone (--json=~/r.json, a quoted "~/My Data/ann.json") is the home folder, as in vmm index
    # and search: the report was written under a folder named "~" in the working folder, and inputs were missing.
    for option in ("annotations", "videos", "model", "checkpoint", "json", "markdown", "save_scores"):
        value = getattr(args, option)
        if value is not None:
            setattr(args, option, os.path.expanduser(value))
    # `is not None`: an empty --model "$MODEL" (unset) is named by check, where it evaluated videomamba_m16_25m
    model = args.model if args.model is not None else (default_model_for(args.checkpoint) if args.checkpoint
                                                       else "videomamba_m16_25m")
    frames = args.frames if args.frames is not None else default_frames(model, args.checkpoint)
    config = EvalConfig(
        dataset=args.dataset, annotations=args.annotations, videos=args.videos, model=model,
        checkpoint=args.checkpoint, frames=frames, rerank_k=args.rerank_k, batch_size=args.batch_size,
        text_batch_size=args.text_batch_size, itm_batch_size=args.itm_batch_size, allow_missing=args.allow_missing,
        device=args.device, precision=args.precision,
        workers=_default_workers() if args.workers is None else args.workers, decode_timeout=args.decode_timeout,
        index=args.index, nlist=args.nlist, nprobe=args.nprobe, sim_chunk=args.sim_chunk,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    # A bad option or output path is refused now, not after an evaluation that may take an hour.
    config.check()
    check_outputs({"--json": args.json, "--markdown": args.markdown, "--save-scores": args.save_scores}, config)
    result = evaluate(config)
    if result is None:  # a non-zero rank of a distributed run: rank 0 reports
        return 0
    writes = [(args.json, lambda path: write_json(result.report, path)),
              (args.markdown, lambda path: write_markdown(result.report, path)),
              (args.save_scores, result.save_scores)]
    failed = []
    try:
        print(result.markdown(), flush=True)  # before writing, so a write that still fails loses no numbers
    finally:  # and the files, even when stdout fails: they may be the only copy of the numbers
        for path, write in writes:
            if path:
                try:
                    write(path)
                except VmmError as error:
                    failed.append(error)
    if failed:
        more = f" (and {len(failed) - 1} more output(s) failed)" if len(failed) > 1 else ""
        raise VmmError(f"{failed[0]}{more}; the metrics are printed above")
    return 0
