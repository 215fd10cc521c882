"""Search results checked against an independent reference: a NumPy brute force over the vectors the catalog stores
and the merge rule as docs/search.md states it, on libraries of a few thousand synthetic clips (random walks, so a
video's neighbouring windows resemble each other and merging matters), committed the way `vmm index` commits them.
Flat and IVF (nprobe reaching every list) must agree with the reference exactly; HNSW is approximate, so only what
holds for any index is asserted of it."""
import fnmatch

import numpy as np
import pytest
import torch

from index.catalog import Catalog, FileResult, LibraryManifest
from index.decode import VideoInfo
from index.library import LibraryWriter, remove_paths, sync_index
from index.reader import open_library
from retrieval.library import VideoLibrary, Where
from retrieval.rerank import NOT_SHORTLISTED, rerank_topk

DIM = 16
MANIFEST = LibraryManifest("synthetic", "w1", DIM, 4, "middle", {}, 10.0, 5.0, None)


class QueryTable:
    """An encoder whose text vectors are given: the library then ranks exactly the vectors the reference ranks."""
    name, weights_hash, dim, num_frames = MANIFEST.model_name, MANIFEST.weights_hash, DIM, 4

    def __init__(self, queries: dict):
        self.queries = queries

    def encode_texts(self, texts):
        return np.stack([self.queries[t] for t in texts]).reshape(len(texts), DIM)


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def videos(rng, count, folder="/videos", start=0):
    """{path: (windows, DIM) vectors} of ``count`` videos of 1 to 30 windows of 10 s every 5 s."""
    out = {}
    for i in range(start, start + count):
        walk = np.cumsum(rng.standard_normal((int(rng.integers(1, 31)), DIM)) * 0.4, axis=0)
        out[f"{folder}/v{i:04d}.mp4"] = unit(walk + rng.standard_normal(DIM) * 2)
    return out


def commit(library, files, factory=None, sync=True):
    with LibraryWriter.open(library, MANIFEST) as writer:
        if factory:
            writer.catalog.set_setting("index_factory", factory)
        writer.catalog.commit([
            FileResult(path, 1000, 1, f"fp{path}", "ok", None,
                       VideoInfo(10.0, 50 * len(vectors), 5.0 * len(vectors) + 5, 64, 48, "h264", "pyav"),
                       [(5.0 * j, 5.0 * j + 10) for j in range(len(vectors))], vectors)
            for path, vectors in files.items()])
    if sync:
        sync_index(library)


def opened(library, queries):
    encoder = QueryTable(queries)
    return VideoLibrary(library, encoder, open_library(library, model=encoder))


def reference(library):
    """Every clip of the catalog as (clip_id, path, start, end, vector), and each path's duration."""
    catalog = Catalog.open(f"{library}/catalog.sqlite", read_only=True)
    try:
        vectors = dict(zip(*map(np.concatenate, zip(*catalog.iter_vectors()))))
        files = {f.id: f for f in catalog.files()}
        clip_ids, file_ids, starts, ends, _ = catalog.clip_table()
    finally:
        catalog.close()
    clips = [(int(c), files[int(f)].path, float(s), float(e), vectors[c])
             for c, f, s, e in zip(clip_ids, file_ids, starts, ends)]
    return clips, {f.path: f.duration for f in files.values()}


def brute_force(clips, query, keep=lambda path: True):
    """The windows best first, ties by clip id, as (clip_id, path, start, end, score)."""
    kept = [c for c in clips if keep(c[1])]
    scores = [float(np.float64(c[4]) @ np.float64(query)) for c in kept]
    order = sorted(range(len(kept)), key=lambda i: (-scores[i], kept[i][0]))
    return [(*kept[i][:4], scores[i]) for i in order]


