"""SIGKILL an indexing process at several moments, resume, and compare with an uninterrupted run."""
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from tests import videos
from vmm.training.launch import reserved_port
from index.decode import plan_windows
from index.encoder import ColorHistogramEncoder
from index.ingest import build_library
from index.library import read_state
from index.reader import open_library

pytestmark = pytest.mark.usefixtures("one_faiss_thread")

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import sys
sys.path[:0] = {paths!r}
from index.encoder import ColorHistogramEncoder
from index.ingest import build_library
build_library([{root!r}], {library!r}, ColorHistogramEncoder(), workers=1, batch_size=2, commit_seconds=0.0,
              progress=False, worker_hook="tests.videos:slow_decode")
"""


def make_media(root: Path) -> None:
    root.mkdir()
    colors = [videos.RED, videos.GREEN, videos.BLUE, videos.YELLOW, videos.WHITE]
    for i in range(10):
        videos.write_solid(str(root / f"solid{i:02d}.mp4"), colors[i % 5], seconds=1.0 + 0.1 * i)
    videos.write_moving_square(str(root / "square.webm"), codec="vp9")
    videos.write_long(str(root / "long.mp4"), seconds=30.0)
    videos.write_text(str(root / "broken.mp4"))


def generation(library: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{library}/catalog.sqlite?mode=ro", uri=True, timeout=5)
        try:
            return int(conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
        finally:
            conn.close()
    except (sqlite3.Error, TypeError):
        return 0


def contents(library: Path) -> dict:
    conn = sqlite3.connect(f"file:{library}/catalog.sqlite?mode=ro", uri=True)
    rows = conn.execute("SELECT f.path, c.start_sec, c.end_sec, c.vector FROM clips c JOIN files f ON f.id = c.file_id"
                        ).fetchall()
    files = conn.execute("SELECT path, status, error, fingerprint FROM files").fetchall()
    conn.close()
    found = {(p, s, e): v for p, s, e, v in rows}
    assert len(found) == len(rows), "duplicate clips"
    return {"clips": found, "files": sorted(files)}


def check_snapshot(library: Path) -> int:
    """A reader opened mid-run sees whole files only, and its index agrees with its metadata."""
    with open_library(str(library)) as reader:
        expected = 0
        for record in reader.files.values():
            if record.status == "ok":
                windows = [(s, e) for _, s, e in reader.clips_of(record.path)]
                assert windows == plan_windows(record.duration, 10.0, 5.0), record.path
                expected += len(windows)
        assert len(reader) == expected
        if expected:  # the vector index holds exactly the snapshot's clips
            query = np.ones((1, reader.manifest.dim), np.float32) / np.sqrt(reader.manifest.dim)
            (hits,) = reader.search_vectors(query, k=expected)
            ids = {clip_id for record in reader.files.values() for clip_id, _, _ in reader.clips_of(record.path)}
            assert len(hits) == expected and {h.clip_id for h in hits} == ids
        return expected


def children_of(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def run_and_kill(root: Path, library: Path, should_kill, deadline_s: float = 60.0) -> tuple[bool, int]:
    """Start an indexing process; SIGKILL it once should_kill() says so.

    Returns (killed, number of mid-run reader snapshots checked).
    """
    script = CHILD.format(paths=[str(REPO), str(REPO / "tests")], root=str(root), library=str(library))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=str(REPO))
    deadline = time.monotonic() + deadline_s
    snapshots = 0
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if should_kill():
                workers = children_of(proc.pid)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                # The decoder workers die with their parent (PR_SET_PDEATHSIG).
                gone_by = time.monotonic() + 5
                while any(alive(w) for w in workers) and time.monotonic() < gone_by:
                    time.sleep(0.05)
                assert not any(alive(w) for w in workers), "orphaned decoder worker"
                return True, snapshots
            if snapshots < 2 and generation(library) >= 3:
                check_snapshot(library)
                snapshots += 1
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "the indexing process failed"
    return False, snapshots




@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    root = tmp_path / "media"
    make_media(root)
    reference = tmp_path / "reference"
    build_library([str(root)], str(reference), ColorHistogramEncoder(), workers=0, progress=False)

    library = tmp_path / "crashed"
    # 1) right after the first file's commit (generation 1 = creation, 2 = the broken file, 3 = a video)
    assert run_and_kill(root, library, lambda: generation(library) >= 3)[0]
    first = generation(library)
    # 2) 0.15 s after the next commit: in the middle of decoding or embedding the following file
    committed_at = []

    def mid_file() -> bool:
        if not committed_at and generation(library) > first:
            committed_at.append(time.monotonic())
        return bool(committed_at) and time.monotonic() - committed_at[0] > 0.15

    killed, snapshots = run_and_kill(root, library, mid_file)
    assert killed and generation(library) > first and snapshots >= 1
    # 3) resume to the end, in a process of its own
    killed, snapshots = run_and_kill(root, library, lambda: False)
    assert not killed and snapshots >= 1

    assert contents(library) == contents(reference)
    for lib in (library, reference):  # the FAISS file holds exactly the catalog's clips
        state = read_state(str(lib))
        index = faiss.read_index(str(lib / state.file))
        conn = sqlite3.connect(str(lib / "catalog.sqlite"))
        ids = sorted(r[0] for r in conn.execute("SELECT id FROM clips"))
        conn.close()
        assert sorted(faiss.vector_to_array(faiss.downcast_index(index).id_map).tolist()) == ids
    # Same answers to the same queries (clip ids may differ; windows and scores may not).
    queries = np.random.default_rng(0).standard_normal((5, ColorHistogramEncoder().dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    answers = []
    for lib in (library, reference):
        with open_library(str(lib)) as reader:
            answers.append([[(h.path, h.start, h.end, round(h.score, 5)) for h in hits]
                            for hits in reader.search_vectors(queries, k=8)])
    assert answers[0] == answers[1]
    assert check_snapshot(library) == len(contents(reference)["clips"]) == 10 + 1 + 5


# The child SIGKILLs itself inside the FAISS refresh at the end of its run: right after index-state.json names the
# new FAISS file (before the old one is deleted), or halfway through writing index-state.json.
KILL_IN_SYNC = """
import os, signal, sys
sys.path[:0] = {paths!r}
import index.library
from index.encoder import ColorHistogramEncoder
from index.ingest import build_library
_write = index.library.atomic_write_bytes
def _write_then_die(path, data):
    if path.endswith("index-state.json"):
        if {after!r}:
            _write(path, data)
        else:
            open(path + ".tmp." + str(os.getpid()), "wb").write(data[:10])
        os.kill(os.getpid(), signal.SIGKILL)
    _write(path, data)
