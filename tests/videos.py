"""Write small synthetic videos (and non-videos) with PyAV for the index tests.

Every function writes one file and returns its path. Videos are tiny (64x48 at
10 fps by default) so a test suite can make dozens in well under a second.
"""
from __future__ import annotations

import ctypes
import fractions
import os
import struct
import time

import av
import numpy as np

RED = (220, 20, 20)
GREEN = (20, 200, 40)
BLUE = (30, 40, 220)
YELLOW = (230, 220, 30)
WHITE = (240, 240, 240)

_CONTAINER_CODEC = {"h264": ("libx264", "yuv420p"), "vp9": ("libvpx-vp9", "yuv420p"),
                    "mpeg4": ("mpeg4", "yuv420p"), "h264-444": ("libx264", "yuv444p")}


def solid_frames(color, n: int, width: int = 64, height: int = 48):
    """n identical frames of one colour."""
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = color
    return [frame] * n


def moving_square_frames(n: int, width: int = 64, height: int = 48, background=(0, 0, 0), color=WHITE,
                         side: int = 12):
    """A square moving left to right across the frame."""
    frames = []
    for i in range(n):
        frame = np.empty((height, width, 3), np.uint8)
        frame[:] = background
        x = int((width - side) * i / max(1, n - 1))
        y = (height - side) // 2
        frame[y:y + side, x:x + side] = color
        frames.append(frame)
    return frames


def _format_for(path: str) -> str | None:
    """The container to write at ``path``: as its extension says, MP4 for any other (a "renamed" video)."""
    return None if os.path.splitext(path)[1].lower() in (".mp4", ".webm", ".avi", ".mkv", ".mov") else "mp4"


