"""The training reader's per-file probe (display matrix and decord's seek check) opens each file once."""
import os

import av
import numpy as np
import pytest

from tests import videos
from tests.test_index_decode_review import _counter_with_keyframe_every
from tests.test_index_odd_files import shift_timestamps
from vmm.training import data


def _late_copy(path, source):
    """``source``'s packets from the 19th on: two frames before its second keyframe (a copy cut mid-GOP)."""
    with av.open(source) as src, av.open(path, "w") as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in [p for p in src.demux(video=0) if p.size][18:]:
            packet.stream = stream
            out.mux(packet)
    return path


@pytest.fixture
def opens(monkeypatch):
    """The paths av.open is called with."""
    calls, real = [], av.open
    monkeypatch.setattr(av, "open", lambda path, *args, **kwargs: calls.append(path) or real(path, *args, **kwargs))
    return calls


def _probe(path):
    st = os.stat(path)
    data._pyav_reading_version.cache_clear()
    return data._pyav_reading_version(path, st.st_size, st.st_mtime_ns)


def test_the_training_probe_opens_each_file_once_and_answers_as_the_two_checks_do(tmp_path, opens):
    # Each probe of the training reader, paid for nearly every sample, opened the file twice: once for the first
    # frame's display matrix, once for decord's seek check. The seek check now reads the packets the first frame
    # was decoded from: a copy cut mid-GOP is still found by its first packet, an edit list by its hidden ones.
    source = _counter_with_keyframe_every(str(tmp_path / "source.mkv"), 40, 20)
    counter = [np.full((48, 64, 3), 6 * i, np.uint8) for i in range(40)]
    mp4 = videos.write_frames(str(tmp_path / "plain.mp4"), counter)
    cases = {
        videos.write_index_coded(str(tmp_path / "b-frames.mp4"), 80, keyint=20): None,  # read to the B-frame scan
        videos.write_index_coded(str(tmp_path / "open-gop.mkv"), 80, keyint=20, open_gop=True): (0, False),
        videos.write_index_coded(str(tmp_path / "b-frames.avi"), 40, keyint=20): (0, False),
        videos.write_index_coded(str(tmp_path / "stream.ts"), 40, fmt="mpegts"): (0, False),
        _late_copy(str(tmp_path / "late.mkv"), source): (0, False),
        shift_timestamps(str(tmp_path / "trimmed.mp4"), mp4, -1.5): (0, False),
        mp4: None,
        videos.write_rotated(str(tmp_path / "phone.mkv"), -90): (270, False),
        videos.write_index_coded(str(tmp_path / "phone.mov"), 40, rotation=90): (90, False),
        videos.write_damaged(str(tmp_path / "damaged.mp4"), mp4, at=0.0, length=400): None,
        videos.write_audio_only(str(tmp_path / "song.mp4")): None,
    }
    for path, expected in cases.items():
        opens.clear()
        assert (_probe(path), opens) == (expected, [path]), path
