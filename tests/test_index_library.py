"""Building, updating and reading libraries of real generated videos."""
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys

import faiss
import numpy as np
import pytest

from tests import videos
from index.catalog import Catalog, FileResult
from index.decode import decode_video
from index.encoder import ColorHistogramEncoder
from index import ingest as ingest_module
from index.ingest import build_library
from index.library import LibraryWriter, read_state, remove_paths, sync_index
from index.reader import ClipFilter, open_library
from vmm.errors import VmmError

ENCODER = ColorHistogramEncoder()





pytestmark = pytest.mark.usefixtures("one_faiss_thread")

def make_media(root) -> dict[str, str]:
    """Good and bad files; returns name -> path."""
    (root / "sub").mkdir(parents=True)
    files = {
        "red": videos.write_solid(str(root / "red.mp4"), videos.RED),
        "green": videos.write_solid(str(root / "green.webm"), videos.GREEN, codec="vp9"),
        "blue": videos.write_solid(str(root / "sub" / "blue.avi"), videos.BLUE, codec="mpeg4"),
        "square": videos.write_moving_square(str(root / "sub" / "square.mp4"), width=97, height=61, codec="h264-444"),
        "long": videos.write_long(str(root / "long.mp4"), seconds=40.0),  # red, green, blue, yellow per 10 s
        "renamed": videos.write_solid(str(root / "sub" / "clip.dat"), videos.WHITE),
        "one": videos.write_solid(str(root / "one.mp4"), videos.RED, seconds=0.1),
        "text": videos.write_text(str(root / "notes.mp4")),
        "empty": videos.write_empty(str(root / "empty.mp4")),
        "audio": videos.write_audio_only(str(root / "audio.mp4")),
    }
    files["cut"] = videos.write_truncated(str(root / "cut.mp4"), files["red"])
    return files


def query(color, seconds: float = 1.0) -> np.ndarray:
    frames = np.stack(videos.solid_frames(color, 8, 40, 30))
    return ENCODER.encode_clips([frames])


def library_contents(library: str) -> dict[tuple[str, float, float], bytes]:
    """(path, start, end) -> vector bytes, straight from the catalog."""
    conn = sqlite3.connect(f"file:{library}/catalog.sqlite?mode=ro", uri=True)
    rows = conn.execute("SELECT f.path, c.start_sec, c.end_sec, c.vector FROM clips c JOIN files f ON f.id = c.file_id"
                        ).fetchall()
    conn.close()
    contents = {(p, s, e): v for p, s, e, v in rows}
    assert len(contents) == len(rows), "duplicate clips"
    return contents


def assert_index_matches_catalog(library: str) -> None:
    """The FAISS file holds exactly the catalog's clip ids, with the catalog's vectors."""
    state = read_state(library)
    catalog = Catalog.open(f"{library}/catalog.sqlite", read_only=True)
    ids, vectors = zip(*catalog.iter_vectors()) if catalog.clip_count() else ((), ())
    assert state.generation == catalog.generation()
    catalog.close()
    index = faiss.read_index(f"{library}/{state.file}")
    if "IVF" in state.factory:  # ids in the inverted lists; a hashtable direct map to reconstruct by id
        ivf = faiss.extract_index_ivf(index)
        lists = ivf.invlists
        stored = np.sort(np.concatenate([np.zeros(0, np.int64)] + [
            faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy() for i in range(lists.nlist)]))
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
    else:
        stored = np.sort(faiss.vector_to_array(faiss.downcast_index(index).id_map)) if index.ntotal else np.zeros(0)
    expected = np.sort(np.concatenate(ids)) if ids else np.zeros(0)
    assert np.array_equal(stored, expected)
    if ids:
        all_ids, all_vectors = np.concatenate(ids), np.concatenate(vectors)
        assert np.array_equal(index.reconstruct_batch(all_ids), all_vectors)


# -- a full build and search --------------------------------------------------------------------------
def test_build_and_search(tmp_path):
    media = make_media(tmp_path / "media")
    library = str(tmp_path / "lib")
    updates = []
    summary = build_library([str(tmp_path / "media")], library, ENCODER, workers=2, batch_size=4,
                            progress=updates.append)
    assert (summary.indexed, summary.failed, summary.unchanged, summary.removed) == (7, 4, 0, 0)
    # long: 7 windows of 10 s every 5 s; the six short videos one clip each
    assert summary.clips == 13 and summary.clips_per_second > 0
    # Progress counts the files handed to decoders (the text and the empty file fail before that).
    assert updates[-1].files_done == updates[-1].files_total == 9 and updates[-1].clips_done == 13
    failures = dict(summary.failures)
    assert failures[media["text"]] == "not a video: the file holds text"
    assert failures[media["empty"]] == "empty file (0 bytes)"
    assert failures[media["audio"]] == "no video stream in the container (it holds audio)"
    assert failures[media["cut"]].startswith("cannot read the container")
    assert summary.line().startswith("indexed 7 files (13 clips), 0 unchanged, 4 failed, 0 removed in ")
    assert_index_matches_catalog(library)
    manifest = json.load(open(f"{library}/manifest.json"))
    assert (manifest["model_name"], manifest["dim"], manifest["window"], manifest["stride"]) == \
        ("color-histogram", ENCODER.dim, 10.0, 5.0)

    with open_library(library, model=ENCODER) as reader:
        assert len(reader) == 13
        failed = {r.path: r.error for r in reader.files.values() if r.status == "failed"}
        assert failed == failures
        assert [(s, e) for _, s, e in reader.clips_of(media["long"])] == \
            [(0.0, 10.0), (5.0, 15.0), (10.0, 20.0), (15.0, 25.0), (20.0, 30.0), (25.0, 35.0), (30.0, 40.0)]
        (hits,) = reader.search_vectors(query(videos.RED), k=3)
        assert {(h.path, h.start) for h in hits} == {(media["red"], 0.0), (media["one"], 0.0), (media["long"], 0.0)}
        assert hits[0].score > 0.99 and all(a.score >= b.score for a, b in zip(hits, hits[1:]))
        # Filters apply before ranking: the best clips of long.mp4 for each colour.
        only_long = ClipFilter(path_glob="*/long.mp4")
        for color, window in ((videos.GREEN, (10.0, 20.0)), (videos.BLUE, (20.0, 30.0)), (videos.YELLOW, (30.0, 40.0))):
            (best, *_), = reader.search_vectors(query(color), k=2, where=only_long)
            assert (best.path, best.start, best.end) == (media["long"], *window)
        (hits,) = reader.search_vectors(query(videos.RED), k=10, where=ClipFilter(max_duration=1.0))
        assert [h.path for h in hits] == [media["one"]]
        (hits,) = reader.search_vectors(query(videos.RED), k=10, where=lambda f: f.path.endswith(".avi"))
        assert [h.path for h in hits] == [media["blue"]]
        # A clip of the indexed square video finds itself first.
        _, clips = decode_video(media["square"])
        (hits,) = reader.search_vectors(ENCODER.encode_clips([clips[0].frames])[0], k=1)
        assert hits[0].path == media["square"] and hits[0].score == pytest.approx(1.0, abs=1e-5)
        with pytest.raises(VmmError, match="query vectors have shape"):
            reader.search_vectors(np.zeros((1, 5), np.float32))


