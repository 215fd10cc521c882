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
from typing import Optional


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


def _checkpoint_path(model, checkpoint: str) -> Path:
    from vmm.errors import VmmError
    from vmm.factory import HF_PREFIX, HF_REPO, resolve_pretrained
    from vmm.models.persistence import WEIGHTS_NAME, is_pretrained_dir

    if checkpoint == "default":
        hf_file = (model.model_meta.get("pretrained") or {}).get("hf_file")
        if not hf_file:
            raise VmmError(f"model {model.model_name} names no default checkpoint; pass --checkpoint PATH")
        checkpoint = f"{HF_PREFIX}{HF_REPO}/{hf_file}"
    if is_pretrained_dir(checkpoint):
        return Path(checkpoint) / WEIGHTS_NAME
    return resolve_pretrained(checkpoint)


def _overrides(args: argparse.Namespace, sizes: Optional[dict] = None) -> dict:
    """The config overrides of the command line, over the checkpoint's own ``sizes``."""
    from vmm.factory import _is_multimodal, frames_override
    from vmm.models.persistence import is_pretrained_dir
    from vmm.models.registry import merge_overrides

    # A video-text model's frame count is under vision: a top-level num_frames was refused as unknown. Its
    # weights' own count is the default, as in vmm index: a model folder's too (a folder of 4 frames with the
    # name's 8 failed as "--frames 8 ... or leave it out", --frames left out).
    video_text = _is_multimodal(args.model) and not is_pretrained_dir(args.model)
    found = _own_frames(_video_text_checkpoint(args)) if video_text else None
    overrides = merge_overrides(merge_overrides(frames_override(args.model, found), sizes or {}),
                                parse_model_args(args.model_arg))
    return merge_overrides(overrides, frames_override(args.model, args.frames))


def _own_frames(checkpoint: str) -> Optional[int]:
    """The frame count a checkpoint file or model folder was made for; None when it does not tell (a hub name)."""
    from vmm.factory import checkpoint_frames, saved_frames
    from vmm.models.persistence import is_pretrained_dir
    return saved_frames(checkpoint) if is_pretrained_dir(checkpoint) else checkpoint_frames(checkpoint)


def _build_model(args: argparse.Namespace, sizes: Optional[dict] = None):
    """The model of --model: a folder with its weights, a name without them (loaded once a video decodes)."""
    import vmm
    from vmm.errors import VmmError
    from vmm.factory import _frames_error, _is_multimodal
    from vmm.models.persistence import is_pretrained_dir

    video_text = _is_multimodal(args.model)
    overrides = _overrides(args, sizes)
    if is_pretrained_dir(args.model):
        if args.checkpoint:  # it silently replaced the folder's own weights; vmm encode and search refuse it too
            raise VmmError(f"--model {args.model} is a model folder with its own weights; drop --checkpoint "
                           f"({args.checkpoint}), or pass a classifier name (e.g. videomamba_m16_k400) with it")
        model, _, _ = vmm.create_model_and_transforms(args.model, **overrides)
        return model
    if args.model not in vmm.list_models():  # a typo, not a model that lacks --checkpoint
        raise VmmError(f"--model {args.model}: unknown model; {_close_names(args.model, vmm.list_models())}")
    if video_text:
        checkpoint = _video_text_checkpoint(args)  # named now, not once a video has decoded
        if _checkpoint_kind(checkpoint) == "classifier":
            raise VmmError(f"checkpoint {checkpoint} is a video classifier's, not a video-text model's; pass it with "
                           "the classifier --model it was trained as (e.g. videomamba_m16_k400) to use its head, or "
                           f"video-text weights for zero-shot labels with {args.model}")
        # A model folder is loaded exactly (vmm_nano's shipped one too): another frame count failed only once the
        # first video had been decoded at that count.
        saved = _own_frames(checkpoint) if is_pretrained_dir(checkpoint) else None
        if args.frames is not None and saved is not None and args.frames != saved:
            raise _frames_error(args.frames, saved, checkpoint)
    elif not args.checkpoint:
        raise VmmError(f"--checkpoint is required for {args.model} (random weights give meaningless labels); pass "
                       "the downloaded K400 file, e.g. --checkpoint videomamba_m16_k400_f8_res224.pth, or 'default'")
    model, _, _ = vmm.create_model_and_transforms(args.model, **overrides)
    return model


