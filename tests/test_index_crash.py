"""SIGKILL an indexing process at several moments, resume, and compare with an uninterrupted run."""
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
