"""build_library_distributed: real rank processes (gloo or file barriers) give the library one process gives.

The rank processes are plain ``python -c`` children with RANK / WORLD_SIZE /
MASTER_ADDR / MASTER_PORT set, as ``accelerate launch`` or ``torchrun`` would set them.
"""
import doctest
import errno
import json
import math
import os
import re
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from tests import videos
from vmm.training.launch import reserved_port
from index import distributed
from index.distributed import assign_shards, build_library_distributed, launch_info
from index.encoder import ColorHistogramEncoder
from index.ingest import build_library
from index.library import read_state
from index.reader import open_library
from vmm.errors import VmmError

pytestmark = pytest.mark.usefixtures("one_faiss_thread")

REPO = Path(__file__).resolve().parents[1]

RANK_SCRIPT = """
import json, os, sys
sys.path[:0] = {paths!r}
{prelude}
from index.distributed import build_library_distributed
from index.encoder import ColorHistogramEncoder
summary = build_library_distributed([{root!r}], {library!r}, ColorHistogramEncoder(), workers=1, batch_size=2,
                                    commit_seconds=0.0, progress=False, worker_hook={hook!r})
{postlude}
print("SUMMARY " + json.dumps(None if summary is None else summary.to_json()), flush=True)
"""

# The caller made the process group (as accelerate's Accelerator() does); it must still work afterwards.
CALLER_GROUP = "import torch.distributed as dist; dist.init_process_group('gloo')"
CALLER_GROUP_STILL_WORKS = "dist.barrier(); assert dist.is_initialized(); dist.destroy_process_group()"

# Rank 0 SIGKILLs itself in the middle of the merge: inside the transaction of the second merged file.
KILL_IN_MERGE = """
import os, signal
import index.catalog, index.distributed
index.distributed._MERGE_MAX_CLIPS = 1  # one file per merge transaction
_write = index.catalog.Catalog._write_result
_seen = []
def _write_then_die(self, result, generation):
    if result.status == "ok":
        _seen.append(result.path)
        if len(_seen) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    return _write(self, result, generation)
index.catalog.Catalog._write_result = _write_then_die
"""


def make_media(root: Path) -> None:
    root.mkdir()
    colors = [videos.RED, videos.GREEN, videos.BLUE, videos.YELLOW, videos.WHITE, (130, 60, 200)]
    for i, color in enumerate(colors):  # distinct colours: no two clips score the same
        videos.write_solid(str(root / f"solid{i}.mp4"), color, seconds=1.0 + 0.3 * i)
    videos.write_moving_square(str(root / "square.webm"), codec="vp9")
    videos.write_long(str(root / "long.mp4"), seconds=30.0)
    videos.write_text(str(root / "broken.mp4"))


def start_ranks(root: Path, library: Path, *, world: int = 2, torch_group: bool = True, run_id: str = "",
                prelude: dict | None = None, hook: dict | None = None,
                postlude: dict | None = None) -> list[subprocess.Popen]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER_ADDR", "MASTER_PORT", "VMM_RUN_ID", "SLURM_JOB_ID")}
    env.update(WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
    held = reserved_port()
    if torch_group:
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(held.getsockname()[1]))
    else:
        env["VMM_RUN_ID"] = run_id
    procs = []
    with held:  # the ranks inherit it: the port stays theirs until they end
        for rank in range(world):
            script = RANK_SCRIPT.format(paths=[str(REPO), str(REPO / "tests")], root=str(root), library=str(library),
                                        prelude=(prelude or {}).get(rank, ""), hook=(hook or {}).get(rank),
                                        postlude=(postlude or {}).get(rank, ""))
            procs.append(subprocess.Popen([sys.executable, "-c", script], cwd=str(REPO), text=True,
                                          env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(held.fileno(),)))
    return procs


# Ranks end by themselves in seconds; this only catches a hang. 30 s ran out on a busy 2-core machine for ranks
# that had already printed their last line.
HANG_S = 300


def finish(procs: list[subprocess.Popen], timeout: float = HANG_S) -> list[tuple[int, str, str]]:
    outcomes = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
        outcomes.append((proc.returncode, out, err))
    return outcomes