index.library.atomic_write_bytes = _write_then_die
build_library([{root!r}], {library!r}, ColorHistogramEncoder(), workers=0, progress=False)
"""


@pytest.mark.parametrize("after", [True, False], ids=["after-state-switch", "inside-state-write"])
def test_a_run_killed_while_switching_the_faiss_file_leaves_nothing_behind(tmp_path, after):
    """Killed after index-state.json named the new FAISS file, a run left the old one (as large as the index) for
    good: the next run had nothing to save, found the state current and returned before deleting anything; a
    state file's temporary was never deleted at all."""
    root, library = tmp_path / "media", tmp_path / "library"
    root.mkdir()
    videos.write_solid(str(root / "red.mp4"), videos.RED, seconds=1)
    build_library([str(root)], str(library), ColorHistogramEncoder(), workers=0, progress=False)
    videos.write_solid(str(root / "blue.mp4"), videos.BLUE, seconds=1)
    script = KILL_IN_SYNC.format(paths=[str(REPO)], root=str(root), library=str(library), after=after)
    assert subprocess.run([sys.executable, "-c", script], cwd=str(REPO)).returncode == -signal.SIGKILL
    left = sorted(os.listdir(library))
    assert len([n for n in left if n.endswith(".faiss")]) == 2, left  # the new one is written, the old not deleted
    assert after or any(n.startswith("index-state.json.tmp.") for n in left), left

    summary = build_library([str(root)], str(library), ColorHistogramEncoder(), workers=0, progress=False)
    assert (summary.indexed, summary.unchanged) == (0, 2)
    state = read_state(str(library))
    assert [n for n in os.listdir(library) if ".faiss" in n or ".tmp." in n] == [state.file]
    assert check_snapshot(library) == 2