def test_incremental_runs(tmp_path):
    root = tmp_path / "media"
    media = make_media(root)
    library = str(tmp_path / "lib")
    build_library([str(root)], library, ENCODER, workers=0, progress=False)
    before = library_contents(library)

    again = build_library([str(root)], library, ENCODER, workers=0, progress=False)
    assert (again.indexed, again.unchanged, again.failed, again.skipped_failed, again.clips) == (0, 7, 0, 4, 0)
    assert library_contents(library) == before

    videos.write_solid(str(root / "new.mp4"), videos.YELLOW)  # new
    videos.write_solid(media["red"], videos.BLUE, seconds=3.0)  # changed content
    videos.set_mtime_later(media["red"])
    os.remove(media["green"])  # deleted
    os.rename(media["blue"], str(root / "moved.avi"))  # moved: same content, new path
    os.utime(media["square"], ns=(0, 123))  # touched: new mtime, same content
    summary = build_library([str(root)], library, ENCODER, workers=0, progress=False)
    assert (summary.indexed, summary.removed, summary.moved, summary.unchanged) == (2, 1, 1, 4)
    after = library_contents(library)
    assert {k[0] for k in after} == {k[0] for k in before} - {media["green"], media["blue"]} | \
        {str(root / "new.mp4"), str(root / "moved.avi")}
    assert after[(str(root / "moved.avi"), 0.0, 2.0)] == before[(media["blue"], 0.0, 2.0)]
    assert after[(media["square"], 0.0, 2.0)] == before[(media["square"], 0.0, 2.0)]
    assert (media["red"], 0.0, 3.0) in after and (media["red"], 0.0, 2.0) not in after
    assert_index_matches_catalog(library)
    with open_library(library) as reader:
        (hits,) = reader.search_vectors(query(videos.BLUE), k=2)
        assert {h.path for h in hits} == {media["red"], str(root / "moved.avi")}  # red.mp4 is blue now
        assert len(reader) == len(after)


def test_folder_moved_outside_the_runs_paths_follows_its_rows(tmp_path):
    # `mv ~/videos/trip ~/archive/trip`, then `vmm index ~/archive`: the old paths are outside this run's paths,
    # yet they are gone, so their rows must follow (not be embedded again and leave vanished paths in searches).
    trip = tmp_path / "videos" / "trip"
    trip.mkdir(parents=True)
    red = videos.write_solid(str(trip / "red.mp4"), videos.RED)
    videos.write_solid(str(trip / "blue.mp4"), videos.BLUE)
    kept = videos.write_solid(str(tmp_path / "videos" / "green.mp4"), videos.GREEN)
    library = str(tmp_path / "lib")
    build_library([str(tmp_path / "videos")], library, ENCODER, workers=0, progress=False)
    before = library_contents(library)
    (tmp_path / "archive").mkdir()
    os.rename(trip, tmp_path / "archive" / "trip")
    summary = build_library([str(tmp_path / "archive")], library, ENCODER, workers=0, progress=False)
    assert (summary.indexed, summary.moved, summary.removed) == (0, 2, 0)
    after = library_contents(library)
    moved = str(tmp_path / "archive" / "trip" / "red.mp4")
    assert {k[0] for k in after} == {kept, moved, str(tmp_path / "archive" / "trip" / "blue.mp4")}
    assert after[(moved, 0.0, 2.0)] == before[(red, 0.0, 2.0)]
    assert_index_matches_catalog(library)
    # A file that is still at its old path is a copy, not a move: both stay.
    shutil.copy(kept, tmp_path / "archive" / "green-copy.mp4")
    copied = build_library([str(tmp_path / "archive")], library, ENCODER, workers=0, progress=False)
    assert (copied.indexed, copied.moved) == (1, 0) and kept in {k[0] for k in library_contents(library)}


