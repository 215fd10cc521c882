"""The decoder pool and the ingestion pipeline when decoders crash or decoder workers cannot start.

The decoder workers import this module to run its hooks (``worker_hook="tests.test_index_pool_review:..."``), so
it imports nothing heavy at module level.
"""
import errno
import os
import signal
import subprocess
import time

import pytest

from index import pool as pool_module
from index.encoder import ColorHistogramEncoder
from index.ingest import build_library
from index.reader import open_library
from tests import videos
from vmm.errors import VmmError

ENCODER = ColorHistogramEncoder()

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def crash_on_crash_files(path: str, backend: str) -> None:
    """Worker hook: a segmentation fault for files named *crash*, as decord has on some damaged files."""
    if "crash" in os.path.basename(path):
        os.kill(os.getpid(), signal.SIGSEGV)


def killed_on_oom_files(path: str, backend: str) -> None:
    """Worker hook: SIGKILL for files named *oom*, as the kernel's out-of-memory killer sends it."""
    if "oom" in os.path.basename(path):
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_decoder_killed_by_sigkill_is_reported_as_killed_not_as_a_crash_of_the_file(tmp_path):
    # "the decoder crashed (worker exit code -9)" blamed the file for what is mostly the out-of-memory killer.
    media = tmp_path / "media"
    media.mkdir()
    videos.write_solid(str(media / "oom.mp4"), videos.RED, 1.0)
    videos.write_solid(str(media / "good.mp4"), videos.GREEN, 1.0)
    summary = build_library([str(media)], str(tmp_path / "lib"), ENCODER, workers=2, progress=False,
                            worker_hook="tests.test_index_pool_review:killed_on_oom_files")
    assert summary.indexed == 1
    assert summary.failures == [(str(media / "oom.mp4"),
                                 "the decoder was killed by SIGKILL (out of memory? fewer workers need less memory)")]


def test_files_that_crash_the_decoder_fail_alone_and_the_run_goes_on(tmp_path):
    # Each crashing file kills two workers (decord, then the PyAV retry): two such files in a row ended the whole
    # run with "RuntimeError: decoder pool failed: decoder worker processes die before finishing any file".
    media = tmp_path / "media"
    media.mkdir()
    for name in ("crash-a", "crash-b", "crash-c"):
        videos.write_solid(str(media / f"{name}.mp4"), videos.RED, 1.0)
    for name in ("good-a", "good-b"):
        videos.write_solid(str(media / f"{name}.mp4"), videos.GREEN, 1.0)
    library = tmp_path / "lib"
    summary = build_library([str(media)], str(library), ENCODER, workers=1, progress=False,
                            worker_hook="tests.test_index_pool_review:crash_on_crash_files")
    assert (summary.indexed, summary.failed) == (2, 3)
    assert sorted(summary.failures) == [(str(media / f"{name}.mp4"), "the decoder crashed (SIGSEGV)")
                                        for name in ("crash-a", "crash-b", "crash-c")]
    with open_library(str(library)) as reader:
        assert sorted(os.path.basename(r.path) for r in reader.files.values() if r.status == "ok") == [
            "good-a.mp4", "good-b.mp4"]
        assert len(reader) == 2


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_that_cannot_start_end_the_run_in_one_line_and_blame_no_file(tmp_path, monkeypatch, workers):
    # A worker interpreter that exits before decoding anything (a broken environment) is the run's problem, not
    # the files': said once as a VmmError (one line from `vmm index`), where it was a RuntimeError's traceback,
    # and with one worker the first file was recorded as failed ("the decoder crashed") and skipped by later runs.
    media = tmp_path / "media"
    media.mkdir()
    for k in range(3):
        videos.write_solid(str(media / f"{k}.mp4"), videos.BLUE, 1.0)
    monkeypatch.setattr(pool_module, "_BOOTSTRAP", "import os; os._exit(3)")
    started = time.monotonic()
    with pytest.raises(VmmError, match=r"^decoder worker processes exit before decoding anything \(exit code 3, 3 in "
                                       r"a row\); run with workers=0 \(--workers 0\) to decode in this "
                                       r"process and see why$"):
        build_library([str(media)], str(tmp_path / "lib"), ENCODER, workers=workers, progress=False)
    assert time.monotonic() - started < 20
    with open_library(str(tmp_path / "lib")) as reader:
        assert not reader.files

    monkeypatch.undo()  # workers start again: every file is indexed, none was left marked failed
    summary = build_library([str(media)], str(tmp_path / "lib"), ENCODER, workers=workers, progress=False)
    assert (summary.indexed, summary.failed, summary.skipped_failed) == (3, 0, 0)