def _video_text_checkpoint(args: argparse.Namespace) -> str:
    """The weights of a video-text model name: --checkpoint, else (or for 'default') its released ones."""
    from vmm.errors import VmmError
    from vmm.factory import default_pretrained

    checkpoint = args.checkpoint if args.checkpoint not in (None, "default") else default_pretrained(args.model)
    if checkpoint is None:
        raise VmmError(f"--model {args.model} has no released weights and random ones give meaningless labels; pass "
                       "--checkpoint PATH, or a trained model folder (vmm train's final/) as --model")
    return checkpoint


def _with_weights(args: argparse.Namespace, model, sizes: Optional[dict]):
    """``model`` with the weights of --checkpoint (a video-text model name: its default without one); a model
    folder as it is."""
    import vmm
    from vmm.classify import is_video_text_model
    from vmm.factory import load_weights
    from vmm.models.persistence import is_pretrained_dir

    if is_pretrained_dir(args.model):
        return model
    if not is_video_text_model(model):
        return load_weights(model, _checkpoint_path(model, args.checkpoint))
    checkpoint = _video_text_checkpoint(args)
    if is_pretrained_dir(checkpoint):  # vmm_nano's shipped folder, a trainable-only export: only a build loads them
        return vmm.create_model(args.model, pretrained=checkpoint, **_overrides(args, sizes))
    return load_weights(model, _checkpoint_path(model, checkpoint))


def _checkpoint_sizes(args: argparse.Namespace, model) -> Optional[dict]:
    """The checkpoint's frame count, resolution and number of classes, each where the command line did not choose
    it and it differs from the model config's (a chosen size gets the position tables interpolated to it, as
    before): an SSv2 file run as videomamba_m16_k400 has a head of 174 classes, not the config's 400."""
    from vmm.errors import VmmError
    from vmm.factory import HF_PREFIX, checkpoint_vision_settings
    from vmm.models.persistence import is_pretrained_dir
    chosen = parse_model_args(args.model_arg)
    if args.frames is not None:
        chosen["num_frames"] = args.frames
    # Local files and folders only, as vmm eval, index and encode: 'default' and hf-hub: names would be fetched
    # here, before the video is checked (a config's "default" file is of the config's own size).
    if not args.checkpoint or args.checkpoint == "default" or args.checkpoint.startswith(HF_PREFIX):
        return None
    kind = _checkpoint_kind(args.checkpoint)
    if kind == "multimodal":  # loading it failed only once a video had decoded, and named the file's size as the fix
        fix = (f"as --model {args.checkpoint}" if is_pretrained_dir(args.checkpoint)
               else "with a video-text --model (e.g. videomamba_m16_25m, or the one it was trained as)")
        raise VmmError(f"checkpoint {args.checkpoint} is a video-text model's, not a classifier's; pass it {fix} for "
                       "zero-shot labels, or a classifier checkpoint such as videomamba_m16_k400_f8_res224.pth")
    # Resolved and sniffed now so that a mistyped path or a damaged file is named before the video is decoded
    # (minutes for a long phone video).
    path = _checkpoint_path(model, args.checkpoint)
    if not path.is_file():
        return None  # loading it names what is there instead
    found = checkpoint_vision_settings(path)
    if (found.get("num_classes") == 0 or kind == "vision") and "num_classes" not in chosen:
        raise VmmError(f"checkpoint {args.checkpoint} has no classification head (it holds features only); pass a "
                       "classifier checkpoint such as videomamba_m16_k400_f8_res224.pth")
    cfg = model.cfg
    sizes = {key: found[key] for key in ("num_frames", "img_size", "num_classes")
             if key in found and key not in chosen and found[key] != getattr(cfg, key)}
    return sizes or None