def test_files_of_an_empty_folder_are_kept_as_a_drive_not_mounted(tmp_path):
    """A NAS share or camera card not mounted leaves its mount point an empty folder: a run over it removed every
    clip of the drive, all to be embedded again once it was back."""
    drives = tmp_path / "mnt"
    nas, card = drives / "nas", drives / "card"
    (nas / "trip").mkdir(parents=True)
    card.mkdir()
    videos.write_solid(str(nas / "red.mp4"), videos.RED)
    videos.write_solid(str(nas / "trip" / "blue.mp4"), videos.BLUE)
    green = videos.write_solid(str(card / "green.mp4"), videos.GREEN)
    library = str(tmp_path / "lib")
    build_library([str(drives)], library, ENCODER, workers=0, progress=False)
    before = library_contents(library)
    unmounted = tmp_path / "elsewhere"
    os.rename(nas, unmounted)
    nas.mkdir()
    os.remove(green)  # deleted from a folder that holds something else: gone
    (card / "notes.txt").write_text("not a video")
    for roots in ([nas], [drives]):
        summary = build_library([str(r) for r in roots], library, ENCODER, workers=0, progress=False)
        assert (summary.removed, [folder for _, folder in summary.kept]) == (int(roots == [drives]), [str(nas)] * 2)
        assert f", 2 missing files kept (the folder {nas} is empty: a drive not mounted? if deleted, " in summary.line()
    assert library_contents(library) == {k: v for k, v in before.items() if k[0] != green}
    assert_index_matches_catalog(library)
    # Found under another path, they move as any missing file does; one put back is unchanged.
    shutil.copy(unmounted / "red.mp4", nas / "red.mp4")
    os.utime(nas / "red.mp4", ns=(0, os.stat(unmounted / "red.mp4").st_mtime_ns))
    os.rename(unmounted / "trip", tmp_path / "trip")
    summary = build_library([str(drives), str(tmp_path / "trip")], library, ENCODER, workers=0, progress=False)
    assert (summary.indexed, summary.unchanged, summary.moved, summary.removed, summary.kept) == (0, 1, 1, 0, [])
    assert sorted(k[0] for k in library_contents(library)) == [str(nas / "red.mp4"), str(tmp_path / "trip" / "blue.mp4")]


def test_the_summary_line_of_a_kept_file_stays_one_line_whatever_its_folder_is_called(tmp_path):
    card = tmp_path / "card\none"  # a folder name with a newline split the line, the rest reading as another
    card.mkdir()
    red = videos.write_solid(str(card / "red.mp4"), videos.RED, 1.0)
    library = str(tmp_path / "lib")
    build_library([str(tmp_path / "card\none")], library, ENCODER, workers=0, progress=False)
    os.remove(red)
    line = build_library([str(card)], library, ENCODER, workers=0, progress=False).line()
    assert "\n" not in line and f"(the folder {tmp_path}/card\\none is empty: " in line
    assert f"no videos found under {tmp_path}/card\\none in " in line