def merged(windows):
    """docs/search.md's rule: best first, a window touching no moment of its video seeds one (the moment before is
    then final); a window touching the open moment's seed (and no other moment of its video) widens it; any other
    touching a moment of its video is dropped. (path, start, end, score, clip ids)."""
    def touch(a, b):
        return a[0] <= b[1] and b[0] <= a[1]

    moments, of_video, current = [], {}, None
    for clip, path, start, end, score in windows:
        others = of_video.get(path, [])
        if current and current["path"] == path and touch(current["seed"], (start, end)) and not any(
                m is not current and touch((m["start"], m["end"]), (start, end)) for m in others):
            current.update(start=min(current["start"], start), end=max(current["end"], end))
            current["clips"].append(clip)
        elif not any(touch((m["start"], m["end"]), (start, end)) for m in others):
            current = dict(path=path, start=start, end=end, score=score, clips=[clip], seed=(start, end))
            moments.append(current)
            of_video.setdefault(path, []).append(current)
    return [(m["path"], m["start"], m["end"], m["score"], tuple(m["clips"])) for m in moments]


def first_per_video(moments):
    seen = set()
    return [m for m in moments if not (m[0] in seen or seen.add(m[0]))]


def expected(windows, merge, per_video):
    moments = merged(windows) if merge else [(p, s, e, score, (c,)) for c, p, s, e, score in windows]
    return first_per_video(moments) if per_video else moments


def check(library, clips, query, k, merge, per_video, where=None, keep=lambda path: True):
    hits = library.search(text="q", k=k, merge=merge, per_video=per_video, where=where)
    want = expected(brute_force(clips, query, keep), merge, per_video)[:k]
    assert [(h.path, h.start, h.end, h.clip_ids) for h in hits] == [m[:3] + m[4:] for m in want], \
        (k, merge, per_video, where)
    assert [h.rank for h in hits] == list(range(1, len(want) + 1))
    assert [h.score for h in hits] == pytest.approx([m[3] for m in want], abs=1e-5)


@pytest.fixture(scope="module", params=[None, "IVF16,Flat"])
def changed_library(request, tmp_path_factory):
    """~1,500 clips in the saved index, then files added, changed and removed since it was saved: the snapshot is
    the FAISS file less its tombstones plus the catalog's newer clips, as a reader sees it after an interrupted run."""
    rng = np.random.default_rng(20)
    library = str(tmp_path_factory.mktemp("reference") / "lib")
    first = videos(rng, 100)
    commit(library, first, request.param)
    gone = [path for path in first if int(path[-8:-4]) % 5 == 0]
    commit(library, {**videos(rng, 25, "/videos/new"), **{p: first[p][::-1].copy() for p in list(first)[1::11]}},
           sync=False)
    with LibraryWriter.open(library) as writer:
        writer.catalog.commit(remove=[f.id for f in writer.catalog.files() if f.path in gone])
    return library, gone


@pytest.mark.parametrize("merge, per_video", [(True, False), (False, False), (True, True), (False, True)])
def test_search_equals_brute_force_with_the_documented_merge_rule(changed_library, merge, per_video):
    library, gone = changed_library
    clips, durations = reference(library)
    rng = np.random.default_rng(1)
    queries = {"q": unit(rng.standard_normal(DIM))}
    lib = opened(library, queries)
    reader = lib._reader
    assert reader._stores[3] is not None and len(reader._stores[2])  # newer clips and tombstones both searched
    assert len(lib) == len(clips) and not {c[1] for c in clips} & set(gone)
    short = Where(min_duration=40, max_duration=100)
    globs = Where(path_glob=["/videos/new/*", "*3.mp4"])
    for _ in range(3):
        queries["q"] = unit(rng.standard_normal(DIM))
        for k in (1, 10, len(clips) + 3):
            check(lib, clips, queries["q"], k, merge, per_video)
        check(lib, clips, queries["q"], 10, merge, per_video, short, lambda p: 40 <= durations[p] <= 100)
        check(lib, clips, queries["q"], 10, merge, per_video, globs,
              lambda p: fnmatch.fnmatch(p, "/videos/new/*") or p.endswith("3.mp4"))


