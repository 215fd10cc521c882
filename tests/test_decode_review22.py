"""Real-world video files through both decoders and the training reader: phone rotation in every container, the
times of a variable-rate video trimmed by max_seconds, decord's failures inside its decoding thread."""
import math
import random
import sqlite3

import numpy as np
import pytest

from index.decode import _error_text, decode_video
from index.encoder import ColorHistogramEncoder
from index.ingest import build_library
from tests import videos
from vmm.training.data import read_video_frames


@pytest.mark.parametrize("rotation, name, size", [
    (-90, "portrait.mp4", (320, 240)),  # decord turned it itself
    (-90, "portrait.mkv", (320, 240)),  # decord ignores Matroska's matrix: it came out sideways
    (-90, "portrait.mov", (64, 48)),  # decord fails to copy these frames out, and PyAV's came out sideways
    (180, "upside-down.mkv", (64, 48)),
    (0, "selfie.mp4", (64, 48)),  # a mirror (hflip)
])
def test_training_reads_a_phone_video_upright_in_every_container(tmp_path, rotation, name, size):
    hflip = rotation == 0
    path = videos.write_rotated(str(tmp_path / name), rotation, width=size[0], height=size[1], hflip=hflip)
    shown = np.rot90(videos.marker_frame(*size), rotation // 90)
    shown = shown[:, ::-1] if hflip else shown
    frames = read_video_frames(path, 4, random.Random(0))
    assert frames.shape == (4, *shown.shape)
    assert np.abs(frames.astype(int) - shown).mean() < 4, name
    _, clips = decode_video(path, num_frames=4)  # the index's frames: the same picture
    assert np.abs(clips[0].frames.astype(int) - frames.astype(int)).max() <= 2


def test_one_clip_per_video_cut_by_max_seconds_ends_where_its_frames_do(tmp_path):
    # 1 s red and 1 s green at 30 fps, then 2 s blue at 5 fps: 70 frames in 4 s, 17.5 fps on average. Like the
    # official trimmed loader, max_seconds=3 keeps the first int(3 * 17.5) = 52 frames, which end at 52 / 30 s;
    # the clip said it ended at 52 / 17.5 = 2.97 s, over a second after its last frame.
    path = videos.write_rate_changes(str(tmp_path / "dim.mp4"),
                                     [(1, 30, videos.RED), (1, 30, videos.GREEN), (2, 5, videos.BLUE)])
    for backend in ("decord", "pyav"):
        info, (clip,) = decode_video(path, backend=backend, window=math.inf, max_seconds=3.0, num_frames=8)
        kept = int(3.0 * info.fps)
        assert info.num_frames == 70 and 50 < kept < 60, backend
        assert (clip.start, clip.end) == (0.0, pytest.approx(kept / 30, abs=1e-3)), backend
        assert np.abs(clip.frames[-1].astype(int) - videos.GREEN).max() < 12  # no blue frame was kept
    lib = str(tmp_path / "lib")
    build_library([path], lib, ColorHistogramEncoder(), window=math.inf, max_seconds=3.0, workers=0, progress=False)
    with sqlite3.connect(f"file:{lib}/catalog.sqlite?mode=ro", uri=True) as conn:
        (start, end), = conn.execute("SELECT start_sec, end_sec FROM clips").fetchall()
    assert (start, end) == (0.0, pytest.approx(kept / 30, abs=1e-3))


def test_a_failure_inside_decords_decoding_thread_is_one_clean_line():
    # What decord raised for a webcam's MJPEG AVI cut off at 70 % (whether it raises depends on its decoding
    # thread's timing, so the message is taken as it came): two log prefixes, and only the first was taken off.
    raised = RuntimeError("[01:37:19] /github/workspace/src/video/ffmpeg/threaded_decoder.cc:292: [01:37:19] "
                          "/github/workspace/src/video/ffmpeg/threaded_decoder.cc:218: Check failed: "
                          "avcodec_send_packet(dec_ctx_.get(), pkt.get()) >= 0 (-1094995529 vs. 0) Thread worker: "
                          "Error sending packet.")
    assert _error_text(raised) == ("Check failed: avcodec_send_packet(dec_ctx_.get(), pkt.get()) >= 0 (-1094995529 "
                                   "vs. 0) Thread worker: Error sending packet.")
    path = "/videos/[12:00:00] clip.mp4:3: x.mp4"  # a path that looks like a prefix stays, as decord's open gives it
    assert _error_text(RuntimeError(f"[01:37:19] /src/video_reader.cc:270: [{path}] Invalid data"), path) \
        == "Invalid data"


def test_a_video_whose_codec_has_no_decoder_is_one_clear_failure(tmp_path):
    """A codec tag FFmpeg has no decoder for (an unknown fourcc, or one damaged on disk) gave PyAV no decoder
    context: the index reported "unexpected AttributeError ... 'NoneType' object has no attribute 'width'", and
    training skipped it with the same AttributeError."""
    good = videos.write_solid(str(tmp_path / "good.mp4"), (200, 30, 30), seconds=1.0)
    data = open(good, "rb").read()
    assert data.count(b"avc1") >= 1
    bad = tmp_path / "videos" / "unknown_codec.mp4"
    bad.parent.mkdir()
    bad.write_bytes(data.replace(b"avc1", b"zzzz"))
    summary = build_library([str(bad.parent)], str(tmp_path / "lib"), ColorHistogramEncoder(), workers=0,
                            progress=False)
    ((path, reason),) = summary.failures
    assert path == str(bad) and reason.startswith("this FFmpeg has no decoder for its video codec"), reason
    with pytest.raises(Exception, match="no decoder for its video codec") as caught:
        read_video_frames(str(bad), 4, random.Random(0))
    assert not isinstance(caught.value, AttributeError)