def kill_once_staged(procs: list[subprocess.Popen], library: Path, victim: int) -> None:
    deadline = time.monotonic() + HANG_S
    while staged_batches(library, victim) < 1 and procs[victim].poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    procs[victim].send_signal(signal.SIGKILL)


def run_ranks(root: Path, library: Path, **kwargs) -> list[dict]:
    """Run all ranks to success; returns each rank's summary."""
    summaries = []
    for rank, (code, out, err) in enumerate(finish(start_ranks(root, library, **kwargs))):
        assert code == 0, f"rank {rank} failed:\n{err}"
        summaries.append(json.loads(out.split("SUMMARY ", 1)[1]))
    return summaries


def contents(library: Path) -> dict:
    conn = sqlite3.connect(f"file:{library}/catalog.sqlite?mode=ro", uri=True)
    rows = conn.execute("SELECT f.path, c.start_sec, c.end_sec, c.vector FROM clips c JOIN files f ON f.id = c.file_id"
                        ).fetchall()
    files = conn.execute("SELECT path, size, mtime_ns, status, error, fingerprint, fps, num_frames, duration, width, "
                         "height, codec, backend FROM files").fetchall()
    conn.close()
    found = {(p, s, e): v for p, s, e, v in rows}
    assert len(found) == len(rows), "duplicate clips"
    return {"clips": found, "files": sorted(files)}