def test_search_many_gives_each_text_what_search_gives_it_alone(changed_library):
    """More than 20 texts: FAISS scores a batch that large with BLAS, one query without it."""
    library, _ = changed_library
    rng = np.random.default_rng(2)
    queries = {f"t{i}": unit(rng.standard_normal(DIM)) for i in range(24)}
    lib = opened(library, queries)
    for options in (dict(k=10), dict(k=40, merge=False), dict(k=5, per_video=True), dict(k=7, where={"min_duration": 60})):
        many = lib.search_many(list(queries), **options)
        for text, hits in zip(queries, many):
            alone = lib.search(text=text, **options)
            assert [(h.rank, h.path, h.start, h.end, h.clip_ids) for h in hits] == \
                [(h.rank, h.path, h.start, h.end, h.clip_ids) for h in alone]
            assert [h.score for h in hits] == pytest.approx([h.score for h in alone], abs=1e-6)


@pytest.mark.parametrize("factory", [None, "IVF16,Flat", "HNSW16,Flat"])
def test_removed_and_re_added_files_leave_no_ghosts_or_duplicates(tmp_path, factory):
    rng = np.random.default_rng(3)
    library = str(tmp_path / "lib")
    files = videos(rng, 60)
    commit(library, files, factory)
    gone = list(files)[::3]
    assert remove_paths(library, gone) == len(gone)
    back = {path: unit(files[path] + rng.standard_normal(files[path].shape)) for path in gone[::2]}
    for sync in (False, True):  # the re-added clips first beside the FAISS file, then in it
        commit(library, back, sync=sync)
        clips, _ = reference(library)
        query = unit(rng.standard_normal(DIM))
        lib = opened(library, {"q": query})
        hits = lib.search(text="q", k=10 ** 6, merge=False)
        assert sorted(h.clip_ids[0] for h in hits) == sorted(c[0] for c in clips)  # each clip once, none removed
        assert not {h.path for h in hits} & set(gone[1::2])
        if factory != "HNSW16,Flat":
            check(lib, clips, query, 10, True, False)
        again = opened(library, {"q": query})  # a reopened library ranks the same
        assert [h.clip_ids for h in again.search(text="q", k=10)] == [h.clip_ids for h in lib.search(text="q", k=10)]


def test_hnsw_hits_are_stored_cosines_best_first_each_clip_once(tmp_path):
    rng = np.random.default_rng(4)
    library = str(tmp_path / "lib")
    commit(library, videos(rng, 80), "HNSW16,Flat")
    clips, _ = reference(library)
    vectors = {c[0]: c[4] for c in clips}
    with open_library(library) as reader:
        assert "HNSW" in reader._base.factory
        for k in (1, 10, len(clips) + 5):
            for hits in reader.search_vectors(unit(rng.standard_normal((3, DIM))), k=k):
                assert len(hits) == min(k, len(clips)) and len({h.clip_id for h in hits}) == len(hits)
                scores = [h.score for h in hits]
                assert scores == sorted(scores, reverse=True)
        query = unit(rng.standard_normal(DIM))
        for h in reader.search_vectors(query, k=50)[0]:
            assert h.score == pytest.approx(float(vectors[h.clip_id] @ query), abs=1e-5)


def test_rerank_topk_with_no_candidates_gives_an_empty_matrix():
    """Texts without videos (t2v) and videos without texts (v2t): torch.cat([]) raised ValueError."""
    calls = []
    scorer = lambda query, candidates: calls.append(query) or candidates.float()  # noqa: E731
    assert rerank_topk(torch.zeros(0, 3), 4, scorer, direction="t2v").shape == (3, 0)
    assert rerank_topk(torch.zeros(2, 0), 4, scorer).shape == (2, 0)
    assert calls == []
    out = rerank_topk(torch.tensor([[0.1, 0.9]]), 1, scorer)
    assert out.tolist() == [[NOT_SHORTLISTED, 1.0]]