def test_failed_files_are_skipped_then_retried(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    bad = videos.write_text(str(root / "bad.mp4"))
    library = str(tmp_path / "lib")
    assert build_library([str(root)], library, ENCODER, workers=0, progress=False).failed == 1
    skipped = build_library([str(root)], library, ENCODER, workers=0, progress=False)
    assert (skipped.failed, skipped.skipped_failed) == (0, 1) and "retry_failed=True" in skipped.line()
    retried = build_library([str(root)], library, ENCODER, workers=0, progress=False, retry_failed=True)
    assert (retried.failed, retried.skipped_failed) == (1, 0)
    videos.write_solid(bad, videos.RED)  # fixed by the user: a change is picked up without retry_failed
    fixed = build_library([str(root)], library, ENCODER, workers=0, progress=False)
    assert (fixed.indexed, fixed.failed) == (1, 0)
    with open_library(library) as reader:
        (record,) = reader.files.values()
        assert (record.status, record.error, len(reader)) == ("ok", None, 1)


def test_oversized_frames_are_recorded_as_failed(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    big = videos.write_solid(str(root / "big.mp4"), videos.RED, width=128, height=96)
    videos.write_solid(str(root / "small.mp4"), videos.GREEN, width=32, height=24)
    summary = build_library([str(root)], str(tmp_path / "lib"), ENCODER, workers=1, progress=False, max_pixels=5000)
    assert (summary.indexed, summary.failed) == (1, 1)
    assert summary.failures == [(big, "resolution 128x96 is above max_pixels=5,000; downscale the video (e.g. ffmpeg "
                                      "-i IN -vf scale=-2:2160 OUT.mp4), or from Python pass a larger max_pixels")]


def test_remove_paths_and_scoped_runs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    videos.write_solid(str(a / "red.mp4"), videos.RED)
    videos.write_solid(str(b / "green.mp4"), videos.GREEN)
    videos.write_solid(str(b / "blue.mp4"), videos.BLUE)
    library = str(tmp_path / "lib")
    build_library([str(a)], library, ENCODER, workers=0, progress=False)
    # Indexing b must not drop a's files: only paths under the given roots are reconciled.
    assert build_library([str(b)], library, ENCODER, workers=0, progress=False).removed == 0
    assert remove_paths(library, [str(b / "green.mp4")]) == 1
    assert remove_paths(library, [str(tmp_path / "nothing-here")]) == 0
    assert {p for p, _, _ in library_contents(library)} == {str(a / "red.mp4"), str(b / "blue.mp4")}
    assert_index_matches_catalog(library)


# -- the manifest and bad setups ----------------------------------------------------------------------------
def test_another_model_or_setting_is_refused(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    videos.write_solid(str(root / "red.mp4"), videos.RED)
    library = str(tmp_path / "lib")
    build_library([str(root)], library, ENCODER, workers=0, progress=False, window=4.0, stride=2.0)
    before = library_contents(library)
    other = ColorHistogramEncoder(bins=5)
    with pytest.raises(VmmError) as caught:
        build_library([str(root)], library, other, workers=0, progress=False)
    message = str(caught.value)
    assert "\n" not in message and f"library {library} was built with model color-histogram" in message
    assert "weights_hash is" in message and "use the library's model or index into a new library folder" in message
    with pytest.raises(VmmError, match="uses window=4.0 but window=8.0 was asked for"):
        build_library([str(root)], library, ENCODER, workers=0, progress=False, window=8.0)
    with pytest.raises(VmmError, match="search it with the model it was built with"):
        open_library(library, model=other)
    # Without explicit settings a run takes the library's own.
    assert build_library([str(root)], library, ENCODER, workers=0, progress=False).unchanged == 1
    assert library_contents(library) == before


def test_bad_paths_and_folders(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    videos.write_solid(str(root / "red.mp4"), videos.RED)
    library = tmp_path / "lib"
    with pytest.raises(VmmError, match=r"missing: no such file or folder; check the path$"):
        build_library([str(tmp_path / "missing")], str(library), ENCODER, progress=False)
    assert not library.exists()  # nothing was created
    with pytest.raises(VmmError, match="no paths to index"):
        build_library([], str(library), ENCODER, progress=False)
    not_a_folder = videos.write_text(str(tmp_path / "file.txt"))
    with pytest.raises(VmmError, match="exists and is not a folder"):
        build_library([str(root)], not_a_folder, ENCODER, progress=False)
    with pytest.raises(VmmError, match="cannot create library folder .*Not a directory"):
        build_library([str(root)], not_a_folder + "/lib", ENCODER, progress=False)
    with pytest.raises(VmmError, match="is not empty and holds no vmm library"):
        build_library([str(root)], str(root), ENCODER, progress=False)
    with pytest.raises(VmmError, match="no vmm library at"):
        open_library(str(tmp_path / "nowhere"))
    with pytest.raises(VmmError, match="stride must be > 0 and <= window"):
        build_library([str(root)], str(library), ENCODER, window=2.0, stride=3.0, progress=False)
    with pytest.raises(VmmError, match="not a valid FAISS factory string"):
        build_library([str(root)], str(library), ENCODER, factory="Nonsense", workers=0, progress=False)


def test_a_library_path_starting_with_a_tilde_is_in_the_home_folder(tmp_path, monkeypatch):
    """No shell expands "~" in a Python string: build_library(..., "~/lib") made a folder named "~" in the working
    one, and open_library("~/lib") found no library, where vmm index --library and VideoLibrary read the home."""
    (tmp_path / "home").mkdir(), (tmp_path / "work").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "work")
    videos.write_solid(str(tmp_path / "red.mp4"), videos.RED, seconds=1)
    assert build_library([str(tmp_path / "red.mp4")], "~/lib", ENCODER, workers=0, progress=False).indexed == 1
    assert (tmp_path / "home" / "lib" / "catalog.sqlite").is_file() and os.listdir(tmp_path / "work") == []
    with open_library("~/lib") as reader:
        assert [record.path for record in reader.files.values()] == [str(tmp_path / "red.mp4")]
    assert sync_index("~/lib").count == 1
    assert remove_paths("~/lib", [str(tmp_path / "red.mp4")]) == 1


@pytest.fixture()
def unwritable(tmp_path):
    """A folder this process cannot write to: chmod for a normal user, chattr +i for root."""
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
        pytest.skip("running as root without chattr: cannot make an unwritable folder")
    yield folder
    subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_unwritable_library_folder(tmp_path, unwritable):
    root = tmp_path / "media"
    root.mkdir()
    videos.write_solid(str(root / "red.mp4"), videos.RED)
    with pytest.raises(VmmError) as caught:
        build_library([str(root)], str(unwritable), ENCODER, workers=0, progress=False)
    assert "not writable" in str(caught.value) or "cannot write" in str(caught.value)
    assert "\n" not in str(caught.value)
    with pytest.raises(VmmError, match="cannot create library folder"):
        build_library([str(root)], str(unwritable / "lib"), ENCODER, workers=0, progress=False)


def test_existing_library_made_read_only_is_readable_and_refuses_writes(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    videos.write_solid(str(root / "red.mp4"), videos.RED)
    library = tmp_path / "lib"
    build_library([str(root)], str(library), ENCODER, workers=0, progress=False)
    before = library_contents(str(library))
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(library)]).returncode != 0:
            pytest.skip("running as root without chattr")
    else:
        library.chmod(0o555)
    try:
        videos.write_solid(str(root / "green.mp4"), videos.GREEN)
        with pytest.raises(VmmError, match="not writable|cannot write"):
            build_library([str(root)], str(library), ENCODER, workers=0, progress=False)
        with open_library(str(library)) as reader:
            assert len(reader) == 1 and reader.search_vectors(query(videos.RED), k=1)[0][0].score > 0.99
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(library)], check=True)
        else:
            library.chmod(0o755)
    assert library_contents(str(library)) == before


def test_second_writer_is_refused(tmp_path):
    library = str(tmp_path / "lib")
    (tmp_path / "media").mkdir()
    build_library([str(tmp_path / "media")], library, ENCODER, workers=0, progress=False)
    with LibraryWriter.open(library):
        # The host too (vmm.folder_lock's text, as training runs and the demo): a library on a shared drive can be
        # written from another machine, where the pid alone named no process the user could find.
        with pytest.raises(VmmError, match=rf"is being written by pid {os.getpid()} on host \S+; wait for it to "
                                           "finish$"):
            build_library([str(tmp_path / "media")], library, ENCODER, workers=0, progress=False)


def test_an_older_vmms_lock_file_is_still_the_librarys_own(tmp_path):
    """Older vmm wrote "pid N" without the host: a folder holding such a lock and a manifest must still read as a
    library missing its catalog (whose leftovers the message names), not as a user's folder."""
    from index.library import _foreign_files
    library = tmp_path / "lib"
    (tmp_path / "media").mkdir()
    build_library([str(tmp_path / "media")], str(library), ENCODER, workers=0, progress=False)
    assert "lock" not in _foreign_files(str(library))
    for text in ("pid 4242", "pid 4242 on host node-1.cluster\n"):
        (library / "lock").write_text(text)
        assert "lock" not in _foreign_files(str(library)), text
    (library / "lock").write_text("pid 4242 and my notes")
    assert "lock" in _foreign_files(str(library))


