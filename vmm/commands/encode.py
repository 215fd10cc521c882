"""``vmm encode``: encode one clip (a video file, or a generated one) and print the embedding shape and timing."""
from __future__ import annotations

import argparse
import os
import time

import numpy as np


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", nargs="?", help="video file (default: a generated moving-square clip, at the model's frames and size)")
    p.add_argument("--model", default="videomamba_tiny",
                   help="model name, e.g. vmm_nano or videomamba_middle (an unknown one lists them all), or a "
                        "save_pretrained folder [videomamba_tiny]")
    p.add_argument("--checkpoint", help="weights: a .pth/.safetensors file, a save_pretrained folder or "
                                        "hf-hub:OpenGVLab/VideoMamba/<file> (default: random init)")
    p.add_argument("--frames", type=int, default=None,
                   help="frames per clip (default: the checkpoint file's, else the model's)")
    # None: cuda when available, decided at run time (asking torch here made every `vmm --help` import it)
    p.add_argument("--device", default=None,
                   help="cpu or cuda[:N] [cuda when available]")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch [torch's default: one per core]")


def _generated_clip(frames: int, size: int) -> np.ndarray:
    clip = np.zeros((frames, size, size, 3), np.uint8)
    side = size // 4
    for t in range(frames):
        x = int((size - side) * t / max(frames - 1, 1))
        clip[t, size // 3: size // 3 + side, x: x + side] = (220, 40, 40)
    return clip


def _forward(model):
    """The clip -> embedding forward of ``model``: a video-text model's unit vector, a classifier's normalised CLS
    (its features before the head), a vision encoder's pooled vectors as its config pools them (per frame with
    ``keep_temporal``); the vision encoders (``videomamba_tiny_vision`` ...) have neither method, and failed with
    an AttributeError traceback."""
    if hasattr(model, "encode_video"):
        return model.encode_video
    if hasattr(model, "forward_features"):
        return model.forward_features
    return lambda x: model(x, keep_temporal=model.cfg.keep_temporal)[1]


def run(args: argparse.Namespace) -> int:
    import torch

    import vmm
    from vmm.commands import refuse_blank, set_threads
    from vmm.errors import VmmError, one_line
    from vmm.factory import checkpoint_frames, frames_override, resolve_device
    if args.video == "":  # not the same as leaving it out, which encodes the generated clip
        raise VmmError("the video path is empty; pass a video file, or leave it out for a generated clip")
    if args.checkpoint is not None and not args.checkpoint.strip():  # else named as the Python API's pretrained=''
        raise VmmError("--checkpoint is empty; pass a weights file or model folder, or leave it out for random weights")
    refuse_blank("--model", args.model, "pass a model name (e.g. vmm_nano) or a model folder, or leave it out for "
                                        "videomamba_tiny")
    device = resolve_device(args.device)  # before the weights load: a typo should not cost a model build
    if args.video:
        args.video = os.path.expanduser(args.video)  # a quoted "~/My Videos/a.mp4" is not expanded by the shell
        from retrieval.library import check_video_file
        check_video_file(args.video, "video")
    set_threads(args.threads)
    frames = args.frames if args.frames is not None else checkpoint_frames(args.checkpoint)
    overrides = frames_override(args.model, frames)
    model, _, eval_tf = vmm.create_model_and_transforms(args.model, pretrained=args.checkpoint, **overrides)
    model = model.to(device).eval()
    cfg = model.cfg.vision if hasattr(model.cfg, "vision") else model.cfg
    if args.video:
        from retrieval.library import read_query_clip
        frames = read_query_clip(args.video, cfg.num_frames, "video")
    else:
        frames = _generated_clip(cfg.num_frames, cfg.img_size)
    x = eval_tf(frames).unsqueeze(0).to(device)
    with torch.inference_mode():
        encode = _forward(model)
        encode(x)  # warm-up: first-call allocations and backend selection stay out of the timing
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = encode(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    if not torch.isfinite(out).all():
        raise VmmError("the encoder produced non-finite values; check the checkpoint")
    threads = torch.get_num_threads()
    print(f"model {one_line(args.model)}: input {tuple(x.shape)} -> embedding {tuple(out.shape)} "
          f"in {dt * 1000:.0f} ms on {device} ({threads} thread{'s' * (threads != 1)})")
    return 0