def test_every_library_file_is_synced_before_its_rename_and_the_folder_after(tmp_path, monkeypatch):
    """What a power cut needs (a SIGKILL does not): each file is fsynced before it is renamed over the old one and
    the folder is fsynced after the rename, before the next file that names it (index-state.json names the FAISS
    file) is switched. The real calls are made; the test only records them."""
    root, library = tmp_path / "media", tmp_path / "library"
    root.mkdir()
    videos.write_solid(str(root / "red.mp4"), videos.RED, seconds=1)
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, **kwargs):
        events.append(("replace", os.fspath(src), os.fspath(dst)))
        return real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    for name in ("red", "blue"):  # a new library, then an update of it
        videos.write_solid(str(root / f"{name}.mp4"), getattr(videos, name.upper()), seconds=1)
        build_library([str(root)], str(library), ColorHistogramEncoder(), workers=0, progress=False)
    monkeypatch.undo()
    renamed = [(i, e[1], e[2]) for i, e in enumerate(events) if e[0] == "replace" and e[2].startswith(str(library))]
    names = [os.path.basename(dst) for _, _, dst in renamed]
    assert {"catalog.sqlite", "manifest.json", "index-state.json"} <= set(names), names
    assert sum(n.endswith(".faiss") for n in names) == 2, names
    for i, src, dst in renamed:
        if not dst.endswith("catalog.sqlite"):  # SQLite syncs its own file (synchronous=FULL)
            assert ("fsync", src) in events[:i], f"{dst} renamed into place without an fsync of {src}"
        after = events[i + 1:]
        later_renames = [k for k, e in enumerate(after) if e[0] == "replace"]
        until = after[:later_renames[0]] if later_renames else after
        assert ("fsync", str(library)) in until, f"folder not fsynced after renaming {dst}"
    # index-state.json is switched only after the FAISS file it names is in place
    last_state = max(i for i, _, dst in renamed if dst.endswith("index-state.json"))
    named = os.path.join(str(library), read_state(str(library)).file)
    assert any(dst == named and i < last_state for i, _, dst in renamed), (named, names)


RANK_CLI = """
import os, signal, sys
sys.path[:0] = {paths!r}
if os.environ["RANK"] == "0":
    import index.distributed
    def _die(*args, **kwargs):  # SIGKILLed while planning, before the plan reaches the other ranks
        os.kill(os.getpid(), signal.SIGKILL)
    index.distributed._plan_run = _die
from vmm.cli import main
sys.exit(main(["index", {root!r}, "--library", {library!r}, "--model", "color-histogram", "--quiet",
               "--workers", "0"]))
"""


def test_rank_0_killed_while_planning_tells_the_other_ranks_in_one_line(tmp_path):
    """The other ranks wait for rank 0's plan; when rank 0 died there, they ended with a traceback of an internal
    exception (index.distributed._PeerLost) instead of the 'lost contact' error of a rank lost later."""
    root, library = tmp_path / "media", tmp_path / "library"
    root.mkdir()
    videos.write_solid(str(root / "red.mp4"), videos.RED, seconds=1)
    environ = {k: v for k, v in os.environ.items() if k not in ("VMM_RUN_ID", "SLURM_JOB_ID", "LOCAL_WORLD_SIZE")}
    script = RANK_CLI.format(paths=[str(REPO)], root=str(root), library=str(library))
    with reserved_port() as held:
        ranks = [subprocess.Popen([sys.executable, "-c", script], cwd=str(REPO), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True,
                                  env={**environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(held.getsockname()[1])})
                 for rank in (0, 1)]
        (_, _), (_, err) = [rank.communicate(timeout=120) for rank in ranks]
    assert ranks[0].returncode == -signal.SIGKILL
    lines = err.strip().splitlines()
    assert ranks[1].returncode == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: rank 1 lost contact with the other ranks (") and "run the same command" in lines[0]
    summary = build_library([str(root)], str(library), ColorHistogramEncoder(), workers=0, progress=False)
    assert summary.indexed == 1 and check_snapshot(library) == 1