def test_a_drive_without_file_locks_is_named_not_a_run_to_wait_for(tmp_path, monkeypatch):
    """flock fails with ENOLCK where the drive has no locks (an NFSv3 mount without its lock service): that was
    'is being written by pid N; wait for it to finish', naming the last run's pid, long gone."""
    import errno
    import fcntl

    library = str(tmp_path / "lib")
    (tmp_path / "media").mkdir()
    build_library([str(tmp_path / "media")], library, ENCODER, workers=0, progress=False)

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(VmmError) as refused:
        build_library([str(tmp_path / "media")], library, ENCODER, workers=0, progress=False)
    assert str(refused.value).startswith(f"cannot lock {library}/lock (No locks available): the drive of library "
                                         f"{library} does not support file locks"), refused.value
    assert "being written" not in str(refused.value)


# -- readers and the FAISS cache ------------------------------------------------------------------------------
def test_reader_keeps_its_snapshot_and_applies_uncommitted_index_changes(tmp_path):
    root = tmp_path / "media"
    media = make_media(root)
    library = str(tmp_path / "lib")
    build_library([str(root)], library, ENCODER, workers=0, progress=False)
    old_reader = open_library(library)
    red_hits = {h.path for h in old_reader.search_vectors(query(videos.RED), k=3)[0]}

    # A writer commits changes but dies before refreshing the FAISS file.
    with LibraryWriter.open(library) as writer:
        red = writer.catalog.file_by_path(media["red"])
        writer.catalog.commit(remove=[red.id])
    videos.write_solid(str(root / "yellow.mp4"), videos.YELLOW)
    from index.catalog import FileResult
    from index.discovery import fingerprint_file
    info, clips = decode_video(str(root / "yellow.mp4"))
    with LibraryWriter.open(library) as writer:
        writer.catalog.commit([FileResult(str(root / "yellow.mp4"), 1, 1, fingerprint_file(str(root / "yellow.mp4")),
                                          "ok", None, info, [(0.0, 2.0)], ENCODER.encode_clips([clips[0].frames]))])
    assert read_state(library).generation < Catalog.open(f"{library}/catalog.sqlite", read_only=True).generation()

    # The old reader still sees its snapshot; a new one sees the committed state.
    assert {h.path for h in old_reader.search_vectors(query(videos.RED), k=3)[0]} == red_hits
    with open_library(library) as reader:
        assert len(reader) == len(old_reader)  # one clip removed, one added
        (everything,) = reader.search_vectors(query(videos.RED), k=len(reader))
        assert len(everything) == len(reader) and media["red"] not in {h.path for h in everything}
        paths = {h.path for hits in reader.search_vectors(np.concatenate([query(videos.RED), query(videos.YELLOW)]),
                                                          k=20) for h in hits}
        assert media["red"] not in paths and str(root / "yellow.mp4") in paths
        (best,) = reader.search_vectors(query(videos.YELLOW), k=1, where=ClipFilter(path_glob="*yellow*"))[0]
        assert best.score > 0.99
        before_sync = [[(h.clip_id, round(h.score, 5)) for h in hits]
                       for hits in reader.search_vectors(query(videos.GREEN), k=5)]
    old_reader.close()
    sync_index(library)
    assert_index_matches_catalog(library)
    with open_library(library) as reader:
        after_sync = [[(h.clip_id, round(h.score, 5)) for h in hits]
                      for hits in reader.search_vectors(query(videos.GREEN), k=5)]
    assert after_sync == before_sync


def test_crash_while_saving_the_index_file(tmp_path):
    # The FAISS file is written under a new name, then index-state.json is switched to it.
    # A crash in between leaves a stray complete file and maybe a partial temp file; the
    # state still names a complete index, and the next writer cleans up.
    root = tmp_path / "media"
    media = make_media(root)
    library = tmp_path / "lib"
    build_library([str(root)], str(library), ENCODER, workers=0, progress=False)
    state = read_state(str(library))
    shutil.copy(library / state.file, library / "vectors.g000000000099.faiss")
    (library / "vectors.g000000000100.faiss.tmp.4242").write_bytes(b"half an index")
    with open_library(str(library)) as reader:
        assert len(reader) == 13 and reader.search_vectors(query(videos.GREEN), k=1)[0][0].path in \
            (media["green"], media["long"])
    os.remove(media["blue"])
    assert build_library([str(root)], str(library), ENCODER, workers=0, progress=False).removed == 1
    assert sorted(f for f in os.listdir(library) if f.startswith("vectors")) == [read_state(str(library)).file]
    assert_index_matches_catalog(str(library))


def test_index_types_and_rebuilds(tmp_path):
    root = tmp_path / "media"
    media = make_media(root)
    library = str(tmp_path / "lib")
    build_library([str(root)], library, ENCODER, workers=0, progress=False, factory="HNSW16,Flat")
    assert read_state(library).factory == "IDMap2,HNSW16,Flat"
    os.remove(media["green"])  # HNSW cannot remove ids: the file is rebuilt from the catalog
    assert build_library([str(root)], library, ENCODER, workers=0, progress=False).removed == 1
    assert_index_matches_catalog(library)
    # An IVF the library is too small to train stays flat until it has enough vectors.
    build_library([str(root)], library, ENCODER, workers=0, progress=False, factory="IVF64,Flat")
    assert read_state(library).factory == "IDMap2,Flat" and read_state(library).factory_setting == "IVF64,Flat"
    with open_library(library) as reader:
        assert reader.search_vectors(query(videos.RED), k=1)[0][0].path in (media["red"], media["one"], media["long"])
    # A damaged FAISS file is only a cache: deleting it is repaired by the next sync.
    os.remove(os.path.join(library, read_state(library).file))
    with open_library(library) as reader:
        assert len(reader) == 12 and reader.search_vectors(query(videos.BLUE), k=1)[0][0].score > 0.99
    sync_index(library)
    assert_index_matches_catalog(library)


