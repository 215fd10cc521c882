"""Unusual but real video files through `vmm index` / `vmm search` / `vmm encode` / `vmm classify` and their API:
phone rotation, variable frame rates, missing or wrong durations and frame counts, odd streams and shapes, odd
file names, symbolic links, truncated and damaged files."""
import contextlib
import json
import math
import os
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from index.decode import decode_video, probe_video
from index.encoder import ColorHistogramEncoder
from index.ingest import build_library
from index.reader import ClipFilter, open_library
from tests import videos
from vmm.classify import decode_clips
from vmm.cli import main
from vmm.errors import VmmError

REPO = Path(__file__).resolve().parents[1]
ENCODER = ColorHistogramEncoder()
HIST = ["--model", "color-histogram", "--quiet", "--workers", "0"]

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def catalog_rows(library) -> dict[str, tuple]:
    """path -> (status, error, width, height, duration, [(start, end), ...]); fails on a duplicated clip."""
    conn = sqlite3.connect(f"file:{library}/catalog.sqlite?mode=ro", uri=True)
    files = conn.execute("SELECT id, path, status, error, width, height, duration FROM files").fetchall()
    clips = conn.execute("SELECT file_id, start_sec, end_sec FROM clips ORDER BY start_sec").fetchall()
    conn.close()
    assert len(set(clips)) == len(clips), "duplicate clips"
    return {path: (status, error, width, height, duration, [(s, e) for f, s, e in clips if f == i])
            for i, path, status, error, width, height, duration in files}


def one_clip_query(color) -> np.ndarray:
    return ENCODER.encode_clips([np.stack(videos.solid_frames(color, 8))])


def tkhd_rotation_part(path: str) -> tuple[float, float, float, float]:
    """(a, b, c, d) of the MP4 track header's display matrix, in units of 1.0."""
    data = Path(path).read_bytes()
    at = data.find(b"tkhd")
    assert data[at + 4] == 0  # version 0: 32-bit times
    a, b, _, c, d = struct.unpack_from(">5i", data, at + 8 + 20 + 8 + 8)
    return a / 65536, b / 65536, c / 65536, d / 65536


# -- rotation ---------------------------------------------------------------------------------------------
def test_iphone_portrait_video_comes_out_upright_from_every_reader(tmp_path):
    path = videos.write_rotated(str(tmp_path / "portrait.mp4"), -90)
    # The matrix an iPhone held upright writes; players turn such a frame 90 degrees clockwise.
    assert tkhd_rotation_part(path) == (0.0, 1.0, -1.0, 0.0)
    upright = np.rot90(videos.marker_frame(), -1)  # 48 wide, 64 high; red top-right, green bottom-left
    for backend in ("auto", "pyav"):
        info, clips = decode_video(path, backend=backend)
        assert (info.width, info.height, info.rotation, info.backend) == (48, 64, 270, "pyav")
        assert clips[0].frames.shape == (8, 64, 48, 3)
        assert np.abs(clips[0].frames.astype(int) - upright).mean() < 4
    (view,) = decode_clips(path, 4)  # vmm classify's reader
    assert view.shape == (4, 64, 48, 3) and np.abs(view.astype(int) - upright).mean() < 4
    with pytest.raises(VmmError, match=r"portrait.mp4: the video is stored rotated by 270 degrees and decord "
                                       r"cannot turn its frames upright; use the 'auto' or 'pyav' decoder"):
        decode_video(path, backend="decord")


