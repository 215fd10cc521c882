"""``vmm classify``: top-5 labels of videos with a VideoMamba classifier (Kinetics-400), or zero-shot with a
video-text model and any label set, the model loaded once.

    vmm classify clip.mp4 --model videomamba_m16_k400 --checkpoint videomamba_m16_k400_f8_res224.pth
    vmm classify a.mp4 b.mp4 holiday/ --model videomamba_m16_k400 --checkpoint ... --clips 4 --crops 3 --json
    vmm classify clip.mp4 --model vmm_nano --labels colours.txt --template "a {} shape moves"

Bad input is checked before the weights load: the options, the video paths, the model's head, the label count,
then the decoding of the first video. A video that cannot be classified gets one ``error:`` line and the others
are still classified; the exit status is then 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("videos", nargs="+", metavar="VIDEO",
                   help="video files, folders (searched below, as vmm index does) or quoted globs ('clips/*.mp4')")
    p.add_argument("--model", default="videomamba_m16_k400",
                   help="classifier, or video-text model for zero-shot labels (vmm_nano, videomamba_m16_25m), by name "
                   "or save_pretrained / vmm train folder [videomamba_m16_k400]")
    p.add_argument("--checkpoint", help="weights: a .pth/.safetensors file, a save_pretrained folder, "
                   "hf-hub:OpenGVLab/VideoMamba/<file>, or 'default' (the model config's official file; a "
                   "video-text model name's default without it)")
    p.add_argument("--clips", type=int, default=1, help="temporal views (official K400 test: 4) [1]")
    p.add_argument("--crops", type=int, default=1, help="spatial views along the long side (official: 3) [1]")
    p.add_argument("--top-k", type=int, default=5, help="labels to print [5]")
    p.add_argument("--labels", help="class names: a built-in set (kinetics400) or a file in head order (.txt one "
                   "name a line, .csv index,name rows, .json); a video-text model takes any names, zero-shot "
                   "(default: the model's, else kinetics400)")
    p.add_argument("--template", action="append", metavar="TEXT",
                   help="zero-shot prompt with {} for the class name, repeatable: a class scores the mean of its "
                   "prompts ['a video of {}.' and 3 more]")
    p.add_argument("--frames", type=int, help="frames per clip (default: the checkpoint's, else the model's)")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="model config override, repeatable; dotted keys nest (e.g. depth=2, vision.depth=2)")
    p.add_argument("--json", action="store_true", help="print one JSON object per video, a line each, instead of text")
    p.add_argument("--batch-size", type=int, default=4, help="views per forward pass [4]")
    p.add_argument("--decoder", default="auto", choices=["auto", "decord", "pyav"], help="video decoder [auto]")
    # None: cuda when available, decided at run time (asking torch here made every `vmm --help` import it)
    p.add_argument("--device", default=None,
                   help="cpu or cuda[:N] [cuda when available]")
    p.add_argument("--threads", type=int, help="CPU threads for torch [torch's default: one per core]")


def parse_model_args(items: list[str]) -> dict:
    """``["depth=2", "vision.img_size=32"]`` -> ``{"depth": 2, "vision": {"img_size": 32}}`` (JSON values).

    >>> parse_model_args(["depth=2", "vision.img_size=32", "scan_backend=torch"])
    {'depth': 2, 'vision': {'img_size': 32}, 'scan_backend': 'torch'}
    """
    from vmm.errors import VmmError

    overrides: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise VmmError(f"--model-arg expects KEY=VALUE (e.g. depth=2), got {item!r}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text  # a bare word such as a backend name
        *parents, leaf = key.split(".")
        node = overrides
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise VmmError(f"--model-arg {item!r} conflicts with an earlier value for {part!r}")
        node[leaf] = value
    return overrides


def run(args: argparse.Namespace) -> int:
    from vmm.classify import (ClassifyOptions, check_templates, classify_videos, find_videos, is_video_text_model,
                              load_classifier, resolve_labels)
    from vmm.commands import refuse_blank, set_threads
    from vmm.errors import VmmError, one_line
    from vmm.factory import resolve_device
    from vmm.models.persistence import user_path

    options = ClassifyOptions(args.clips, args.crops, args.top_k, args.batch_size, args.decoder)
    options.check()
    # An unset "$CKPT": '' was silently dropped beside a model folder, and --model '' was "unknown model"
    refuse_blank("--model", args.model, "pass a classifier name (e.g. videomamba_m16_k400), a video-text model or a "
                                        "model folder, or leave it out")
    refuse_blank("--checkpoint", args.checkpoint, "pass a weights file, a model folder or 'default', or leave it out")
    # A quoted "~/models/final" (a shell expands only an unquoted one) was no folder: an unknown model, or a
    # checkpoint "folder, not a weights file"
    args.model, args.checkpoint = user_path(args.model), user_path(args.checkpoint)
    if args.labels and Path(args.labels).is_dir():
        raise VmmError(f"--labels {args.labels} is a folder; pass a text file with one class name per line, or a "
                       "built-in set (kinetics400)")
    if "" in args.videos:  # an unset shell variable ("$VIDEO"): named as such, not as Python's empty `paths`
        raise VmmError("a VIDEO is an empty path (''); pass video files or folders")
    videos, problems = find_videos(args.videos)
    for video, error in problems:  # named at once, not after the other videos are classified
        _report_failure(video, error, args.json)
    if not videos:
        return 2
    device = resolve_device(args.device)
    set_threads(args.threads)
    model, load_weights = load_classifier(args.model, args.checkpoint, frames=args.frames,
                                          model_args=parse_model_args(args.model_arg), device=device,
                                          defer_weights=True)
    names = resolve_labels(model, args.labels)
    templates = check_templates(args.template) if is_video_text_model(model) else None
    index = {name: i for i, name in enumerate(names)}
    cfg = getattr(model.cfg, "vision", model.cfg)
    model_name = getattr(model, "model_name", args.model)
    mode = {"mode": "head"} if templates is None else {"mode": "zero-shot", "templates": templates}
    # The weights load, and a video-text model's prompts encode, once the first video has decoded: a bad lone video
    # is named before a large checkpoint loads. The bar, as vmm index's, only on a terminal.
    results = classify_videos(videos, model, clips=options.clips, crops=options.crops, top_k=options.top_k,
                              labels=names, batch_size=options.batch_size, backend=options.backend,
                              templates=args.template, load=load_weights,
                              progress=not args.json and sys.stderr.isatty())
    classified, failed = 0, bool(problems)
    with warnings.catch_warnings():  # labels that tie: one "warning:" line, as the CLI's others
        warnings.showwarning = _print_warning
        for result in results:
            if result.error is not None:
                _report_failure(result.video, result.error, args.json)
                failed = True
                continue
            classified += 1
            top = [{"rank": r + 1, "index": index[label], "label": label, "probability": p}
                   for r, (label, p) in enumerate(result.top)]
            if args.json:
                print(json.dumps({"video": result.video, "model": model_name, **mode, "clips": options.clips,
                                  "crops": options.crops, "frames": cfg.num_frames, "img_size": cfg.img_size,
                                  "num_classes": len(names), "top": top, "seconds": round(result.seconds, 3)}),
                      flush=True)
                continue
            views_text = (f"{options.clips} clip{'s' * (options.clips > 1)} x "
                          f"{options.crops} crop{'s' * (options.crops > 1)}")
            how = "" if templates is None else (f" zero-shot ({len(names)} labels x {len(templates)} "
                                                f"template{'s' * (len(templates) > 1)})")
            if classified > 1:
                print()
            print(f"{one_line(result.video)}: {views_text} of {cfg.num_frames} frames at {cfg.img_size} px, "
                  f"{model_name}{how}, {result.seconds:.2f} s on {device}")
            for row in top:
                print(f"{row['rank']:>3}  {row['probability']:.4f}  {row['label']}")
            sys.stdout.flush()  # a long run piped to a file or `tee` shows each video as it is done
    return 2 if failed else 0


def _print_warning(message, *_) -> None:
    """A Python warning as one ``warning:`` line on stderr, without its source location."""
    from vmm.errors import one_line
    print(f"warning: {one_line(str(message))}", file=sys.stderr, flush=True)


def _report_failure(video: str, error: str, as_json: bool) -> None:
    """One ``error:`` line on stderr (``error`` names the video), and with --json a line ``{"video", "error"}``."""
    from vmm.errors import one_line
    print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
    if as_json:
        print(json.dumps({"video": video, "error": error}), flush=True)