# -- one file, one row, also across runs -----------------------------------------------------------------
def red_hit_paths(library: str) -> list[str]:
    with open_library(library) as reader:
        (hits,) = reader.search_vectors(query(videos.RED), k=10)
    return [hit.path for hit in hits]


@pytest.mark.parametrize("case", ["hard link made later", "link to the file, then its folder",
                                  "link to the folder, then its parent", "link to the folder, then the real one"])
def test_a_file_reached_by_a_new_path_in_a_later_run_is_not_indexed_again(tmp_path, case):
    """docs/index.md: a file reached by two paths is indexed once, so no match comes back twice. Before, that held
    only within one run: the second run below added the file again under its other path."""
    d = tmp_path / "d"
    (d / "real").mkdir(parents=True)
    real = d / "real" / "a.mp4"
    videos.write_solid(str(real), videos.RED, seconds=1)
    if case == "hard link made later":
        first, later, kept, duplicate = d, d, real, d / "b.mp4"
    elif case == "link to the file, then its folder":
        (d / "alias.mp4").symlink_to(real)
        first, later, kept, duplicate = d / "alias.mp4", d, d / "alias.mp4", real
    else:
        (d / "linkdir").symlink_to(d / "real")
        first, kept, duplicate = d / "linkdir", d / "linkdir" / "a.mp4", real
        later = d if case.endswith("its parent") else d / "real"  # the real folder: the row is outside the run
    library = str(tmp_path / "lib")
    assert build_library([str(first)], library, ENCODER, workers=0, progress=False).indexed == 1
    if case == "hard link made later":
        os.link(real, duplicate)
    for _ in range(2):  # and a run after that finds the same
        summary = build_library([str(later)], library, ENCODER, workers=0, progress=False)
        assert red_hit_paths(library) == [str(kept)]
        assert (summary.indexed, summary.removed, summary.duplicates) == (0, 0, [(str(duplicate), str(kept))])
        assert ", 1 duplicate path skipped (same file as another path)" in summary.line()
    assert_index_matches_catalog(library)


def test_a_file_changed_behind_a_new_hard_link_is_embedded_again_under_its_path(tmp_path):
    """Before, the new link was indexed and the library's own path, left out as its duplicate, kept the old
    vectors: the file came back twice, once with its old content."""
    (tmp_path / "d" / "sub").mkdir(parents=True)
    path, link = tmp_path / "d" / "sub" / "a.mp4", tmp_path / "d" / "b.mp4"
    videos.write_solid(str(path), videos.RED, seconds=1)
    library = str(tmp_path / "lib")
    build_library([str(tmp_path / "d")], library, ENCODER, workers=0, progress=False)
    os.link(path, link)
    videos.write_solid(str(link), videos.BLUE, seconds=2)  # rewritten in place: both names see it
    assert os.path.samefile(path, link)
    summary = build_library([str(tmp_path / "d")], library, ENCODER, workers=0, progress=False)
    with open_library(library) as reader:
        (hits,) = reader.search_vectors(query(videos.BLUE), k=10)
    assert [(hit.path, hit.end) for hit in hits] == [(str(path), 2.0)] and hits[0].score > 0.99
    assert (summary.indexed, summary.duplicates) == (1, [(str(link), str(path))])


def test_a_library_holding_one_file_twice_keeps_one_row_after_the_next_run(tmp_path):
    """A library from before files were told apart by identity may hold a file under two paths; a run over both
    keeps the one it would have chosen (the path without a symbolic link) and drops the other's clips."""
    (tmp_path / "d" / "real").mkdir(parents=True)
    real = videos.write_solid(str(tmp_path / "d" / "real" / "a.mp4"), videos.RED, seconds=1)
    (tmp_path / "d" / "linkdir").symlink_to(tmp_path / "d" / "real")
    library = str(tmp_path / "lib")
    build_library([real], library, ENCODER, workers=0, progress=False)
    catalog = Catalog.open(f"{library}/catalog.sqlite")
    row, = catalog.files()
    (vectors,) = [v for _, v in catalog.iter_vectors()]
    alias = str(tmp_path / "d" / "linkdir" / "a.mp4")
    catalog.commit([FileResult(alias, row.size, row.mtime_ns, row.fingerprint, "ok", spans=[(0.0, 1.0)],
                               vectors=vectors)])
    catalog.close()
    assert sorted(red_hit_paths(library)) == sorted([real, alias])
    summary = build_library([str(tmp_path / "d")], library, ENCODER, workers=0, progress=False)
    assert red_hit_paths(library) == [real]
    assert (summary.unchanged, summary.removed, summary.duplicates) == (1, 1, [(alias, real)])
    assert_index_matches_catalog(library)


def test_many_file_paths_are_checked_for_videos_in_near_linear_work(tmp_path, monkeypatch):
    """`vmm index dir/*.mp4` compared every path given with every file found to name the empty ones: with 8,000
    paths a run with nothing to do took 4.3 s instead of 0.3 s. Counted, not timed: each path given is compared
    with at most one file found, and once more by its real path when still empty."""
    d = tmp_path / "d"
    d.mkdir()
    first = videos.write_solid(str(d / "v00.mp4"), videos.RED, seconds=1)
    paths = [first] + [str(shutil.copyfile(first, d / f"v{i:02d}.mp4")) for i in range(1, 29)]
    paths.append(str(shutil.copyfile(first, d / "none-2.mp4")))  # sorts between d/none and anything under it
    (d / "none").mkdir()
    (tmp_path / "linked").symlink_to(d)  # the same files under another spelling
    roots = paths + [str(d / "none"), str(tmp_path / "linked")]
    library = str(tmp_path / "lib")
    build_library(paths, library, ENCODER, workers=0, progress=False)
    calls = []
    real_at_or_under = ingest_module._at_or_under
    monkeypatch.setattr(ingest_module, "_at_or_under",
                        lambda path, root: calls.append(root) or real_at_or_under(path, root))
    summary = build_library(roots, library, ENCODER, workers=0, progress=False)
    assert (summary.indexed, summary.unchanged, summary.empty) == (0, 30, [str(d / "none")])
    assert len(calls) <= 2 * len(roots)  # was 616