@pytest.mark.parametrize("rotation, name", [(90, "r90.mov"), (180, "r180.mp4"), (-90, "r270.mkv")])
def test_rotation_is_honoured_in_every_container(tmp_path, rotation, name):
    # decord alone failed on 90/270 in MP4/MOV, turned 180 itself there, and ignored the rotation in Matroska.
    path = videos.write_rotated(str(tmp_path / name), rotation)
    info, clips = decode_video(path)
    assert info.rotation == rotation % 360
    assert np.abs(clips[0].frames[0].astype(int) - np.rot90(videos.marker_frame(), rotation // 90)).mean() < 4


@pytest.mark.parametrize("rotation, hflip, vflip, name", [
    (0, True, False, "selfie.mp4"), (0, False, True, "upside_down.mov"), (90, True, False, "r90m.mkv"),
    (-90, False, True, "r270v.mp4"), (180, True, True, "r180hv.mov"), (270, True, False, "r270m.mp4")])
def test_mirrored_display_matrix_is_shown_as_players_show_it(tmp_path, rotation, hflip, vflip, name):
    # PyAV writes the matrix as the rotation, then the mirrors; it used to come back as a rotation alone (a
    # left-right mirror as half a turn, an upside-down one as no turn at all), so such videos were indexed upside
    # down or mirrored.
    path = videos.write_rotated(str(tmp_path / name), rotation, hflip=hflip, vflip=vflip)
    shown = np.rot90(videos.marker_frame(), rotation // 90)
    shown = shown[::-1] if vflip else shown
    shown = shown[:, ::-1] if hflip else shown
    info, clips = decode_video(path)
    assert (info.width, info.height) == (shown.shape[1], shown.shape[0])
    assert info.mirrored == (hflip != vflip)
    assert info.backend == ("pyav" if info.rotation or info.mirrored else "decord")  # half a turn twice: none
    assert np.abs(clips[0].frames.astype(int) - shown).mean() < 4
    (view,) = decode_clips(path, 4)  # vmm classify's reader
    assert np.abs(view.astype(int) - shown).mean() < 4


def test_decord_refuses_a_mirrored_video(tmp_path):
    path = videos.write_rotated(str(tmp_path / "selfie.mp4"), 0, hflip=True)
    with pytest.raises(VmmError, match=r"selfie.mp4: the video is stored mirrored and decord cannot flip its frames "
                                       r"as players do; use the 'auto' or 'pyav' decoder"):
        decode_video(path, backend="decord")
    path = videos.write_rotated(str(tmp_path / "both.mov"), 90, hflip=True)
    with pytest.raises(VmmError, match=r"stored rotated by 90 degrees and mirrored and decord cannot flip"):
        probe_video(path, backend="decord")


def test_rotated_video_is_indexed_and_found_upright(tmp_path, capsys):
    vids, lib = tmp_path / "vids", str(tmp_path / "lib")
    vids.mkdir()
    phone = videos.write_rotated(str(vids / "phone.mp4"), -90)
    upright = np.ascontiguousarray(np.rot90(videos.marker_frame(), -1))
    videos.write_frames(str(vids / "computer.mp4"), [upright] * 10)  # the same picture, stored upright
    videos.write_frames(str(vids / "sideways.mp4"), [videos.marker_frame()] * 10)  # what the phone file holds
    assert main(["index", str(vids), "--library", lib, *HIST]) == 0
    rows = catalog_rows(lib)
    assert rows[phone][2:4] == (48, 64)
    capsys.readouterr()
    assert main(["search", lib, "--video", str(vids / "computer.mp4"), "--json"]) == 0
    hits = {Path(h["path"]).name: h["score"] for h in json.loads(capsys.readouterr().out)}
    assert hits["phone.mp4"] > 0.999 and hits["sideways.mp4"] < 0.9


# -- variable frame rate, missing or wrong durations and frame counts -------------------------------------------
PHONE_SEGMENTS = [(5, 30, videos.RED), (5, 30, videos.GREEN), (5, 5, videos.BLUE), (5, 5, videos.YELLOW)]


def test_variable_frame_rate_clips_are_cut_at_their_real_times(tmp_path):
    # 10 s at 30 fps, then 10 s at 5 fps: by index / average fps the clip "5-10 s" held the red of 0-5 s.
    path = videos.write_rate_changes(str(tmp_path / "dim.mp4"), PHONE_SEGMENTS)
    spans = {}
    for backend in ("decord", "pyav"):
        info, clips = decode_video(path, backend=backend, window=5.0, stride=5.0)
        assert info.duration == 20.0 and info.num_frames == 350
        spans[backend] = [(c.start, c.end) for c in clips]
        for clip, (_, _, color) in zip(clips, PHONE_SEGMENTS):
            assert np.abs(clip.frames.astype(int) - color).max() < 12, (backend, clip.start)
    assert spans["decord"] == spans["pyav"] == [(0.0, 5.0), (5.0, 10.0), (10.0, 15.0), (15.0, 20.0)]


def test_a_held_last_frame_counts_for_its_whole_duration(tmp_path):
    # 1 s of typing at 10 fps, then the screen stays still for 9 s: the last packet lasts 9 s. Its length used to
    # be taken as the gap before it, 1.1 s, and the file was refused as truncated against its declared 10 s.
    path = videos.write_held_last_frame(str(tmp_path / "screen.mp4"))
    for backend in ("decord", "pyav"):
        info, clips = decode_video(path, backend=backend, window=2.0, stride=2.0)
        assert info.duration == 10.0 and info.num_frames == 11
        assert [(c.start, c.end) for c in clips] == [(t, t + 2.0) for t in (0.0, 2.0, 4.0, 6.0, 8.0)]
        for clip in clips[1:]:  # the green frame is on screen from 1 s to the end
            assert np.abs(clip.frames.astype(int) - videos.GREEN).max() < 12, (backend, clip.start)


def test_a_window_starts_with_the_frame_on_screen(tmp_path):
    # Red for 1 s, one green frame held 6 s, blue for 1 s: the windows at 2-4 and 4-6 s show green (they took the
    # next frame to start, the blue of 7 s, and green was in no clip).
    path = videos.write_rate_changes(str(tmp_path / "still.mp4"),
                                     [(1, 10, videos.RED), (6, 1 / 6, videos.GREEN), (1, 10, videos.BLUE)])
    for backend in ("decord", "pyav"):
        _, clips = decode_video(path, backend=backend, window=2.0, stride=2.0, num_frames=4)
        for clip in clips[1:3]:
            assert (clip.start, clip.end) in ((2.0, 4.0), (4.0, 6.0))
            assert np.abs(clip.frames.astype(int) - videos.GREEN).max() < 12, (backend, clip.start)


def test_search_reports_the_real_times_of_a_variable_frame_rate_video(tmp_path):
    vids, lib = tmp_path / "vids", str(tmp_path / "lib")
    vids.mkdir()
    path = videos.write_rate_changes(str(vids / "dim.mp4"), PHONE_SEGMENTS)
    # A recording never finalised: no duration in the container; 5 s white, then 5 s blue.
    live = videos.write_frames(str(vids / "live.mkv"), [*videos.solid_frames(videos.WHITE, 50),
                                                        *videos.solid_frames(videos.BLUE, 50)], options={"live": "1"})
    build_library([str(vids)], lib, ENCODER, window=5.0, stride=5.0, workers=1, progress=False)
    rows = catalog_rows(lib)
    assert rows[path][4] == 20.0 and rows[live][4:] == (10.0, [(0.0, 5.0), (5.0, 10.0)])
    expected = [(path, start, color) for start, (_, _, color) in zip((0.0, 5.0, 10.0, 15.0), PHONE_SEGMENTS)]
    with open_library(lib) as reader:
        for file, start, color in [*expected, (live, 0.0, videos.WHITE), (live, 5.0, videos.BLUE)]:
            (best, *_), = reader.search_vectors(one_clip_query(color), k=4, where=ClipFilter(path_glob=file))
            assert (best.start, best.end) == (start, start + 5.0) and best.score > 0.99


def read_alike_by_both_readers(path: str) -> list:
    """The 2 s clips of a 4 s, 40-frame counter video as (start, end, rounded brightness per frame), the same from
    the automatic choice of reader as from PyAV."""
    results = {}
    for backend in ("auto", "pyav"):
        info, clips = decode_video(path, backend=backend, window=2.0, stride=2.0)
        assert (info.num_frames, info.duration) == (40, 4.0), (path, backend)
        results[backend] = [(c.start, c.end, c.frames.mean(axis=(1, 2, 3)).round(-1).tolist()) for c in clips]
    assert results["auto"] == results["pyav"]
    return results["pyav"]


def test_missing_or_wrong_durations_and_frame_counts(tmp_path):
    counter = [np.full((48, 64, 3), 6 * i, np.uint8) for i in range(40)]  # 4 s at 10 fps, frame i at 6 * i
    live = videos.write_frames(str(tmp_path / "live.mkv"), counter, options={"live": "1"})  # no duration at all
    mp4 = videos.write_frames(str(tmp_path / "full.mp4"), counter)
    wrong = [videos.scale_mp4_duration(str(tmp_path / f"x{factor}.mp4"), mp4, factor) for factor in (0, 0.5, 3)]
    avi = videos.write_frames(str(tmp_path / "full.avi"), counter, codec="mpeg4")
    short = videos.set_avi_frame_count(str(tmp_path / "says-20.avi"), avi, 20)  # PyAV trusted it: 2 s were lost
    zero = videos.set_avi_frame_count(str(tmp_path / "says-0.avi"), avi, 0)
    for path in (live, short, zero, *wrong):
        (_, _, first), (start, end, second) = read_alike_by_both_readers(path)
        assert (start, end) == (2.0, 4.0) and first[0] < 30 and second[-1] > 200
    # A header that claims more frames than the file holds is a truncation, by either reader.
    long = videos.set_avi_frame_count(str(tmp_path / "says-400.avi"), avi, 400)
    for backend in ("auto", "pyav"):
        with pytest.raises(VmmError, match="truncated: the video stream declares 40.0 s but only 4.0 s"):
            decode_video(long, backend=backend)


def shift_timestamps(path: str, source: str, seconds: float, audio: str | None = None) -> str:
    """A copy of ``source`` (packets copied, not re-encoded) whose timestamps are moved by ``seconds``, with the
    audio of file ``audio`` from 0 when given. Into MP4, a move back is a copy trimmed at -``seconds`` without
    re-encoding (``ffmpeg -ss ... -c copy``): the frames before 0 stay in the file and its edit list hides them."""
    with contextlib.ExitStack() as files:
        inputs = [files.enter_context(av.open(source)).streams.video[0]]
        if audio is not None:
            inputs.append(files.enter_context(av.open(audio)).streams.audio[0])
        out = files.enter_context(av.open(path, "w"))
        outputs = [out.add_stream_from_template(stream) for stream in inputs]  # all before the first packet
        for stream, output, shift in zip(inputs, outputs, (seconds, 0.0)):
            for packet in stream.container.demux(stream):
                if packet.dts is not None:
                    offset = round(shift / packet.time_base)
                    packet.pts, packet.dts, packet.stream = packet.pts + offset, packet.dts + offset, output
                    out.mux(packet)
    return path


def set_mp4_edit_length(path: str, source: str, seconds: float) -> str:
    """A copy of MP4 ``source`` (one version-0 edit) whose edit list shows only its first ``seconds``: a copy
    trimmed at the end without re-encoding (QuickTime's or a phone's trim)."""
    data = bytearray(Path(source).read_bytes())
    (timescale,) = struct.unpack_from(">I", data, data.find(b"mvhd") + 4 + 4 + 8)
    struct.pack_into(">I", data, data.find(b"elst") + 12, round(seconds * timescale))
    Path(path).write_bytes(data)
    return path


def test_a_copy_trimmed_without_re_encoding_shows_only_its_edit(tmp_path):
    # 4 s at 10 fps, frame i at brightness 6 * i. decord counted and returned the frames the edit list hides: the
    # copy trimmed at 1.5 s lasted 3 s instead of 2.5 s and repeated frames; the one trimmed at 2.5 s lasted 3.1 s.
    full = videos.write_counter(str(tmp_path / "full.mp4"), 40)
    trimmed = {"start": (shift_timestamps(str(tmp_path / "from-1.5s.mp4"), full, -1.5), 15),
               "end": (set_mp4_edit_length(str(tmp_path / "to-2.5s.mov"), full, 2.5), 0)}
    for path, first in trimmed.values():
        for backend in ("auto", "pyav"):
            info, (clip,) = decode_video(path, backend=backend, window=math.inf, num_frames=25)
            assert (info.num_frames, info.duration, info.backend) == (25, 2.5, "pyav"), (path, backend)
            assert np.abs(clip.frames.mean(axis=(1, 2, 3)) - 6 * np.arange(first, first + 25)).max() < 4, path
        with pytest.raises(VmmError, match=r"decord cannot fetch the frames of this video accurately: an edit list "
                                           r"hides some of its frames \(a copy trimmed without re-encoding\); use "
                                           r"the 'auto' or 'pyav' decoder"):
            decode_video(path, backend="decord")
    lib = str(tmp_path / "lib")
    build_library([path for path, _ in trimmed.values()], lib, ENCODER, window=2.0, stride=1.0, workers=0,
                  progress=False)
    rows = catalog_rows(lib)
    for path, _ in trimmed.values():
        assert rows[path][4:] == (2.5, [(0.0, 2.0), (0.5, 2.5)])


def test_matroska_timestamps_that_start_late_are_not_a_truncation(tmp_path):
    # A cut that kept its timestamps: 4 s of video from 2.5 s. Matroska's DURATION tag and segment duration say 6.5
    # s (the end), and the file was refused as "truncated: declares 6.5 s but only 4.0 s"; so was a video stream
    # that starts 2.5 s after its audio.
    counter = videos.write_counter(str(tmp_path / "counter.mkv"), 40)
    late = shift_timestamps(str(tmp_path / "late.mkv"), counter, 2.5)
    untagged = tmp_path / "late-no-tag.mkv"  # the DURATION tag renamed: the segment duration is all there is
    untagged.write_bytes(Path(late).read_bytes().replace(b"DURATION", b"DURATIOX"))
    sound = videos.write_audio_only(str(tmp_path / "sound.mp4"), seconds=6.0)
    after_audio = shift_timestamps(str(tmp_path / "after-audio.mkv"), counter, 2.5, audio=sound)
    for path in (late, str(untagged), after_audio):
        (start, end, first), (_, _, second) = read_alike_by_both_readers(path)
        assert (start, end) == (0.0, 2.0) and first[0] < 30 and second[-1] > 200


# -- streams, lengths and shapes ---------------------------------------------------------------------------
def test_odd_streams_and_shapes_are_indexed_alike_by_both_readers(tmp_path, capsys):
    vids, lib = tmp_path / "vids", str(tmp_path / "lib")
    vids.mkdir()
    paths = {
        "two-streams": videos.write_two_video_streams(str(vids / "two-streams.mp4")),
        "two-frames": videos.write_solid(str(vids / "two-frames.mp4"), videos.BLUE, seconds=0.2),
        "odd": videos.write_frames(str(vids / "odd.mp4"), videos.solid_frames(videos.YELLOW, 10, 33, 17),
                                   codec="h264-444"),
        "tall": videos.write_frames(str(vids / "tall.mp4"), videos.solid_frames(videos.WHITE, 10, 16, 400)),
    }
    shapes = {"two-streams": (48, 64), "two-frames": (48, 64), "odd": (17, 33), "tall": (400, 16)}
    for name, path in paths.items():
        decoded = {}
        for backend in ("auto", "pyav"):  # decord cannot copy out frames 16 pixels wide: auto falls back
            info, clips = decode_video(path, backend=backend)
            decoded[backend] = (info.num_frames, clips[0].start, clips[0].end, clips[0].frames)
            assert clips[0].frames.shape == (8, *shapes[name], 3)
        assert decoded["auto"][:3] == decoded["pyav"][:3]
        assert np.array_equal(decoded["auto"][3], decoded["pyav"][3])
    # The main video stream (the first, and the best by FFmpeg's rule) is the one read, not the smaller preview.
    assert np.abs(decode_video(paths["two-streams"])[1][0].frames.astype(int) - videos.GREEN).max() < 12
    assert main(["index", str(vids), "--library", lib, *HIST]) == 0
    assert "indexed 4 files (4 clips), 0 unchanged, 0 failed" in capsys.readouterr().out
    rows = catalog_rows(lib)
    assert rows[paths["two-frames"]][4:] == (0.2, [(0.0, 0.2)])
    assert rows[paths["tall"]][2:4] == (16, 400)


@pytest.mark.parametrize("write, holds", [(videos.write_audio_only, "audio"),
                                          # its cover art was indexed as a video of one frame lasting 11 us
                                          (videos.write_audio_with_cover, "audio, a cover picture")])
def test_audio_only_mp4_gives_one_line_from_every_command(tmp_path, capsys, write, holds):
    audio = write(str(tmp_path / "voice memo.mp4"))
    videos.write_solid(str(tmp_path / "red.mp4"), videos.RED, seconds=1)
    lib = str(tmp_path / "lib")
    assert main(["index", str(tmp_path), "--library", lib, *HIST]) == 0
    out, err = capsys.readouterr()
    assert "indexed 1 files" in out and "1 failed" in out
    assert err == f"failed: {audio}: no video stream in the container (it holds {holds})\n"
    for argv in (["search", lib, "--video", audio], ["encode", audio, "--frames", "2"],
                 ["classify", audio, "--model", "videomamba_tiny", "--model-arg", "depth=1", "--model-arg",
                  "img_size=32", "--frames", "2", "--checkpoint", "default"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err == f"error: {audio}: no video stream in the container (it holds {holds})\n", argv


# -- file names and symbolic links --------------------------------------------------------------------------
NAMES = ["with space.mp4", "café 東京.mp4", "-x.mp4", "new\nline.mp4", "[intro] clip.mp4"]


def test_odd_file_names_are_indexed_searched_and_printed_on_one_line(tmp_path, capsys, monkeypatch):
    vids, lib = tmp_path / "vids", str(tmp_path / "lib")
    vids.mkdir()
    colors = [videos.RED, videos.GREEN, videos.BLUE, videos.YELLOW, videos.WHITE]
    paths = [videos.write_solid(str(vids / name), color, seconds=1) for name, color in zip(NAMES, colors)]
    videos.write_text(str(vids / "bad\nname.mp4"))
    assert main(["index", str(vids), "--library", lib, *HIST]) == 0
    out, err = capsys.readouterr()
    assert "indexed 5 files (5 clips), 0 unchanged, 1 failed" in out
    assert err == f"failed: {vids}/bad\\nname.mp4: not a video: the file holds text\n"
    assert sorted(catalog_rows(lib)) == sorted([*paths, str(vids / "bad\nname.mp4")])
    for path in paths:
        assert main(["search", lib, "--video", path, "--json", "-k", "1"]) == 0
        assert json.loads(capsys.readouterr().out)[0]["path"] == path
    # The table prints every path whole, on one line: "[intro]" is no style tag, the newline is escaped.
    assert main(["search", lib, "--video", paths[0], "-k", "5"]) == 0
    table = capsys.readouterr().out
    for path in paths:
        assert path.replace("\n", "\\n") in table
    assert len(table.strip().splitlines()) == 6
    monkeypatch.chdir(vids)
    assert main(["search", lib, "--video", "new\nline.mp4x"]) == 2
    assert capsys.readouterr().err == "error: query video new\\nline.mp4x does not exist; check the path\n"


def test_leading_dash_file_name_is_explained(tmp_path, capsys, monkeypatch):
    videos.write_solid(str(tmp_path / "-x.mp4"), videos.GREEN, seconds=1)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["index", "-x.mp4", "--library", "lib", *HIST])
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        "error: vmm index: the following arguments are required: PATH; '-x.mp4' is a file, but a name that starts "
        "with '-' reads as an option: write it as ./-x.mp4 (`vmm index --help` lists the options)\n")
    assert not (tmp_path / "lib").exists()
    assert main(["index", "./-x.mp4", "--library", "lib", *HIST]) == 0
    assert main(["index", "--library", "lib", *HIST, "--", "-x.mp4"]) == 0
    assert "0 files (0 clips), 1 unchanged" in capsys.readouterr().out
    assert main(["search", "lib", "--video=-x.mp4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["path"] == str(tmp_path / "-x.mp4")


def test_symbolic_links_to_videos_and_folders(tmp_path, capsys):
    vids, phone, lib = tmp_path / "vids", tmp_path / "phone", str(tmp_path / "lib")
    vids.mkdir()
    phone.mkdir()
    red = videos.write_solid(str(vids / "red.mp4"), videos.RED, seconds=1)
    videos.write_solid(str(phone / "green.mp4"), videos.GREEN, seconds=1)
    os.symlink(red, vids / "also-red.mp4")  # the same file twice: indexed once, under its own path
    os.symlink(phone, vids / "phone")  # a linked folder was skipped without a word
    os.symlink(vids, vids / "loop")  # a link to a folder being walked is not followed
    os.symlink(tmp_path / "gone.mp4", vids / "dangling.mp4")
    assert main(["index", str(vids), "--library", lib, *HIST]) == 0
    out, err = capsys.readouterr()
    assert "indexed 2 files (2 clips)" in out and "1 unreadable" in out
    assert err == f"unreadable: {vids}/dangling.mp4: broken symbolic link (its target is missing)\n"
    assert sorted(catalog_rows(lib)) == [str(vids / "phone" / "green.mp4"), red]
    # A link given alone is indexed under the link's path.
    solo = str(tmp_path / "solo")
    assert main(["index", str(vids / "also-red.mp4"), "--library", solo, *HIST]) == 0
    assert list(catalog_rows(solo)) == [str(vids / "also-red.mp4")]
    # The linked folder's drive unmounted: its clips stay; the link removed: they go.
    os.rename(phone, tmp_path / "unmounted")
    assert main(["index", str(vids), "--library", lib, *HIST]) == 0
    assert "0 removed" in capsys.readouterr().out
    assert len(catalog_rows(lib)) == 2
    os.remove(vids / "phone")
    assert main(["index", str(vids), "--library", lib, *HIST]) == 0
    assert "1 removed" in capsys.readouterr().out
    assert list(catalog_rows(lib)) == [red]


# -- truncated and damaged files --------------------------------------------------------------------------------
def noisy_video(path: str, seconds: float, fps: int = 10) -> str:
    """Random frames: every packet is large, so damage lands inside frame data."""
    frames = [np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8) for i in range(seconds * fps)]
    return videos.write_frames(path, frames, fps=fps, options={"movflags": "faststart"})


@pytest.mark.parametrize("workers", [0, 1])
def test_truncated_and_damaged_files_fail_alone(tmp_path, capfd, workers):
    vids, lib = tmp_path / "vids", str(tmp_path / "lib")
    vids.mkdir()
    good = [videos.write_long(str(vids / f"{name}.mp4"), seconds=12.0) for name in ("a", "z")]
    source = noisy_video(str(tmp_path / "source.mp4"), 10)
    cut = videos.write_truncated(str(vids / "cut.mp4"), source)  # a download that stopped halfway
    # Damaged at 7 s: decord hands out 4 clips, then fails; PyAV starts again, hands out 7 clips, then fails.
    damaged = videos.write_damaged(str(vids / "damaged.mp4"), source, at=0.7)
    plain = videos.write_truncated(str(vids / "cut-no-index.mp4"), videos.write_long(str(tmp_path / "x.mp4"), 12.0))
    options = ["--window", "1", "--stride", "1", "--workers", str(workers)]
    assert main(["index", str(vids), "--library", lib, "--model", "color-histogram", "--quiet", *options]) == 0
    out, err = capfd.readouterr()  # the decoders' own logs included: nothing but the three lines
    assert "indexed 2 files (24 clips), 0 unchanged, 3 failed" in out
    assert sorted(err.splitlines()) == sorted([
        f"failed: {cut}: truncated: the video stream declares 10.0 s but only 5.0 s (50 frames) can be read; "
        "re-download or re-encode it",
        f"failed: {plain}: cannot read the container (Invalid data found when processing input); the file is "
        "truncated, corrupt or not a video",
        f"failed: {damaged}: decoding failed at frame 70 of 100 (Invalid data found when processing input); the "
        "file is truncated or corrupt"])
    rows = catalog_rows(lib)
    windows = [(float(s), float(s + 1)) for s in range(12)]
    assert {p: r[5] for p, r in rows.items()} == {good[0]: windows, good[1]: windows, cut: [], damaged: [],
                                                  plain: []}
    with open_library(lib) as reader:
        assert len(reader) == 24
        (hits,) = reader.search_vectors(one_clip_query(videos.RED), k=100)
        assert {h.path for h in hits} == set(good) and len({h.clip_id for h in hits}) == 24
    # Retried, the failures fail the same way and nothing is added twice.
    assert main(["index", str(vids), "--library", lib, "--quiet", "--retry-failed", *options]) == 0
    assert "indexed 0 files (0 clips), 2 unchanged, 3 failed" in capfd.readouterr().out
    assert catalog_rows(lib) == rows
    assert main(["search", lib, "--video", damaged]) == 2
    assert capfd.readouterr().err == (f"error: {damaged}: decoding failed at frame 70 of 100 (Invalid data found "
                                      "when processing input); the file is truncated or corrupt\n")
    # An indexed file damaged later: its clips described content that is gone, the failure replaces them.
    videos.write_damaged(good[1], source, at=0.7)
    videos.set_mtime_later(good[1])
    assert main(["index", str(vids), "--library", lib, "--quiet", *options]) == 0
    assert "indexed 0 files (0 clips), 1 unchanged, 1 failed" in capfd.readouterr().out
    after = catalog_rows(lib)
    assert after[good[1]][0] == "failed" and after[good[1]][5] == [] and after[good[0]] == rows[good[0]]


def test_broken_pipe_ends_quietly(tmp_path):
    (red,) = [videos.write_solid(str(tmp_path / "red.mp4"), videos.RED, seconds=1)]
    lib = str(tmp_path / "lib")
    assert main(["index", red, "--library", lib, *HIST]) == 0
    # `vmm search ... | head`: the reader is gone (here before the first write) and the output has nowhere to go;
    # with buffered stdout (no PYTHONUNBUFFERED) the error comes at the flush, and Rich's table has its own path.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | {"PYTHONPATH": str(REPO)}
    for unbuffered in ("", "1"):
        for output in ("--json", ""):
            shell = (f"{sys.executable} -m vmm.cli search {lib} --video {red} {output} | true; "
                     "echo status ${PIPESTATUS[0]} >&2")
            r = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, cwd=REPO, timeout=120,
                               env=env | ({"PYTHONUNBUFFERED": unbuffered} if unbuffered else {}))
            assert r.stderr == "status 141\n", (unbuffered, output, r.stderr)