def _checkpoint_kind(checkpoint: Optional[str]) -> Optional[str]:
    """What a local checkpoint file or model folder holds, in vmm.models.checkpoint's words: "multimodal" (a
    video-text model), "classifier" or "vision"; None for a hub name, 'default', or weights whose keys do not tell.
    VmmError for a damaged file."""
    from vmm.factory import HF_PREFIX, _is_multimodal, _tensor_shapes, checkpoint_vision_settings
    from vmm.models.checkpoint import _kind
    from vmm.models.persistence import is_pretrained_dir

    if not checkpoint or checkpoint == "default" or checkpoint.startswith(HF_PREFIX):
        return None
    if is_pretrained_dir(checkpoint):  # a trainable-only export lacks the frozen weights: its config tells
        return "multimodal" if _is_multimodal(checkpoint) else None
    if not Path(checkpoint).is_file():
        return None  # loading it names what is there instead
    checkpoint_vision_settings(checkpoint)  # names a file that is no checkpoint, or a damaged one
    return _kind(_tensor_shapes(Path(checkpoint)))


def _close_names(typed: str, names: list[str]) -> str:
    """Names resembling ``typed``, whole or one '_' part ('tinycls' -> videomamba_tiny), else the classifiers."""
    from difflib import SequenceMatcher
    score = {n: max(SequenceMatcher(None, typed.lower(), p).ratio() for p in [n, *n.split("_")]) for n in names}
    close = sorted((n for n in names if score[n] >= 0.6), key=lambda n: -score[n])[:4]
    if close:
        return f"did you mean {', '.join(close)}?"
    return f"classifiers: {', '.join(n for n in names if 'k400' in n)} (or a save_pretrained folder)"


def run(args: argparse.Namespace) -> int:
    from vmm.classify import (ClassifyOptions, _classifier_head, _mean_probabilities, _scorer, _templates_for,
                              _view_reader, _views_or_errors, find_videos, is_video_text_model, resolve_labels,
                              top_labels)
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
    model = _build_model(args)
    sizes = None
    if not is_video_text_model(model):
        _classifier_head(model)  # a video-text model has no classifier config to compare the checkpoint with
        sizes = _checkpoint_sizes(args, model)
        if sizes:  # the file's own frame count, resolution and classes (a ..._f16_res224to384.pth: 16 frames at 384 px)
            model = _build_model(args, sizes)
    names = resolve_labels(model, args.labels)
    templates = _templates_for(model, args.template)
    index = {name: i for i, name in enumerate(names)}
    cfg = getattr(model.cfg, "vision", model.cfg)
    mode = {"mode": "head"} if templates is None else {"mode": "zero-shot", "templates": templates}
    classified, failed, score = 0, bool(problems), None
    for video, views, error in _views_or_errors(videos, _view_reader(model, options)):
        if error is not None:
            _report_failure(video, error, args.json)
            failed = True
            continue
        if score is None:  # after the first video decodes: a bad lone video is named before a large checkpoint loads
            model = _with_weights(args, model, sizes).to(device)
            with warnings.catch_warnings():  # labels that tie: one "warning:" line, as the CLI's others
                warnings.showwarning = _print_warning
                # a video-text model encodes the prompts here; the bar, as vmm index's, only on a terminal
                score = _scorer(model, names, templates, options, progress=not args.json and sys.stderr.isatty())
        classified += 1
        probabilities, seconds = _mean_probabilities(score, views)
        top = [{"rank": r + 1, "index": index[label], "label": label, "probability": p}
               for r, (label, p) in enumerate(top_labels(probabilities, names, options.top_k))]
        model_name = getattr(model, "model_name", args.model)
        if args.json:
            print(json.dumps({"video": video, "model": model_name, **mode, "clips": options.clips,
                              "crops": options.crops, "frames": cfg.num_frames, "img_size": cfg.img_size,
                              "num_classes": len(names), "top": top, "seconds": round(seconds, 3)}), flush=True)
            continue
        views_text = (f"{options.clips} clip{'s' * (options.clips > 1)} x "
                      f"{options.crops} crop{'s' * (options.crops > 1)}")
        how = "" if templates is None else (f" zero-shot ({len(names)} labels x {len(templates)} "
                                            f"template{'s' * (len(templates) > 1)})")
        if classified > 1:
            print()
        print(f"{one_line(video)}: {views_text} of {cfg.num_frames} frames at {cfg.img_size} px, {model_name}{how}, "
              f"{seconds:.2f} s on {device}")
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