def test_files_are_looked_up_by_size_through_an_index_that_older_libraries_get_on_the_next_run(tmp_path):
    """The lookup by size (files_of_size) scanned the whole files table once per batch of new sizes: files.size had
    no index."""
    root = tmp_path / "media"
    root.mkdir()
    videos.write_solid(str(root / "red.mp4"), videos.RED)
    library = str(tmp_path / "lib")
    build_library([str(root)], library, ENCODER, workers=0, progress=False)
    db = f"{library}/catalog.sqlite"

    def plan():
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            query = "EXPLAIN QUERY PLAN SELECT path FROM files WHERE size IN (1, 2)"
            return " ".join(row[-1] for row in conn.execute(query))
        finally:
            conn.close()

    assert "files_by_size" in plan()
    conn = sqlite3.connect(db)
    conn.execute("DROP INDEX files_by_size")  # a library made before the index
    conn.close()
    with open_library(library) as reader:  # readers neither need nor add it
        assert len(reader) == 1
    assert "files_by_size" not in plan()
    videos.write_solid(str(root / "green.mp4"), videos.GREEN)
    assert build_library([str(root)], library, ENCODER, workers=0, progress=False).indexed == 1
    assert "files_by_size" in plan()
    with open_library(library) as reader:
        assert len(reader) == 2 and reader.search_vectors(query(videos.GREEN), k=1)[0][0].score > 0.99


class _HistogramOnGpu(ColorHistogramEncoder):
    """The colour histogram claiming a GPU: only the default decoder count reads ``device``."""
    device = "cuda:0"


def test_default_decoder_count_follows_the_encoders_device(tmp_path, monkeypatch):
    """A model on the CPU keeps at most 8 decoders (it needs the cores); one on a GPU gets all cores but one, up
    to 32, since decoding bounds that run (15 decoders indexed 1.33x faster than 8 on an H200 with 16 cores)."""
    cpus = (1, 2, 16, 64)
    assert [ingest_module.default_workers(ENCODER, cpus=c) for c in cpus] == [1, 1, 8, 8]
    assert [ingest_module.default_workers(_HistogramOnGpu(), cpus=c) for c in cpus] == [1, 1, 15, 32]
    started, real_pool = [], ingest_module.DecodePool

    def recording_pool(options, *, workers, **kwargs):
        started.append(workers)
        return real_pool(options, workers=1, **kwargs)  # the count is what is tested; one process does the work

    monkeypatch.setattr(ingest_module, "DecodePool", recording_pool)
    monkeypatch.setattr(ingest_module, "usable_cpus", lambda: 10)
    (tmp_path / "media").mkdir()
    videos.write_solid(str(tmp_path / "media" / "red.mp4"), videos.RED)
    for name, encoder in (("cpu", ENCODER), ("gpu", _HistogramOnGpu())):
        summary = build_library([str(tmp_path / "media")], str(tmp_path / name), encoder, progress=False)
        assert summary.indexed == 1
    assert started == [8, 9]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this system")
def test_the_default_counts_the_cpus_this_process_may_use():
    """A process pinned to one core (taskset, a container's cpuset) counts one CPU, not the machine's: on a
    large host the GPU default would otherwise start 32 decoders on a few cores."""
    code = ("import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
            "from index.ingest import usable_cpus, default_workers; from index.encoder import ColorHistogramEncoder; "
            "print(usable_cpus(), default_workers(ColorHistogramEncoder()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.split() == ["1", "1"]



def _cgroup_files(tmp_path, mounts: list[str], memberships: list[str], files: dict[str, str]):
    tmp_path.mkdir()
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "mountinfo").write_text("".join(line.replace("TMP", str(tmp_path)) + "\n" for line in mounts))
    (tmp_path / "cgroup").write_text("".join(line + "\n" for line in memberships))
    return str(tmp_path / "mountinfo"), str(tmp_path / "cgroup")


