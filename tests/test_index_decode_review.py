"""Decoding steps that last as long as the file report progress; files that start between keyframes."""
import math

import av
import numpy as np
import pytest

from tests import videos
from index.decode import Clip, DecodeOptions, DecodeStart, decode_video, iter_decode, sample_middle_indices
from vmm.errors import VmmError


def _progress_per_step(path, **options):
    """(events, progress calls made during the step that ended with each event) of one iter_decode run."""
    calls = [0]
    steps = []
    for event in iter_decode(path, DecodeOptions(**options), progress=lambda: calls.__setitem__(0, calls[0] + 1)):
        steps.append((event, calls[0]))
        calls[0] = 0
    return steps


def test_pyav_reports_progress_while_it_counts_and_decodes_a_long_file(tmp_path):
    # PyAV reads the whole file before the DecodeStart (a large file on a slow share takes minutes) and, with one
    # clip per video, decodes every frame up to the last sampled one in one step: with no report in between, a
    # watchdog killed such files as hung, though a long file must never be killed for being long.
    path = videos.write_counter(str(tmp_path / "long.mp4"), 40)
    (start, opening), (clip, decoding) = _progress_per_step(path, backend="pyav", window=math.inf)
    assert isinstance(start, DecodeStart) and isinstance(clip, Clip)
    assert start.info.num_frames == 40
    assert opening >= 40  # one report per packet counted
    assert decoding >= max(start.spans[0].frames) + 1  # one per frame decoded up to the clip's last


def test_decord_reports_progress_while_pyav_times_a_variable_frame_rate_file(tmp_path):
    path = videos.write_vfr(str(tmp_path / "vfr.mp4"), 30)
    (start, opening), *_ = _progress_per_step(path, backend="decord")
    assert start.info.backend == "decord"
    assert opening >= 30  # the exact frame times come from PyAV reading every packet


@pytest.mark.parametrize("name, writer_options", [
    ("portrait.mp4", {"rotation": -90}),  # a phone video: rotated, so always read with PyAV
    ("recording.ts", {"fmt": "mpegts"}),  # MPEG-TS seeks by dts: sought by its pts, a keyframe was passed
    ("open-gop.mkv", {"open_gop": True}),  # frames shown before a keyframe are decoded from the GOP before
])
def test_pyav_seeks_past_the_gops_that_hold_no_sampled_frame(tmp_path, name, writer_options):
    # One clip per video (vmm classify and encode) of a phone video, a TV recording or an open-GOP file, all read
    # with PyAV: it decoded every frame up to the last one sampled, so it took as long as the video played.
    n, fps = 400, 25
    path = videos.write_index_coded(str(tmp_path / name), n, fps=fps, keyint=10, **writer_options)
    (start, _), (clip, packets_read) = _progress_per_step(path, window=math.inf)
    assert start.info.backend == "pyav" and start.info.num_frames == n
    assert [videos.frame_index(frame) for frame in clip.frames] == sample_middle_indices(n, 8).tolist()
    assert packets_read < n / 2  # about the 8 GOPs (of 10 frames) that hold a sampled frame, not all 40
    _, clips = decode_video(path, window=2.0, stride=1.5)  # windows that need some frames of most GOPs
    for clip in clips:
        first, stop = int(clip.start * fps + 1e-6), int(clip.end * fps + 1e-6)  # the frames on screen
        assert [videos.frame_index(f) for f in clip.frames] == (first + sample_middle_indices(stop - first, 8)).tolist()


def _counter_with_keyframe_every(path, n, gop, fmt=None):
    """Frame i has brightness 6*i (as videos.write_counter), with a keyframe every ``gop`` frames and no B-frames."""
    with av.open(path, "w", format=fmt) as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": str(gop), "bf": "0"}
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 6 * i, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _shown(clips):
    return [[round(float(frame.mean()) / 6) for frame in clip.frames] for clip in clips]


def test_a_transport_stream_cut_between_keyframes_starts_at_its_first_keyframe(tmp_path):
    # A capture that starts mid-GOP: FFmpeg cannot decode the frames before the first keyframe (here frames 10-19).
    # They were counted: with 11 of 31 missing the file was called truncated, with fewer every frame came out as
    # one a few later and the last ones repeated.
    whole = _counter_with_keyframe_every(str(tmp_path / "whole.ts"), 40, 20, fmt="mpegts")
    data = open(whole, "rb").read()
    cut = tmp_path / "cut.ts"
    cut.write_bytes(data[len(data) // 4 // 188 * 188:])  # whole 188-byte TS packets, from frame 10 or so
    info, clips = decode_video(str(cut), window=1.0, stride=1.0)
    assert info.num_frames == 20 and info.duration == 2.0
    assert _shown(clips) == [[20, 21, 22, 23, 25, 26, 27, 28], [30, 31, 32, 33, 35, 36, 37, 38]]


def test_a_copy_that_starts_between_keyframes_is_read_with_pyav(tmp_path):
    source = _counter_with_keyframe_every(str(tmp_path / "source.mkv"), 40, 20)
    path = str(tmp_path / "late.mkv")
    with av.open(source) as src, av.open(path, "w") as out:  # packets 18-39: two before the keyframe of frame 20
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in [p for p in src.demux(video=0) if p.size][18:]:
            packet.stream = stream
            out.mux(packet)
    info, clips = decode_video(path, window=1.0, stride=1.0)
    assert (info.backend, info.num_frames) == ("pyav", 20)
    assert _shown(clips) == [[20, 21, 22, 23, 25, 26, 27, 28], [30, 31, 32, 33, 35, 36, 37, 38]]
    with pytest.raises(VmmError, match="starts between keyframes.*use the 'auto' or 'pyav' decoder"):
        decode_video(path, backend="decord")


def test_a_file_the_chosen_decord_cannot_read_is_named_once_with_the_way_out(tmp_path):
    """decord's messages began with its log line ("[14:58:43] /github/workspace/src/video/video_reader.cc:270:
    [PATH] ..."): a clock time, a build machine's source file and the path a second time, and no fix."""
    path = str(tmp_path / "browser recording.webm")  # MediaRecorder's WebM: no duration, which decord needs
    with av.open(path, "w", format="webm", options={"live": "1"}) as container:
        stream = container.add_stream("libvpx", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(10):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 6 * i, np.uint8))))
        container.mux(stream.encode())
    with pytest.raises(VmmError) as raised:
        decode_video(path, backend="decord")
    message = str(raised.value)
    assert message.startswith(f"{path}: decord cannot open it: ") and message.count(path) == 1
    assert ".cc:" not in message and not message.split(": ")[2].startswith("[")
    assert message.endswith("; try the 'auto' or 'pyav' decoder, which read files decord cannot")
    assert decode_video(path)[0].backend == "pyav"
