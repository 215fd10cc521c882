"""Deterministic mp4 encoding: the same uint8 RGB frames give the same bytes, run after run (PyAV, one thread)."""
from __future__ import annotations

import contextlib
import itertools
import math
import os
from fractions import Fraction
from typing import Iterable

import numpy as np

from vmm.atomic import fsync_path
from vmm.errors import VmmError, is_whole_number


def pick_codec(requested: str = "auto") -> str:
    """``libx264`` when the installed PyAV has it, else ``mpeg4``; or check the requested one.

    >>> pick_codec() in ("libx264", "mpeg4")
    True
    """
    import av

    if requested == "auto":
        return "libx264" if "libx264" in av.codecs_available else "mpeg4"
    if requested not in ("libx264", "mpeg4"):
        raise VmmError(f"--codec {requested}: unknown codec; use auto, libx264 or mpeg4")
    if requested not in av.codecs_available:
        raise VmmError(f"--codec {requested}: this PyAV build has no {requested} encoder; use --codec auto")
    return requested


def write_video(frames: Iterable[np.ndarray], path: str | os.PathLike, fps: int | Fraction | float,
                codec: str = "libx264") -> None:
    """Encode ``(T, H, W, 3)`` uint8 RGB frames (or any iterable of ``(H, W, 3)`` frames) into an mp4 at ``path``.

    ``fps`` may be a fraction (``Fraction(30000, 1001)``, NTSC's 29.97). Encoding runs on one thread so the bytes
    are identical from run to run. The file is written under a hidden ``.NAME.partial`` name and renamed when
    complete (its data flushed to the disk first), so a failed write or a power cut leaves ``path`` as it was or
    whole.

    >>> import tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "clip.mp4")
    >>> write_video(np.zeros((8, 32, 32, 3), np.uint8), out, fps=8)
    >>> os.path.getsize(out) > 0
    True
    """
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise VmmError(f"write_video: no frames to encode into {path}")
    # Checked before the file is opened: PyAV's own errors for these ("Generic error in an external library" for an
    # odd width) name neither the frame nor the fix.
    _check_frame(first, 0)
    rate = None
    if is_whole_number(fps):
        rate = Fraction(int(fps))
    elif isinstance(fps, Fraction) or (isinstance(fps, (float, np.floating)) and math.isfinite(fps)):
        rate = Fraction(fps) if isinstance(fps, Fraction) else Fraction(float(fps))
    if rate is None or not Fraction(1, 100) <= rate <= 1000:
        raise VmmError(f"write_video: fps must be a number of frames per second from 0.01 to 1000, got {fps!r}")
    rate = rate.limit_denominator(1001)  # a float's binary expansion as the short fraction it stands for
    path = os.path.expanduser(path)  # as every vmm path is read: a "~/clips/a.mp4" no shell expanded
    if os.path.isdir(path):  # PyAV said "[Errno 21] Is a directory", naming neither the path nor the fix
        raise VmmError(f"write_video: {path} is a folder; pass the path of the .mp4 file to write")
    folder, name = os.path.split(path)
    if not os.path.isdir(folder or "."):  # PyAV said "[Errno 2] No such file or directory", without the path
        raise VmmError(f"write_video: the folder of {path} does not exist; create it first")
    # Opening path itself emptied an existing file at once, and a failure part way (a bad frame, a generator that
    # raised) then deleted it: the previous video was lost.
    partial = os.path.join(folder, f".{name}.partial")
    try:
        _encode(itertools.chain([first], frames), first.shape, partial, rate, codec)
        # Flushed before the rename: after a power cut, a rename of unflushed data can leave an empty or cut file
        # under the final name, which a corpus's meta.json (written after its videos) then vouched for.
        fsync_path(partial)
        os.replace(partial, path)
    except BaseException:
        # Half an mp4 has no index and reads as a corrupt video: leave no file rather than that one.
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise


def _check_frame(frame, number: int, shape=None) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        got = (f"{frame.dtype} array of shape {frame.shape}" if isinstance(frame, np.ndarray)
               else type(frame).__name__)
        raise VmmError(f"write_video: frame {number} must be a uint8 RGB array of shape (H, W, 3), got {got}")
    if shape is None and (frame.shape[0] % 2 or frame.shape[1] % 2 or min(frame.shape[:2]) < 2):
        raise VmmError(f"write_video: frames of {frame.shape[1]}x{frame.shape[0]} pixels cannot be encoded as "
                       "yuv420p; use an even width and height")
    if shape is not None and frame.shape != shape:
        raise VmmError(f"write_video: frame {number} has shape {frame.shape}, but frame 0 has {shape}; give every "
                       "frame the same size")


def _encode(frames, shape, path, fps: Fraction, codec: str) -> None:
    import av

    with av.open(os.fspath(path), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = shape[0], shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = max(1, round(fps))
        # Bytes must not depend on the run: one encoder thread, explicit
        # timestamps, and x264's plain C code paths. With x264's SIMD code on an
        # AVX-512 machine, about 1 clip in 30 of this size came out different
        # depending on what the process had encoded before (PyAV 18.1; the same
        # flags without AVX-512 were stable). The C paths cost ~2x encode time.
        stream.codec_context.thread_count = 1
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast", "x264-params": "asm=0"}
        else:
            stream.bit_rate = int(shape[0] * shape[1] * fps * 3)
        for number, frame in enumerate(frames):
            _check_frame(frame, number, shape)
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = number
            picture.time_base = 1 / fps
            container.mux(stream.encode(picture))
        container.mux(stream.encode())