def refuse_processes_after(monkeypatch, started: int) -> None:
    """Let ``started`` decoder processes start, then fail as fork does at a process limit (EAGAIN)."""
    popen = subprocess.Popen
    calls = []

    def limited(*args, **kwargs):
        calls.append(args)
        if len(calls) > started:
            raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        return popen(*args, **kwargs)
    monkeypatch.setattr(pool_module.subprocess, "Popen", limited)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_limit_on_processes_leaves_the_run_to_the_workers_that_started(tmp_path, monkeypatch):
    # The traceback of "RuntimeError: decoder pool failed: [Errno 11] Resource temporarily unavailable" (or
    # "[Errno 24] Too many open files" under a low `ulimit -n`) ended the run when a fourth worker could not start.
    media = tmp_path / "media"
    media.mkdir()
    for k in range(6):
        videos.write_solid(str(media / f"{k}.mp4"), videos.GREEN, 1.0)
    refuse_processes_after(monkeypatch, 3)
    before = open_fds()
    summary = build_library([str(media)], str(tmp_path / "lib"), ENCODER, workers=5, progress=False)
    assert (summary.indexed, summary.failed) == (6, 0)
    assert open_fds() == before  # the failed start left no pipe open

    refuse_processes_after(monkeypatch, 0)
    videos.write_solid(str(media / "new.mp4"), videos.RED, 1.0)
    with pytest.raises(VmmError, match=r"^cannot start a decoder worker process \(Resource temporarily "
                                       r"unavailable\); raise the limit on processes or open files \(ulimit -u, "
                                       r"ulimit -n\), or run with workers=0 \(--workers 0\) to decode in this "
                                       r"process$"):
        build_library([str(media)], str(tmp_path / "lib"), ENCODER, workers=2, progress=False)
    assert open_fds() == before


class _Stamps:
    """Stands for a worker's shared stamp: records every value the decoding step writes."""

    def __init__(self):
        self.values = []

    @property
    def value(self):
        return self.values[-1] if self.values else 0.0

    @value.setter
    def value(self, stamp):
        self.values.append(stamp)


def test_a_long_step_keeps_restarting_the_watchdog_clock(tmp_path):
    """One clip of a whole 40 s video (window 0) decoded with PyAV is one step: its stamp was set once at its
    start, so a large file on slow storage outlasted the timeout and was killed as hung for being long."""
    from index.decode import DecodeOptions

    path = videos.write_long(str(tmp_path / "long.mp4"), seconds=40.0)  # 160 frames
    stamps = _Stamps()
    events = pool_module._task_events(0, path, DecodeOptions(window=float("inf"), backend="pyav"), None, stamps)
    assert [event[0] for event in events] == ["start", "clip", "done"]
    started = [v for v in stamps.values if v > 0]
    # every packet counted before the start (160), then every frame decoded up to the clip's last sampled one
    assert len(started) >= 160 + 140
    assert started == sorted(started)



def queued_frame_bytes(pool) -> int:
    return sum(event[2].frames.nbytes for event in list(pool._out.queue) if event[0] == "clip")


def test_decoded_frames_waiting_for_the_encoder_are_bounded_in_bytes(tmp_path):
    # Frames travel at full size and only a count of clips bounded the queue: 32 clips of 4K video waited as 6.4 GB
    # (25 GB at 8K) while a slow model embedded a batch.
    from index.decode import DecodeOptions

    paths = [videos.write_frames(str(tmp_path / f"{k}.mp4"), videos.moving_square_frames(40, 320, 240))
             for k in range(2)]  # 4 s each: 4 clips of 8 frames of 320x240, 1.8 MB a clip
    clip_bytes = 8 * 240 * 320 * 3
    with pool_module.DecodePool(DecodeOptions(window=1.0, stride=1.0), workers=2, prefetch=32,
                                prefetch_bytes=2 * clip_bytes) as pool:
        for key, path in enumerate(paths):
            pool.submit(key, path)
        deadline = time.monotonic() + 20
        while queued_frame_bytes(pool) < 2 * clip_bytes and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # the decoders had 6 more clips to send meanwhile, unconsumed
        assert queued_frame_bytes(pool) == 2 * clip_bytes
        events = []
        while pool.pending():
            events.append(pool.get(timeout=10))
    assert sorted((key, kind) for kind, key, _ in events if kind != "clip") == [
        (0, "done"), (0, "start"), (1, "done"), (1, "start")]
    assert sum(kind == "clip" for kind, _, _ in events) == 8