def write_frames(path: str, frames, *, fps: int = 10, codec: str = "h264", options: dict | None = None) -> str:
    """Encode RGB frames into ``path``; ``codec`` is h264, h264-444 (odd sizes), vp9 or mpeg4.

    A path without a video extension gets an MP4 container (a "renamed" video).
    """
    encoder, pix_fmt = _CONTAINER_CODEC[codec]
    height, width = frames[0].shape[:2]
    with av.open(path, "w", format=_format_for(path), options=options or {}) as container:
        stream = container.add_stream(encoder, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if encoder == "libx264":
            stream.options = {"preset": "ultrafast"}
        elif encoder == "mpeg4":
            stream.bit_rate = 4_000_000  # near-lossless, so tests can read frame contents
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_solid(path: str, color, seconds: float = 2.0, *, fps: int = 10, codec: str = "h264",
                width: int = 64, height: int = 48) -> str:
    """A solid-colour video."""
    return write_frames(path, solid_frames(color, max(1, round(seconds * fps)), width, height), fps=fps, codec=codec)


def write_moving_square(path: str, seconds: float = 2.0, *, fps: int = 10, codec: str = "h264", width: int = 64,
                        height: int = 48, background=(0, 0, 0), color=WHITE) -> str:
    return write_frames(path, moving_square_frames(max(1, round(seconds * fps)), width, height, background, color),
                        fps=fps, codec=codec)


def write_red_green_square(folder) -> None:
    """red.mp4 and green.mp4 (solid, 2 s) and square.mp4 (a square moving right, 2 s) in ``folder``."""
    write_solid(os.path.join(folder, "red.mp4"), RED, seconds=2)
    write_solid(os.path.join(folder, "green.mp4"), GREEN, seconds=2)
    write_moving_square(os.path.join(folder, "square.mp4"), seconds=2)


def write_counter(path: str, n: int, *, fps: int = 10, codec: str = "h264", width: int = 64, height: int = 48) -> str:
    """Frame i has brightness 6*i (n <= 42): decoded frames reveal their own index."""
    frames = [np.full((height, width, 3), 6 * i, np.uint8) for i in range(n)]
    return write_frames(path, frames, fps=fps, codec=codec, options={})


def index_coded_frame(i: int, width: int = 32, height: int = 24) -> np.ndarray:
    """Frame ``i`` (< 729) of :func:`write_index_coded`: red 20 + 8 * (i % 27), green 20 + 8 * (i // 27). The steps
    outlast YUV 4:2:0 and back (up to 3 off) and the levels its clipping (red 246 with green 6 came back green 3)."""
    return np.array([20 + 8 * (i % 27), 20 + 8 * (i // 27), 128], np.uint8) + np.zeros((height, width, 3), np.uint8)


def frame_index(frame: np.ndarray) -> int:
    """The index an :func:`index_coded_frame` shows (its colour, averaged against compression noise)."""
    red, green = frame.reshape(-1, 3).mean(axis=0)[:2]
    return round((red - 20) / 8) + 27 * round((green - 20) / 8)


def write_index_coded(path: str, n: int, *, fps: int = 25, keyint: int = 25, bframes: int = 3,
                      open_gop: bool = False, rotation: int = 0, fmt: str | None = None, width: int = 32,
                      height: int = 24, first: int = 0) -> str:
    """A long H.264 video (first + n < 729 frames) whose frames tell their index (:func:`frame_index`), starting at
    ``first``, with a keyframe every ``keyint`` frames, as cameras and encoders write them; ``rotation`` as in
    :func:`write_rotated`."""
    params = f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes={bframes}:open-gop={int(open_gop)}"
    with av.open(path, "w", format=fmt) as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "x264-params": params})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        for i in range(first, first + n):
            frame = av.VideoFrame.from_ndarray(index_coded_frame(i, width, height), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_size_change(path: str, sizes=((32, 24), (48, 32)), n: int = 25, fps: int = 25) -> str:
    """An MPEG-TS recording whose resolution changes midway, as a TV capture that cuts to an SD advert: one
    :func:`write_index_coded` part of ``n`` frames at each (width, height) of ``sizes``, numbered on, with
    timestamps that run on. Each part's H.264 headers travel in its own packets, so the parts join as they are."""
    parts = [write_index_coded(f"{path}.{k}.ts", n, fps=fps, keyint=n, fmt="mpegts", width=width, height=height,
                               first=k * n) for k, (width, height) in enumerate(sizes)]
    with av.open(path, "w", format="mpegts") as container:
        stream = None
        for k, part in enumerate(parts):
            with av.open(part) as source:
                video = source.streams.video[0]
                stream = stream or container.add_stream_from_template(video)
                shift = round(k * n / fps / video.time_base)
                for packet in source.demux(video):
                    if packet.size:
                        packet.pts, packet.dts, packet.stream = packet.pts + shift, packet.dts + shift, stream
                        container.mux(packet)
            os.remove(part)
    return path


def write_long(path: str, seconds: float = 40.0, *, fps: int = 4, width: int = 32, height: int = 24) -> str:
    """A long, cheap video: low resolution and frame rate, colour changing every 10 s."""
    colors = [RED, GREEN, BLUE, YELLOW, WHITE]
    frames = []
    for i in range(round(seconds * fps)):
        frame = np.empty((height, width, 3), np.uint8)
        frame[:] = colors[int(i / fps // 10) % len(colors)]
        frames.append(frame)
    return write_frames(path, frames, fps=fps)


def write_blank_large(path: str, width: int, height: int) -> str:
    """One black H.264 frame of any size, built directly in YUV (fast even at 8K and above)."""
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        frame = av.VideoFrame(width, height, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    return path


def write_vfr(path: str, n: int = 30, *, width: int = 64, height: int = 48) -> str:
    """Variable frame rate H.264: frame gaps alternate between 100 ms and 33 ms."""
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = fractions.Fraction(1, 1000)
        pts = 0
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), (8 * i) % 256, np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, fractions.Fraction(1, 1000)
            pts += 33 if i % 2 else 100
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def marker_frame(width: int = 64, height: int = 48) -> np.ndarray:
    """Black with a red top-left quadrant and a green bottom-right one: shows which way up a frame is."""
    frame = np.zeros((height, width, 3), np.uint8)
    frame[: height // 2, : width // 2] = RED
    frame[height // 2:, width // 2:] = GREEN
    return frame


def write_rotated(path: str, rotation: int, n: int = 10, *, width: int = 64, height: int = 48,
                  hflip: bool = False, vflip: bool = False) -> str:
    """A phone video: ``marker_frame`` stored as is, with a display matrix that turns it ``rotation`` degrees
    counter-clockwise to show it (FFmpeg's and PyAV's ``VideoFrame.rotation`` convention; a phone held upright
    writes -90, ``rotate=90`` in older tools), then mirrors it left to right (``hflip``) and upside down
    (``vflip``). MP4, MOV and MKV keep the matrix."""
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        stream.set_display_rotation(rotation, hflip=hflip, vflip=vflip)
        frame = av.VideoFrame.from_ndarray(marker_frame(width, height), format="rgb24")
        for _ in range(n):
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_rate_changes(path: str, segments, *, width: int = 64, height: int = 48) -> str:
    """Variable frame rate like a phone dimming to 5 fps: ``segments`` of (seconds, fps, colour), in order."""
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = fractions.Fraction(1, 1000)
        stream.options = {"preset": "ultrafast"}
        t = 0.0
        for seconds, fps, color in segments:
            for _ in range(round(seconds * fps)):
                frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), color, np.uint8), format="rgb24")
                frame.pts, frame.time_base = round(t * 1000), fractions.Fraction(1, 1000)
                t += 1 / fps
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_held_last_frame(path: str, frames: int = 10, fps: int = 10, held: float = 9.0, *,
                          color=RED, last=GREEN, width: int = 64, height: int = 48) -> str:
    """A screen recording: ``frames`` of ``color`` at ``fps``, then one ``last`` frame whose packet lasts ``held``
    seconds (the screen stayed still), so the file plays for frames / fps + held seconds."""
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = fractions.Fraction(1, 1000)
        stream.options = {"bf": "0", "preset": "ultrafast"}
        packets = []
        for i in range(frames + 1):
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), color if i < frames else last, np.uint8),
                                               format="rgb24")
            frame.pts, frame.time_base = i * 1000 // fps, fractions.Fraction(1, 1000)
            packets += stream.encode(frame)
        packets += stream.encode()
        for packet in packets:
            packet.duration = round(held * 1000) if packet.pts == frames * 1000 // fps else 1000 // fps
            container.mux(packet)
    return path


def write_two_video_streams(path: str, first=GREEN, second=BLUE, seconds: float = 1.0) -> str:
    """An MP4 with two video streams, as a camera's main recording beside its preview: ``first`` at 64x48 with a
    little noise kept by crf 10 (90 kbit/s against 7: clearly the best stream), ``second`` at 32x24, solid. Both
    solid, the two bitrates differed by 40 bit/s, and FFmpeg's choice of the best stream (the decoders') could go
    either way."""
    rng = np.random.default_rng(0)
    with av.open(path, "w") as container:
        streams = []
        for width, height, color in ((64, 48, first), (32, 24, second)):
            stream = container.add_stream("libx264", rate=10)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            if not streams:
                stream.options = {"crf": "10"}  # keeps the noise, and so the bitrate
            streams.append((stream, np.full((height, width, 3), color, np.int16)))
        for _ in range(round(seconds * 10)):
            for k, (stream, solid) in enumerate(streams):
                noise = rng.integers(-3, 4, solid.shape) if k == 0 else 0
                frame = av.VideoFrame.from_ndarray(np.clip(solid + noise, 0, 255).astype(np.uint8), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
        for stream, _ in streams:
            for packet in stream.encode():
                container.mux(packet)
    return path


def set_avi_frame_count(path: str, source: str, count: int) -> str:
    """A copy of AVI ``source`` whose headers (avih and strh) claim ``count`` frames, as a crashed recorder
    leaves them; the index (idx1) still lists every frame."""
    with open(source, "rb") as f:
        data = bytearray(f.read())
    avih, strh = data.find(b"avih"), data.find(b"strh")
    struct.pack_into("<I", data, avih + 8 + 16, count)  # dwTotalFrames
    struct.pack_into("<I", data, strh + 8 + 32, count)  # dwLength
    with open(path, "wb") as f:
        f.write(data)
    return path


def scale_mp4_duration(path: str, source: str, factor: float) -> str:
    """A copy of MP4 ``source`` (version-0 boxes) whose movie, track and media headers give ``factor`` times the
    real duration (0: none); the sample table still times every frame."""
    with open(source, "rb") as f:
        data = bytearray(f.read())
    for box, offset in ((b"mvhd", 8 + 12), (b"tkhd", 8 + 16), (b"mdhd", 8 + 12)):
        at = data.find(box)
        (duration,) = struct.unpack_from(">I", data, at + offset)
        struct.pack_into(">I", data, at + offset, int(duration * factor))
    with open(path, "wb") as f:
        f.write(data)
    return path


def write_damaged(path: str, source: str, at: float = 0.5, length: int = 4000) -> str:
    """A copy of ``source`` with ``length`` bytes zeroed at fraction ``at`` of the file: the header and the first
    packets are fine, later packets are corrupt (a bad sector, a broken download)."""
    with open(source, "rb") as f:
        data = bytearray(f.read())
    start = int(len(data) * at)
    data[start:start + length] = bytes(len(data[start:start + length]))
    with open(path, "wb") as f:
        f.write(data)
    return path


def write_audio_only(path: str, seconds: float = 1.0, *, empty_video: bool = False) -> str:
    """A container (MP4, or as the extension says) holding only an AAC audio stream; with ``empty_video``, a video
    stream without frames besides, as a recorder whose camera failed writes it."""
    with av.open(path, "w", format=_format_for(path)) as container:
        if empty_video:
            video = container.add_stream("libx264", rate=10)
            video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        stream = container.add_stream("aac", rate=16000)
        samples = 1024
        for i in range(int(seconds * 16000 / samples)):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, samples), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * samples
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_audio_with_cover(path: str, seconds: float = 1.0) -> str:
    """A song as music apps and downloaders save it: an MP4 of AAC audio whose cover art is a one-picture MJPEG
    video stream marked as an attached picture, the only video stream."""
    write_audio_only(path, seconds)
    with av.open(path) as source, av.open(path + ".tmp", "w", format="mp4") as container:
        audio = container.add_stream_from_template(source.streams.audio[0])
        cover = container.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 64, 48, "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        picture = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 200, np.uint8), format="rgb24")
        for packet in [*cover.encode(picture.reformat(format="yuvj420p")), *cover.encode()]:
            container.mux(packet)
        for packet in source.demux(source.streams.audio[0]):
            if packet.size:
                packet.stream = audio
                container.mux(packet)
    os.replace(path + ".tmp", path)
    return path


def write_truncated(path: str, source: str, fraction: float = 0.5) -> str:
    """The first ``fraction`` of ``source``'s bytes."""
    with open(source, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * fraction)])
    return path


def write_text(path: str, text: str = "this is not a video\n") -> str:
    with open(path, "w") as f:
        f.write(text)
    return path


def write_empty(path: str) -> str:
    open(path, "wb").close()
    return path


def set_mtime_later(path: str, seconds: float = 10.0) -> None:
    """Move a file's mtime forward so a rewrite is seen as a change even on coarse clocks."""
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + int(seconds * 1e9)))


# -- worker hooks (called in decoder worker processes as "videos:<name>") --------------------------
def hang_holding_gil(path: str, backend: str) -> None:
    """Block forever inside native code that holds the GIL, like decord's nb_frames hang."""
    if "hang" in os.path.basename(path):
        ctypes.PyDLL(None).sleep(3600)


def hang_unless_pyav(path: str, backend: str) -> None:
    """Hang like decord does on some files, but let the PyAV retry through."""
    if "hang" in os.path.basename(path) and backend != "pyav":
        ctypes.PyDLL(None).sleep(3600)


def slow_decode(path: str, backend: str) -> None:
    """Make each file take a while, so a test can interrupt a run midway."""
    time.sleep(0.25)