def test_a_cgroup_cpu_quota_counts_like_fewer_cpus(tmp_path, monkeypatch):
    """`docker run --cpus 4` or a Kubernetes CPU limit leaves every core in the affinity mask but grants four
    CPUs' worth of time: the default decoder count must see 4, from cgroup v2 or v1, from the process's own
    cgroup or one above it (the tightest wins), and nothing where no quota is set."""
    quota = ingest_module.cgroup_cpu_quota
    v2 = "31 23 0:28 / TMP/v2 rw,nosuid - cgroup2 cgroup2 rw,nsdelegate"
    # a container: its cgroup is the mount's root
    assert quota(*_cgroup_files(tmp_path / "a", [v2], ["0::/"], {"v2/cpu.max": "400000 100000\n"})) == 4.0
    # a service on a host: the parent's limit binds, the own cgroup has none
    files = {"v2/cpu.max": "max 100000\n", "v2/user.slice/cpu.max": "250000 100000\n",
             "v2/user.slice/app.scope/cpu.max": "max 100000\n"}
    assert quota(*_cgroup_files(tmp_path / "b", [v2], ["0::/user.slice/app.scope"], files)) == 2.5
    # cgroup v1 without a cgroup namespace: the mount shows the container's part of the hierarchy
    v1 = "32 31 0:29 /docker/abc TMP/cpu rw,relatime - cgroup cgroup rw,cpu,cpuacct"
    files = {"cpu/cpu.cfs_quota_us": "150000\n", "cpu/cpu.cfs_period_us": "100000\n"}
    assert quota(*_cgroup_files(tmp_path / "c", [v1, v2], ["4:cpu,cpuacct:/docker/abc", "0::/"], files)) == 1.5
    # no quota anywhere (v1 -1, v2 max), a cgroup outside the mount, no files at all
    files = {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n", "v2/cpu.max": "max 100000\n"}
    assert quota(*_cgroup_files(tmp_path / "d", [v1, v2], ["4:cpu,cpuacct:/docker/abc", "0::/"], files)) is None
    assert quota(*_cgroup_files(tmp_path / "e", [v1], ["4:cpu,cpuacct:/other"], {})) is None
    assert quota(str(tmp_path / "missing"), str(tmp_path / "missing")) is None
    # a mount point whose name has a space (written \040) or bytes that are not UTF-8 (a vfat stick's Latin-1)
    spaced = "33 31 0:30 / TMP/my\\040cgroup rw - cgroup2 cgroup2 rw"
    stick = "34 23 8:1 / /media/caf\xe9 rw - vfat /dev/sdb1 rw"
    mounts, memberships = _cgroup_files(tmp_path / "f", [stick, spaced], ["0::/"],
                                        {"my cgroup/cpu.max": "300000 100000\n"})
    with open(mounts, "rb") as f:
        raw = f.read().replace("caf\xe9".encode(), b"caf\xe9")
    with open(mounts, "wb") as f:
        f.write(raw)
    assert quota(mounts, memberships) == 3.0
    # a cgroup outside this namespace ("/../.."): the namespace root's limit is not this process's
    outside = _cgroup_files(tmp_path / "g", [v2], ["0::/../../system.slice/x"], {"v2/cpu.max": "200000 100000\n"})
    assert quota(*outside) is None
    # ... while a cgroup whose name starts with dots is inside it
    dotted = _cgroup_files(tmp_path / "h", [v2], ["0::/..foo"], {"v2/..foo/cpu.max": "200000 100000\n"})
    assert quota(*dotted) == 2.0

    monkeypatch.setattr(ingest_module, "cgroup_cpu_quota", lambda: 2.5)
    assert ingest_module.usable_cpus() == min(2, len(os.sched_getaffinity(0)))
    monkeypatch.setattr(ingest_module, "cgroup_cpu_quota", lambda: 0.5)
    assert ingest_module.usable_cpus() == 1


def test_an_ivf_is_retrained_once_the_library_has_doubled(tmp_path):
    """An IVF's lists were trained once (on nlist vectors for an explicit IVF<nlist>, at each new nlist for auto):
    a library grown by many small runs with new kinds of content put the new clips in lists drawn for the old,
    and recall fell (recall@10 0.41 for 10 eras of new topics, 50k clips). Retrained at each doubling now."""
    from index.decode import VideoInfo
    (tmp_path / "media").mkdir()
    library = str(tmp_path / "lib")
    build_library([str(tmp_path / "media")], library, ENCODER, workers=0, progress=False, factory="IVF256,Flat")
    rng = np.random.default_rng(0)
    info = VideoInfo(10.0, 20, 2.0, 32, 32, "h264", "pyav")
    trained, clips, queries, next_id = [], [], [], 0
    for era in range(8):  # each era brings topics unseen before: new cluster centres
        centres = rng.standard_normal((20, ENCODER.dim))
        for run in range(4):
            vectors = centres[rng.integers(0, 20, 200)] + 0.6 * rng.standard_normal((200, ENCODER.dim))
            vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
            files = [FileResult(f"/synthetic/{next_id + i}.mp4", 1, 1, f"fp{next_id + i}", "ok", None, info,
                                [(0.0, 2.0)], vectors[i:i + 1]) for i in range(200)]
            next_id += 200
            with LibraryWriter.open(library) as writer:
                writer.catalog.commit(files)
            state = sync_index(library)
            trained.append(state.trained_count)
            clips.append(state.count)
        queries.append(vectors[:5])
    # Trained when the IVF first fits (256 vectors: 400 clips), then at each doubling since.
    assert sorted(set(trained) - {0}) == [400, 800, 1600, 3200, 6400]  # 0: flat, before it fits
    assert all(count < 2 * t for t, count in zip(trained, clips) if t)
    assert_index_matches_catalog(library)
    catalog = Catalog.open(f"{library}/catalog.sqlite", read_only=True)
    ids, vectors = map(np.concatenate, zip(*catalog.iter_vectors()))
    catalog.close()
    with open_library(library) as reader:
        recalls = []
        for q in np.concatenate(queries):
            (hits,) = reader.search_vectors(q[None], k=10)
            exact = set(ids[np.argsort(-(vectors @ q))[:10]].tolist())
            recalls.append(len({h.clip_id for h in hits} & exact) / 10)
    assert np.mean(recalls) >= 0.95, np.mean(recalls)  # 0.80 with the lists trained on the first 400 clips


def test_a_stride_for_a_one_clip_per_video_library_says_it_does_not_apply(tmp_path):
    """A library of one clip per video records the default stride beside window=inf; --stride 3 on it was refused as
    "uses stride=5.0", a setting the library never had."""
    root = tmp_path / "media"
    root.mkdir()
    videos.write_solid(str(root / "red.mp4"), videos.RED)
    library = str(tmp_path / "lib")
    build_library([str(root)], library, ENCODER, workers=0, progress=False, window=float("inf"))
    library_re = re.escape(library)
    with pytest.raises(VmmError, match=rf"^library {library_re} holds one clip per video \(--window 0\), where a "
                                       r"stride does not apply; drop --stride, or index into a new folder$"):
        build_library([str(root)], library, ENCODER, workers=0, progress=False, stride=3.0)
    assert build_library([str(root)], library, ENCODER, workers=0, progress=False).unchanged == 1