def test_get_with_no_wait_takes_an_event_that_is_already_there(tmp_path):
    from index.decode import DecodeOptions

    red = videos.write_solid(str(tmp_path / "red.mp4"), videos.RED, 1.0)
    with pool_module.DecodePool(DecodeOptions(), workers=1) as pool:
        pool.submit(0, red)
        deadline = time.monotonic() + 20
        while pool._out.empty() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pool.get(timeout=0)[0] == "start"  # was None: a zero timeout never looked at the queue


@pytest.mark.parametrize("limits, message", [
    ({"workers": -1}, r"^workers must be a whole number >= 0 \(0 decodes in this process\), got -1$"),  # get() hung
    ({"workers": 1.5}, r"^workers must be a whole number >= 0 \(0 decodes in this process\), got 1.5$"),
    ({"timeout": 0}, r"^timeout must be a number of seconds > 0, got 0$"),  # every file failed as timed out
    ({"timeout": "60"}, r"^timeout must be a number of seconds > 0, got '60'$"),
])
def test_a_pool_that_could_finish_nothing_is_refused_in_one_line(limits, message):
    from index.decode import DecodeOptions

    with pytest.raises(VmmError, match=message):
        pool_module.DecodePool(DecodeOptions(), **limits)


def swap_in_replacement(path: str, backend: str) -> None:
    """Worker hook: a file of the same name in $VMM_TEST_REPLACEMENTS is moved over ``path`` before it is decoded,
    as a copy overwrites a file after a run listed it."""
    replacement = os.path.join(os.environ["VMM_TEST_REPLACEMENTS"], os.path.basename(path))
    if os.path.exists(replacement):
        os.replace(replacement, path)


def on_disk(path: str) -> tuple[int, int, str]:
    from index.discovery import fingerprint_file

    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, fingerprint_file(path)


def stored_row(library) -> tuple[int, int, str]:
    with open_library(str(library)) as reader:
        [row] = reader.files.values()
    return row.size, row.mtime_ns, row.fingerprint


def stored_vectors(library) -> list:
    from index.catalog import Catalog

    catalog = Catalog.open(str(library / "catalog.sqlite"), read_only=True)
    try:
        return [vector for _, vector in catalog.iter_vectors()]
    finally:
        catalog.close()


@pytest.mark.parametrize("workers", [0, 1])
def test_a_file_replaced_after_discovery_is_stored_with_the_size_and_mtime_of_what_was_decoded(tmp_path, monkeypatch,
                                                                                                workers):
    # The size and mtime came from discovery and the fingerprint and clips from the decoder: a file replaced in
    # between was stored with the old size and mtime beside the new content's vectors, and once the old file was
    # put back with its mtime (cp -p, rsync -t, touch -r) the run took the stale vectors as current.
    media, replacements = tmp_path / "media", tmp_path / "replacements"
    media.mkdir()
    replacements.mkdir()
    monkeypatch.setenv("VMM_TEST_REPLACEMENTS", str(replacements))
    clip = videos.write_solid(str(media / "clip.mp4"), videos.RED, 1.0)
    original, before = open(clip, "rb").read(), os.stat(clip)
    videos.write_solid(str(replacements / "clip.mp4"), videos.GREEN, 2.0)
    library = tmp_path / "lib"
    summary = build_library([str(media)], str(library), ENCODER, workers=workers, progress=False,
                            worker_hook="tests.test_index_pool_review:swap_in_replacement")
    assert (summary.indexed, summary.failed) == (1, 0)
    assert stored_row(library) == on_disk(clip)

    with open(clip, "wb") as f:
        f.write(original)
    os.utime(clip, ns=(before.st_atime_ns, before.st_mtime_ns))
    summary = build_library([str(media)], str(library), ENCODER, workers=workers, progress=False)
    assert (summary.indexed, summary.unchanged) == (1, 0)
    build_library([str(media)], str(tmp_path / "fresh"), ENCODER, workers=0, progress=False)
    assert len(stored_vectors(library)) == 1
    assert (stored_vectors(library)[0] == stored_vectors(tmp_path / "fresh")[0]).all()


def change_while_decoding(times: int, monkeypatch):
    """Make the next ``times`` decodings of a file see it replaced by a longer green video after their first
    event, as a copy still in progress does."""
    real = pool_module.iter_decode
    changes = []

    def decoding_a_changing_file(path, options, progress):
        for number, event in enumerate(real(path, options, progress)):
            yield event
            if number == 0 and len(changes) < times:
                changes.append(path)
                replacement = videos.write_solid(path + ".part", videos.GREEN, 2.0 + len(changes))
                os.replace(replacement, path)
    monkeypatch.setattr(pool_module, "iter_decode", decoding_a_changing_file)
    return changes


