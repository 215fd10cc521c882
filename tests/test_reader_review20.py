"""Review round 20 of video reading and frame sampling: files whose frames change size midway, video streams
without frames."""
import math
import re

import pytest

from index.decode import Clip, DecodeOptions, DecodeStart, decode_video, iter_decode, probe_video
from tests import videos
from vmm.errors import VmmError


@pytest.mark.parametrize("backend", ["auto", "pyav"])
@pytest.mark.parametrize("window", [math.inf, 1.0])
def test_a_resolution_change_midway_gives_frames_of_the_first_size(tmp_path, backend, window):
    # PyAV returned each frame at its own size, and a clip holding frames from both sides of the change failed to
    # stack: "ValueError: all input arrays must have the same shape", a traceback. decord (and players) scale every
    # frame to the stream's size; the TS is read with PyAV, as decord miscounts its frames.
    path = videos.write_size_change(str(tmp_path / "capture.ts"), sizes=((32, 24), (48, 32)), n=25)
    start, *clips = iter_decode(path, DecodeOptions(backend=backend, window=window, stride=0.5))
    assert isinstance(start, DecodeStart) and start.info.backend == "pyav"
    assert (start.info.width, start.info.height, start.info.num_frames) == (32, 24, 50)
    spans = [list(span.frames) for span in start.spans]
    assert any(max(frames) >= 25 > min(frames) for frames in spans)  # a clip straddles the change
    assert [[videos.frame_index(frame) for frame in clip.frames] for clip in clips] == spans
    assert {clip.frames.shape for clip in clips} == {(8, 24, 32, 3)}


@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_a_video_stream_without_frames_is_explained(tmp_path, backend):
    # The message was "pyav finds no frames": a library's name, and neither cause nor fix.
    path = videos.write_audio_only(str(tmp_path / "camera failed.mkv"), seconds=2.0, empty_video=True)
    with pytest.raises(VmmError, match=r"^\S+camera failed\.mkv: pyav finds no frames in the video stream .*; the file "
                                       r"is truncated or corrupt, or its video stream is empty: re-download or "
                                       r"re-encode it$"):
        probe_video(path, backend=backend)


@pytest.mark.parametrize("backend", ["auto", "decord", "pyav"])
def test_a_relative_file_name_with_a_colon_is_the_file_itself(tmp_path, monkeypatch, backend):
    # FFmpeg read "NAME:" as a protocol: "12:30 standup.mp4" failed with "Protocol not found", "file:x.mp4" opened
    # x.mp4, and "concat:a.mp4" decoded another video, a.mp4, without a word.
    monkeypatch.chdir(tmp_path)
    videos.write_counter(str(tmp_path / "a.mp4"), 30)
    for name, frames in (("concat:a.mp4", 10), ("12:30 standup.mp4", 12), ("file:a.mp4", 14)):
        videos.write_counter(str(tmp_path / name), frames)  # FFmpeg writes the file named so when given its path
        info, clips = decode_video(name, backend=backend, num_frames=4)
        assert (info.num_frames, len(clips)) == (frames, 1), name
        assert probe_video(name, backend=backend).num_frames == frames


@pytest.mark.parametrize("option, value, message", [
    ("num_frames", 8.5, "num_frames must be a whole number, got 8.5"),
    ("num_frames", True, "num_frames must be a whole number, got True"),
    ("window", "10", "window must be a number of seconds, got '10'"),
    ("stride", None, "stride must be a number of seconds, got None"),
    ("max_seconds", "30", "max_seconds must be a number of seconds, got '30'"),
])
def test_an_option_of_the_wrong_type_is_named(tmp_path, option, value, message):
    # A float count failed inside NumPy ("'float' object cannot be interpreted as an integer"), a string window or
    # a None stride inside a comparison ("'>' not supported between instances of 'str' and 'int'"); True was one
    # frame a clip.
    path = videos.write_counter(str(tmp_path / "clip.mp4"), 10)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        decode_video(path, **{option: value})


@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_one_clip_per_video_stays_inside_a_video_whose_average_rate_is_its_first_seconds(tmp_path, backend):
    # A screen recording: 3 s at 30 fps, then a frame every 2 s. Matroska's average rate (30 fps) is estimated from
    # the first seconds, and trimmed30 was tested against the timestamps' 63 s: frames up to 843 of 120 were planned
    # (the clip was the last frame repeated, or decoded twice), and a whole video's clip ended at 120 / 30 = 4 s.
    # The official loader tests vlen / fps = 4 s, so it keeps every frame.
    path = videos.write_rate_changes(str(tmp_path / "screen.mkv"), [(3, 30, videos.RED), (60, 0.5, videos.BLUE)])
    for max_seconds in (30, None):
        start, *clips = iter_decode(path, DecodeOptions(backend=backend, window=math.inf, max_seconds=max_seconds))
        assert (start.info.fps, start.info.num_frames, start.info.duration) == (30.0, 120, 63.0)
        assert [(s.start, s.end, s.frames) for s in start.spans] == [(0.0, 63.0, (7, 22, 37, 52, 67, 82, 97, 112))]
        assert len(clips) == 1 and isinstance(clips[0], Clip)
        # frames 0-89 are the red 3 s, the rest blue
        assert ["red" if frame[0, 0, 0] > frame[0, 0, 2] else "blue" for frame in clips[0].frames] == ["red"] * 6 + [
            "blue"] * 2


def test_training_reads_a_relative_file_name_with_a_colon_as_the_file(tmp_path, monkeypatch):
    # Pretraining's own reader (decord, as the official loader): "concat:a.mp4" decoded a.mp4's frames.
    import random

    from vmm.training.data import read_video_frames
    monkeypatch.chdir(tmp_path)
    videos.write_counter(str(tmp_path / "a.mp4"), 30)
    videos.write_counter(str(tmp_path / "concat:a.mp4"), 10)
    frames = read_video_frames("concat:a.mp4", 4, random.Random(0))
    # brightness 6 * index (write_counter): a.mp4's frames would reach 6 * 29, concat:a.mp4's stay below 6 * 10
    assert frames.shape[0] == 4 and frames.mean(axis=(1, 2, 3)).max() < 6 * 10