def assert_same_library(library: Path, reference: Path) -> None:
    """Same files, same (path, start, end) -> vector bytes, FAISS = catalog, same search answers."""
    assert contents(library) == contents(reference)
    state = read_state(str(library))
    index = faiss.read_index(str(library / state.file))
    conn = sqlite3.connect(str(library / "catalog.sqlite"))
    ids = sorted(r[0] for r in conn.execute("SELECT id FROM clips"))
    conn.close()
    assert sorted(faiss.vector_to_array(faiss.downcast_index(index).id_map).tolist()) == ids
    queries = np.random.default_rng(0).standard_normal((6, ColorHistogramEncoder().dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    answers = []
    for lib in (library, reference):
        with open_library(str(lib)) as reader:
            answers.append([[(h.path, h.start, h.end, h.score) for h in hits]
                            for hits in reader.search_vectors(queries, k=len(reader))])
    for mine, theirs in zip(*answers):
        assert [hit[3] for hit in mine] == [hit[3] for hit in theirs]  # the same ranking scores, bit for bit
        # Clips with equal vectors (a red video and a red window of long.mp4) are ordered by clip id,
        # which may differ between the libraries.
        assert sorted(mine, key=lambda h: (-h[3], h)) == sorted(theirs, key=lambda h: (-h[3], h))
    assert not (library / ".staging").exists()


def assert_whole_files_of(partial: dict, reference: dict) -> None:
    """Every clip present is the reference's, and a file present has all of its clips."""
    for key, vector in partial["clips"].items():
        assert reference["clips"][key] == vector
    present = {path for path, _, _ in partial["clips"]}
    assert all(key in partial["clips"] for key in reference["clips"] if key[0] in present)


def staged_batches(library: Path, rank: int) -> int:
    return len(list((library / ".staging").glob(f"*/rank-{rank:05d}/batch-*.json")))




# -- two real processes --------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_ranks_give_the_single_process_library(tmp_path):
    root = tmp_path / "media"
    make_media(root)
    reference = tmp_path / "reference"
    expected = build_library([str(root)], str(reference), ColorHistogramEncoder(), workers=0, progress=False)

    library = tmp_path / "library"
    first, second = run_ranks(root, library)  # torch.distributed gloo barriers
    assert second is None  # rank 0 returns the summary, after the merge; the others None
    assert (first["indexed"], first["clips"], first["failed"]) == (expected.indexed, expected.clips, 1)
    assert first["world_size"] == 2 and [r["files"] for r in first["ranks"]] == [4, 4]  # both ranks worked
    assert_same_library(library, reference)

    # An incremental run with file barriers (no process group): a file removed, one rewritten, two added.
    (root / "solid0.mp4").unlink()
    videos.write_moving_square(str(root / "solid1.mp4"), seconds=1.5)
    videos.set_mtime_later(str(root / "solid1.mp4"))
    videos.write_solid(str(root / "new_red.mp4"), videos.RED, seconds=3.0)
    videos.write_long(str(root / "new_long.mp4"), seconds=22.0)
    expected = build_library([str(root)], str(reference), ColorHistogramEncoder(), workers=0, progress=False)
    summary, _ = run_ranks(root, library, torch_group=False, run_id="incremental-1")
    assert (summary["indexed"], summary["removed"], summary["unchanged"]) == (3, 1, 6)
    assert (summary["indexed"], summary["removed"], summary["unchanged"]) == (
        expected.indexed, expected.removed, expected.unchanged)
    assert_same_library(library, reference)

    summary, _ = run_ranks(root, library, torch_group=False, run_id="incremental-2")
    assert (summary["indexed"], summary["unchanged"], summary["skipped_failed"]) == (0, 9, 1)

    # Inside a process group the caller made: a gloo subgroup of our own, the caller's group left working.
    videos.write_solid(str(root / "late.mp4"), (90, 160, 200), seconds=1.5)
    expected = build_library([str(root)], str(reference), ColorHistogramEncoder(), workers=0, progress=False)
    summary, _ = run_ranks(root, library, prelude={0: CALLER_GROUP, 1: CALLER_GROUP},
                           postlude={0: CALLER_GROUP_STILL_WORKS, 1: CALLER_GROUP_STILL_WORKS})
    assert (summary["indexed"], summary["unchanged"]) == (expected.indexed, expected.unchanged) == (1, 9)
    assert_same_library(library, reference)


@pytest.mark.slow
def test_killed_rank_and_killed_merge_then_rerun(tmp_path):
    root = tmp_path / "media"
    make_media(root)
    reference = tmp_path / "reference"
    build_library([str(root)], str(reference), ColorHistogramEncoder(), workers=0, progress=False)
    library = tmp_path / "library"

    # 1) SIGKILL rank 1 once it has staged a file; rank 0 notices, merges what is staged, and fails.
    procs = start_ranks(root, library, hook={1: "tests.videos:slow_decode"})
    kill_once_staged(procs, library, 1)
    (code0, _, err0), (code1, _, _) = finish(procs)
    assert code1 == -signal.SIGKILL
    assert code0 != 0 and "did not finish" in err0 and "run the same command again" in err0
    partial = contents(library)
    assert 0 < len(partial["clips"]) < len(contents(reference)["clips"])
    assert_whole_files_of(partial, contents(reference))

    # 2) Re-run, but rank 0 dies inside a merge transaction; rank 1 then fails too.
    procs = start_ranks(root, library, prelude={0: KILL_IN_MERGE})
    (code0, _, _), (code1, _, err1) = finish(procs)
    assert code0 == -signal.SIGKILL and code1 != 0 and "lost contact" in err1
    merged = contents(library)
    assert len(merged["files"]) == len(partial["files"]) + 1  # the first merged file committed, the second not
    assert_whole_files_of(merged, contents(reference))
    assert staged_batches(library, 0) + staged_batches(library, 1) >= 1  # staged work survived

    # 3) Re-run to the end: staged files are merged without embedding them again.
    summary, _ = run_ranks(root, library)
    assert summary["reused"] >= 1
    assert_same_library(library, reference)


# Heartbeats every 0.1 s, a rank silent for 2 s is dead: the real values (5 s, 120 s) would make the test slow.
FAST_HEARTBEAT = "import index.distributed as d; d._HEARTBEAT_S = 0.1; d._SILENCE_S = 2.0"


@pytest.mark.slow
def test_file_barriers_give_up_on_a_killed_rank_then_rerun(tmp_path):
    """With file barriers no connection breaks when a rank dies: the others waited barrier_timeout, 24 h."""
    root = tmp_path / "media"
    root.mkdir()
    for i, color in enumerate([videos.RED, videos.GREEN, videos.BLUE, videos.YELLOW, videos.WHITE, (130, 60, 200)]):
        videos.write_solid(str(root / f"c{i}.mp4"), color, seconds=1.0 + 0.3 * i)
    reference = tmp_path / "reference"
    build_library([str(root)], str(reference), ColorHistogramEncoder(), workers=0, progress=False)
    library = tmp_path / "library"
    fast = {0: FAST_HEARTBEAT, 1: FAST_HEARTBEAT}

    # Rank 1 killed while rank 0 still stages: rank 0 merges what is staged and fails.
    procs = start_ranks(root, library, torch_group=False, run_id="killed-1", prelude=fast,
                        hook={0: "tests.videos:slow_decode"})
    kill_once_staged(procs, library, 1)
    (code0, _, err0), (code1, _, _) = finish(procs)
    assert code1 == -signal.SIGKILL
    assert code0 != 0 and "rank 1 did not finish its shard" in err0
    partial = contents(library)
    assert_whole_files_of(partial, contents(reference))

    # Rank 0 killed while rank 1 waits for it at the barrier: rank 1 gives up.
    procs = start_ranks(root, library, torch_group=False, run_id="killed-2", prelude=fast,
                        hook={1: "tests.videos:slow_decode"})
    while not (library / ".staging" / "killed-2" / "rank-00001" / "done.json").exists() and procs[1].poll() is None:
        time.sleep(0.02)
    procs[0].send_signal(signal.SIGKILL)
    (code0, _, _), (code1, _, err1) = finish(procs)
    assert code0 == -signal.SIGKILL
    assert code1 != 0 and "lost contact with the other ranks (rank 0 gave no sign of life for 2 s" in err1
    assert_whole_files_of(contents(library), contents(reference))

    # How much the two failed runs merged or left staged depends on timing; the rerun completes the library
    # either way, and leaves no staging behind.
    summary, second = run_ranks(root, library, torch_group=False, run_id="killed-3", prelude=fast)
    assert second is None and summary["failed"] == 0 and summary["indexed"] + summary["unchanged"] == 6, summary
    assert not (library / ".staging").exists()
    assert_same_library(library, reference)


# -- in-process checks (threads as ranks, file barriers) ---------------------------------------------------
def run_threads(root: Path, library: Path, encoders: list, run_id: str, rank_options: dict | None = None,
                **options) -> list:
    """Run ranks as threads; returns each rank's summary or the exception it raised. ``rank_options``: rank ->
    options of that rank alone."""
    results = [None] * len(encoders)

    def rank_main(rank):
        mine = {"workers": 0, **options, **(rank_options or {}).get(rank, {})}
        try:
            results[rank] = build_library_distributed(
                [str(root)], str(library), encoders[rank], rank=rank, world_size=len(encoders),
                coordination="files", run_id=run_id, progress=False, barrier_timeout=60, **mine)
        except Exception as error:  # noqa: BLE001 - the test inspects it
            results[rank] = error

    threads = [threading.Thread(target=rank_main, args=(rank,)) for rank in range(len(encoders))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    return results


def test_three_thread_ranks_equal_one_process(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    for i, color in enumerate([videos.RED, videos.GREEN, videos.BLUE, videos.YELLOW]):
        videos.write_solid(str(root / f"c{i}.mp4"), color, seconds=1.0 + i)
    reference = tmp_path / "reference"
    build_library([str(root)], str(reference), ColorHistogramEncoder(), workers=0, progress=False)
    results = run_threads(root, tmp_path / "lib", [ColorHistogramEncoder() for _ in range(3)], "threads")
    assert results[1:] == [None, None], results
    assert results[0].indexed == 4 and sum(r["files"] for r in results[0].ranks) == 4
    assert_same_library(tmp_path / "lib", reference)


def test_a_merge_of_more_batches_than_open_files_allowed_merges_every_file(tmp_path, monkeypatch):
    """Every staged vector file stayed mapped, each holding a file descriptor: past `ulimit -n` (often 1024) the merge
    took the later batches as damaged, left their files out and still called the run complete."""
    root = tmp_path / "media"
    root.mkdir()
    for i in range(60):
        videos.write_solid(str(root / f"c{i:02d}.mp4"), ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256), seconds=0.5)
    monkeypatch.setattr(distributed, "_MAPPED_BATCHES", 4, raising=False)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 40, hard))
    try:  # batch_size=1, commit_seconds=0: a batch per file, 30 per rank
        results = run_threads(root, tmp_path / "lib", [ColorHistogramEncoder(), ColorHistogramEncoder()], "batches",
                              batch_size=1, commit_seconds=0.0)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert results[1] is None and (results[0].indexed, results[0].failed) == (60, 0), results
    with open_library(str(tmp_path / "lib")) as reader:
        assert len(reader.files) == len(reader) == 60


def test_files_replaced_after_planning_are_merged_as_the_ranks_decoded_them(tmp_path, monkeypatch):
    # The plan's size and mtime went into the library beside the vectors of what the ranks decoded; once the
    # record carried those of the decoded file, the merge dropped it, as staged for another size and mtime.
    root, replacements = tmp_path / "media", tmp_path / "replacements"
    root.mkdir()
    replacements.mkdir()
    monkeypatch.setenv("VMM_TEST_REPLACEMENTS", str(replacements))
    for i, color in enumerate([videos.RED, videos.GREEN, videos.BLUE, videos.YELLOW]):
        videos.write_solid(str(root / f"c{i}.mp4"), color, seconds=1.0)
    for i in (1, 2):  # one on each rank
        videos.write_solid(str(replacements / f"c{i}.mp4"), videos.WHITE, seconds=2.0 + i)
    encoders = [ColorHistogramEncoder() for _ in range(2)]
    results = run_threads(root, tmp_path / "lib", encoders, "replaced",
                          worker_hook="tests.test_index_pool_review:swap_in_replacement")
    assert results[1] is None and (results[0].indexed, results[0].failed) == (4, 0), results
    assert sorted(os.listdir(replacements)) == []
    build_library([str(root)], str(tmp_path / "reference"), ColorHistogramEncoder(), workers=0, progress=False)
    assert_same_library(tmp_path / "lib", tmp_path / "reference")


def test_a_rank_with_another_model_fails_every_rank_and_keeps_finished_files(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    for i, color in enumerate([videos.RED, videos.GREEN, videos.BLUE, videos.YELLOW]):
        videos.write_solid(str(root / f"c{i}.mp4"), color)
    library = tmp_path / "lib"
    results = run_threads(root, library, [ColorHistogramEncoder(), ColorHistogramEncoder(bins=5)], "mismatch")
    for error in results:
        assert isinstance(error, VmmError)
        assert "rank 1: this rank's model differs from the library's: weights_hash" in str(error)
    assert str(results[0]) == str(results[1])
    with open_library(str(library)) as reader:  # rank 0's shard was merged
        assert len(reader.files) == 2
    assert (library / ".staging").exists()  # kept until a run succeeds


@pytest.mark.parametrize("option, message", [
    ({"timeout": 0.0}, "timeout must be a number of seconds > 0, got 0.0"),  # its whole shard was recorded failed
    ({"workers": -1}, "workers must be a whole number >= 0 (0 decodes in this process), got -1"),  # it hung
    ({"batch_size": "16"}, "batch_size must be a whole number, got '16'; fix the option"),  # a traceback
])
def test_a_rank_with_its_own_bad_option_fails_every_rank_and_records_no_failure(tmp_path, option, message):
    """Rank 0 checks only its own options; the other ranks' own (batch_size, workers, timeout) were used unchecked."""
    root = tmp_path / "media"
    root.mkdir()
    for i, color in enumerate([videos.RED, videos.GREEN, videos.BLUE, videos.YELLOW]):
        videos.write_solid(str(root / f"c{i}.mp4"), color)
    library = tmp_path / "lib"
    results = run_threads(root, library, [ColorHistogramEncoder(), ColorHistogramEncoder()], "own-option",
                          rank_options={1: option}, workers=1)
    for error in results:
        assert isinstance(error, VmmError) and f"did not finish: rank 1: {message}" in str(error), results
    with open_library(str(library)) as reader:  # rank 0's shard merged, nothing of rank 1's recorded as failed
        assert sorted(record.status for record in reader.files.values()) == ["ok", "ok"]


def test_a_one_process_run_after_a_failed_distributed_run_deletes_its_staging(tmp_path):
    """After a failed multi-process run, the same paths indexed by one process (`vmm index` without the launcher)
    left the staged files in LIB/.staging for good: nothing but a later successful multi-process run deleted them."""
    root = tmp_path / "media"
    root.mkdir()
    for i, color in enumerate([videos.RED, videos.GREEN, videos.BLUE, videos.YELLOW]):
        videos.write_solid(str(root / f"c{i}.mp4"), color)
    library, other = tmp_path / "lib", tmp_path / "other"
    results = run_threads(root, library, [ColorHistogramEncoder(), ColorHistogramEncoder(bins=5)], "mismatch")
    assert all(isinstance(error, VmmError) for error in results)
    assert len(list((library / ".staging").glob("*/rank-*/batch-*.json"))) >= 1
    other.mkdir()  # a run over other paths keeps its staging, as a multi-process run's clean-up does
    (library / ".staging" / "elsewhere").mkdir()
    (library / ".staging" / "elsewhere" / "plan.json").write_text(json.dumps({"roots": [str(other)]}))
    summary = build_library([str(root)], str(library), ColorHistogramEncoder(), workers=0, progress=False)
    assert (summary.indexed, summary.unchanged) == (2, 2)
    assert os.listdir(library / ".staging") == ["elsewhere"]
    reference = tmp_path / "reference"
    build_library([str(root)], str(reference), ColorHistogramEncoder(), workers=0, progress=False)
    assert contents(library) == contents(reference)


def test_a_library_of_another_model_is_refused_on_every_rank(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    videos.write_solid(str(root / "red.mp4"), videos.RED)
    library = tmp_path / "lib"
    build_library([str(root)], str(library), ColorHistogramEncoder(bins=5), workers=0, progress=False)
    results = run_threads(root, library, [ColorHistogramEncoder(), ColorHistogramEncoder()], "other-model")
    assert all(isinstance(r, VmmError) and "was built with model color-histogram" in str(r) for r in results)

    # The same run id again, with the right model: rank 1 read the failed plan's error from the first launch
    # ("was built with model ..."), and rank 0 waited for it at the barrier, failing with "did not finish".
    right = [ColorHistogramEncoder(bins=5), ColorHistogramEncoder(bins=5)]
    for error in run_threads(root, library, right, "other-model"):
        assert isinstance(error, VmmError) and str(error) == (
            f"run id other-model was already used in {library}; give every launch a new run id"), error
    summary, second = run_threads(root, library, right, "new-id")
    assert second is None and summary.unchanged == 1, summary
    assert not (library / ".staging").exists()


def test_a_folder_that_is_not_a_library_is_refused_on_every_rank_and_left_untouched(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    videos.write_solid(str(root / "red.mp4"), videos.RED)
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"not ours")
    results = run_threads(root, folder, [ColorHistogramEncoder(), ColorHistogramEncoder()], "foreign")
    for error in results:
        assert isinstance(error, VmmError), results
        assert "is not empty and holds no vmm library" in str(error) and "holiday.jpg" in str(error)
    assert sorted(p.name for p in folder.iterdir()) == ["holiday.jpg"]  # no .staging, lock or markers


def test_file_barriers_need_a_run_id(tmp_path, monkeypatch):
    for name in ("MASTER_ADDR", "MASTER_PORT", "VMM_RUN_ID", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(VmmError, match="ranks cannot meet: no torch.distributed process group"):
        build_library_distributed([str(tmp_path)], str(tmp_path / "lib"), ColorHistogramEncoder(), rank=0,
                                  world_size=2, coordination="files", progress=False)
    with pytest.raises(VmmError, match="must be a plain name"):
        build_library_distributed([str(tmp_path)], str(tmp_path / "lib"), ColorHistogramEncoder(), rank=0,
                                  world_size=2, coordination="files", run_id="../x", progress=False)


def test_a_run_id_that_leads_out_of_the_staging_folder_is_refused_with_a_process_group_too(tmp_path):
    """Rank 0 deletes LIB/.staging/<run_id> at the end: with a process group, run_id='../../x' deleted x."""
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    for run_id in ("../../precious", str(precious), ".."):
        with pytest.raises(VmmError, match="must be a plain name"):
            build_library_distributed([str(tmp_path)], str(tmp_path / "lib"), ColorHistogramEncoder(), rank=0,
                                      world_size=2, coordination="torch", run_id=run_id, progress=False)
    assert (precious / "notes.txt").read_text() == "mine" and not (tmp_path / "lib").exists()


def test_a_rank_that_cannot_write_its_markers_says_so_in_one_line(tmp_path):
    """The first marker of a file-barrier run (the heartbeat) in a folder this rank cannot write was an OSError
    traceback; a file named .staging stands in for the folder here (root writes any folder)."""
    videos.write_solid(str(tmp_path / "red.mp4"), videos.RED, seconds=1.0)
    library = tmp_path / "lib"
    build_library([str(tmp_path / "red.mp4")], str(library), ColorHistogramEncoder(), workers=0, progress=False)
    (library / ".staging").write_text("not a folder")
    with pytest.raises(VmmError, match=r"^rank 1 cannot write the run's marker files in .*\.staging/run-x \(.*\); "
                                       r"every rank must be able to write the library folder"):
        build_library_distributed([str(tmp_path / "red.mp4")], str(library), ColorHistogramEncoder(), rank=1,
                                  world_size=2, coordination="files", run_id="run-x", progress=False, workers=0)


def test_file_barriers_tell_a_silent_rank_from_a_slow_one(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "_HEARTBEAT_S", 0.05)
    monkeypatch.setattr(distributed, "_SILENCE_S", 0.5)
    run_dir = str(tmp_path / "lib" / ".staging" / "run")
    ranks = [distributed._FileCoordinator(launch_info(rank, 2, environ={}), run_dir, 30.0) for rank in (0, 1)]
    try:
        late = threading.Timer(1.5, ranks[1].barrier, args=("slow",))  # three silences late, but alive
        late.start()
        ranks[0].barrier("slow")
        late.join()
        ranks[1].close()  # as if killed: its heartbeat stops, and it never comes
        started = time.monotonic()
        with pytest.raises(distributed._PeerLost, match="rank 1 gave no sign of life for 0.5 s"):
            ranks[0].barrier("dead")
        assert time.monotonic() - started < 5  # not barrier_timeout's 30 s
    finally:
        for coordinator in ranks:
            coordinator.close()


def test_a_heartbeat_that_cannot_be_written_once_goes_on(tmp_path, monkeypatch):
    """A passing error opening the heartbeat (ESTALE on NFS) stopped it for good: the others gave the rank up."""
    monkeypatch.setattr(distributed, "_HEARTBEAT_S", 0.05)
    monkeypatch.setattr(distributed, "_SILENCE_S", 0.5)
    run_dir = str(tmp_path / "lib" / ".staging" / "run")
    failed = []
    real_open = os.open

    def stale_once(path, flags, *args, **kwargs):
        if str(path).endswith("rank-00001") and flags == os.O_WRONLY and not failed:
            failed.append(path)
            raise OSError(errno.ESTALE, os.strerror(errno.ESTALE), path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", stale_once)
    ranks = [distributed._FileCoordinator(launch_info(rank, 2, environ={}), run_dir, 30.0) for rank in (0, 1)]
    try:
        late = threading.Timer(1.5, ranks[1].barrier, args=("slow",))  # three silences late, alive all along
        late.start()
        ranks[0].barrier("slow")
        late.join()
        assert failed
    finally:
        for coordinator in ranks:
            coordinator.close()


def test_one_process_is_build_library(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    videos.write_solid(str(tmp_path / "red.mp4"), videos.RED)
    summary = build_library_distributed([str(tmp_path)], str(tmp_path / "lib"), ColorHistogramEncoder(),
                                        workers=0, progress=False)
    assert (summary.indexed, summary.clips, summary.world_size) == (1, 1, 1)
    assert summary.line().endswith(" on 1 rank")


def test_launch_info_from_environment():
    info = launch_info(environ={"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"})
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (5, 8, 1, 4)
    assert launch_info(2, 4, environ={}).rank == 2
    with pytest.raises(VmmError, match="rank 4 is outside a world of 4 processes"):
        launch_info(environ={"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(VmmError, match="WORLD_SIZE='two' is not an integer"):
        launch_info(environ={"WORLD_SIZE": "two"})


def test_shards_are_deterministic_balanced_and_complete():
    rng = np.random.default_rng(0)
    files = [(f"/v/{i:04d}.mp4", int(rng.integers(1, 500)) << 20) for i in range(1000)]
    shards = assign_shards(files, 8)
    assert shards == assign_shards(list(reversed(files)), 8)  # independent of discovery order
    assert sorted(p for shard in shards for p in shard) == sorted(p for p, _ in files)
    sizes = dict(files)
    loads = [sum(sizes[p] for p in shard) for shard in shards]
    assert max(loads) - min(loads) <= max(sizes.values()) + distributed._FILE_COST
    assert assign_shards([], 3) == [[], [], []]


def test_docstring_examples():
    result = doctest.testmod(distributed, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_the_summary_line_names_the_ranks_before_the_hint_on_earlier_failures(tmp_path):
    # It ended "...; 1 earlier failures skipped (--retry-failed retries them) on 2 ranks".
    root = tmp_path / "media"
    root.mkdir()
    for i, color in enumerate([videos.RED, videos.GREEN]):
        videos.write_solid(str(root / f"c{i}.mp4"), color)
    videos.write_text(str(root / "notes.mp4"))
    encoders = [ColorHistogramEncoder(), ColorHistogramEncoder()]
    first = run_threads(root, tmp_path / "lib", encoders, "first")[0]
    assert first.line().endswith(" on 2 ranks")
    again = run_threads(root, tmp_path / "lib", encoders, "again")[0]
    assert (again.unchanged, again.skipped_failed) == (2, 1)
    assert re.fullmatch(r"indexed 0 files \(0 clips\), 2 unchanged, 0 failed, 0 removed in \d+\.\d s on 2 ranks; "
                        r"1 earlier failures skipped \(--retry-failed retries them\)",
                        again.line(retry_hint="--retry-failed")), again.line()


def test_a_requeued_slurm_job_reruns_with_its_own_run_id(tmp_path, monkeypatch):
    """A requeued job keeps SLURM_JOB_ID and SLURM_STEP_ID: after a failed first attempt, the requeued one was
    refused with "run id slurm-77-0 was already used ...; give every launch a new run id" though none was given."""
    for name in ("MASTER_ADDR", "MASTER_PORT", "VMM_RUN_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    root = tmp_path / "media"
    root.mkdir()
    for i, color in enumerate([videos.RED, videos.GREEN, videos.BLUE, videos.YELLOW]):
        videos.write_solid(str(root / f"c{i}.mp4"), color)
    library = tmp_path / "lib"
    failed = run_threads(root, library, [ColorHistogramEncoder(), ColorHistogramEncoder(bins=5)], None)
    assert all(isinstance(error, VmmError) and "did not finish" in str(error) for error in failed), failed
    assert os.listdir(library / ".staging") == ["slurm-77-0"]
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    summary, second = run_threads(root, library, [ColorHistogramEncoder(), ColorHistogramEncoder()], None)
    assert second is None and (summary.indexed, summary.unchanged) == (2, 2), summary
    assert not (library / ".staging").exists()


def test_barrier_timeout_of_the_wrong_type_is_named_and_inf_means_no_limit(tmp_path, monkeypatch):
    # "3600" was a TypeError traceback, and inf an OverflowError one with a process group.
    with pytest.raises(VmmError, match=r"^barrier_timeout must be a number of seconds, got '3600'; fix the option$"):
        build_library_distributed([str(tmp_path)], str(tmp_path / "lib"), ColorHistogramEncoder(), rank=0,
                                  world_size=2, coordination="files", run_id="x", barrier_timeout="3600")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with reserved_port() as held:
        monkeypatch.setenv("MASTER_PORT", str(held.getsockname()[1]))
        coordinator = distributed._TorchCoordinator(launch_info(0, 1, environ={}), math.inf)
    try:
        coordinator.barrier("only")
        assert coordinator.broadcast("plan", {"error": None}) == {"error": None}
    finally:
        coordinator.close()