def test_a_file_changed_while_it_is_decoded_is_decoded_again(tmp_path, monkeypatch):
    media = tmp_path / "media"
    media.mkdir()
    clip = videos.write_solid(str(media / "clip.mp4"), videos.RED, 1.0)
    changes = change_while_decoding(1, monkeypatch)
    summary = build_library([str(media)], str(tmp_path / "lib"), ENCODER, workers=0, progress=False)
    assert (summary.indexed, summary.failed, len(changes)) == (1, 0, 1)
    assert stored_row(tmp_path / "lib") == on_disk(clip)
    monkeypatch.undo()
    build_library([str(media)], str(tmp_path / "fresh"), ENCODER, workers=0, progress=False)
    assert [v.tolist() for v in stored_vectors(tmp_path / "lib")] == [v.tolist() for v in
                                                                      stored_vectors(tmp_path / "fresh")]


def test_a_file_that_keeps_changing_while_decoded_fails_and_is_read_again_once_complete(tmp_path, monkeypatch):
    media = tmp_path / "media"
    media.mkdir()
    clip = videos.write_solid(str(media / "clip.mp4"), videos.RED, 1.0)
    change_while_decoding(3, monkeypatch)
    summary = build_library([str(media)], str(tmp_path / "lib"), ENCODER, workers=0, progress=False)
    assert summary.failures == [(clip, "the file changed while it was decoded, 3 times (still being copied or "
                                       "written?); index it again once it is complete")]
    monkeypatch.undo()
    videos.write_solid(clip, videos.BLUE, 1.0)  # the copy completes
    summary = build_library([str(media)], str(tmp_path / "lib"), ENCODER, workers=0, progress=False)
    assert (summary.indexed, summary.failed, summary.skipped_failed) == (1, 0, 0)


def test_a_file_whose_copy_completes_while_its_partial_content_fails_to_decode_is_decoded_again(tmp_path,
                                                                                             monkeypatch):
    # Half an MP4 has no index (it comes last) and failed as "no video stream in the container", though the file
    # was whole by then: only a file that changed after decoding succeeded was read again.
    media = tmp_path / "media"
    media.mkdir()
    whole = open(videos.write_solid(str(tmp_path / "whole.mp4"), videos.RED, 1.0), "rb").read()
    clip = media / "clip.mp4"
    clip.write_bytes(whole[:len(whole) // 2])
    real = pool_module.iter_decode

    def the_copy_completes_while_decoding(path, options, progress):
        try:
            yield from real(path, options, progress)
        finally:
            if os.path.getsize(path) < len(whole):
                with open(path, "r+b") as f:
                    f.seek(len(whole) // 2)
                    f.write(whole[len(whole) // 2:])
    monkeypatch.setattr(pool_module, "iter_decode", the_copy_completes_while_decoding)
    summary = build_library([str(media)], str(tmp_path / "lib"), ENCODER, workers=0, progress=False)
    assert (summary.indexed, summary.failures) == (1, [])
    assert stored_row(tmp_path / "lib") == on_disk(str(clip))

def test_a_file_changed_after_discovery_is_not_taken_as_touched_with_the_stat_discovery_saw(tmp_path, monkeypatch):
    # A file edited (B) and then put back (A) between discovery and planning: its fingerprint matched the library's
    # (A) and the row took B's size and mtime, so B restored with them later (cp -p) kept A's vectors.
    from index import ingest

    media = tmp_path / "media"
    media.mkdir()
    clip = videos.write_solid(str(media / "clip.mp4"), videos.RED, 1.0)
    library = tmp_path / "lib"
    build_library([str(media)], str(library), ENCODER, workers=0, progress=False)
    original = open(clip, "rb").read()
    videos.write_solid(clip, videos.GREEN, 2.0)
    videos.set_mtime_later(clip)
    edited, edited_stat = open(clip, "rb").read(), os.stat(clip)
    real_discover = ingest.discover

    def discover_then_undo_the_edit(*args, **kwargs):
        found = real_discover(*args, **kwargs)
        with open(clip, "wb") as f:
            f.write(original)
        videos.set_mtime_later(clip, 20.0)
        return found
    monkeypatch.setattr(ingest, "discover", discover_then_undo_the_edit)
    build_library([str(media)], str(library), ENCODER, workers=0, progress=False)
    monkeypatch.undo()
    assert stored_row(library) == on_disk(clip)

    with open(clip, "wb") as f:
        f.write(edited)
    os.utime(clip, ns=(edited_stat.st_atime_ns, edited_stat.st_mtime_ns))
    assert build_library([str(media)], str(library), ENCODER, workers=0, progress=False).indexed == 1
    build_library([str(media)], str(tmp_path / "fresh"), ENCODER, workers=0, progress=False)
    assert [v.tolist() for v in stored_vectors(library)] == [v.tolist() for v in stored_vectors(tmp_path / "fresh")]
