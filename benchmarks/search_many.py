"""Batch text search: ``VideoLibrary.search_many`` against one ``search`` call per text, in the same process.

A real library folder (catalog and FAISS file, written by the project's own writer) of random unit vectors at the
official model's dimension (512), 20 clips a file, is searched by 1,000 texts at k=10: with the index ``"auto"``
builds at that size (Flat below 1M clips), with the IVF it builds from 1M clips on (``IVF{auto_nlist(n)},Flat``,
default nprobe) and with a path glob keeping one file in 20 (scored exactly over the subset). The texts'
vectors come from a table, not a model, so both ways get the same query vectors and the times are the search's
alone. Each text's hits are compared between the two: a flat index is read with BLAS from 20 queries on, whose
float32 sums may differ from one query's in the last bit, which can swap two clips whose scores are that close.

    python benchmarks/search_many.py                               # 200k clips: about 12 minutes on 2 busy cores
    python benchmarks/search_many.py --clips 20000 --queries 100   # a quick look
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import faiss  # noqa: E402

from common import cpu_name, parser, positive_int, run  # noqa: E402
from indexing import unit_vectors  # noqa: E402
from index.catalog import FileResult, LibraryManifest  # noqa: E402
from index.library import LibraryWriter, sync_index  # noqa: E402
from index.reader import open_library  # noqa: E402
from index.store import auto_nlist  # noqa: E402
from retrieval.library import VideoLibrary, Where  # noqa: E402

DIM, CLIPS_PER_FILE = 512, 20


class TableEncoder:
    """An encoder whose text vectors are looked up: the search is what is timed, not a model."""

    name, weights_hash, dim, num_frames, max_text_len = "bench-table", "w0", DIM, 8, 32

    def __init__(self, texts: list[str], seed: int):
        self.vectors = dict(zip(texts, unit_vectors(len(texts), DIM, seed)))

    def encode_texts(self, texts):
        return np.stack([self.vectors[t] for t in texts])


def build(folder: Path, clips: int, encoder: TableEncoder) -> None:
    manifest = LibraryManifest.for_encoder(encoder, window=10.0, stride=5.0, max_seconds=None)
    vectors = unit_vectors(clips, DIM, seed=3)
    spans = [(5.0 * c, 5.0 * c + 10.0) for c in range(CLIPS_PER_FILE)]
    with LibraryWriter.open(str(folder), manifest) as writer:
        batch = []
        for f, start in enumerate(range(0, clips, CLIPS_PER_FILE)):
            part = vectors[start:start + CLIPS_PER_FILE]
            batch.append(FileResult(f"/videos/{f // 100:04d}/{f:06d}.mp4", 1000 + f, f, f"fp{f}", "ok",
                                    spans=spans[:len(part)], vectors=part))
            if len(batch) == 500:
                writer.catalog.commit(batch)
                batch = []
        writer.catalog.commit(batch)


def compare(library: VideoLibrary, texts: list[str], k: int, where, repeats: int) -> dict:
    """The best of ``repeats`` alternating runs of each way (others share this machine), and how their hits differ."""
    library.search(text=texts[0], k=k, where=where)  # page the index in
    times = {"one_call_per_text": [], "search_many": []}
    for _ in range(repeats):
        started = time.perf_counter()
        alone = [library.search(text=t, k=k, where=where) for t in texts]
        times["one_call_per_text"].append(time.perf_counter() - started)
        started = time.perf_counter()
        many = library.search_many(texts, k=k, where=where)
        times["search_many"].append(time.perf_counter() - started)
    key = lambda hits: [(h.path, h.start, h.end, h.clip_ids) for h in hits]  # noqa: E731
    differ = sum(key(a) != key(b) for a, b in zip(alone, many))
    score = max((abs(x.score - y.score) for a, b in zip(alone, many) for x, y in zip(a, b)), default=0.0)
    best = {way: min(values) for way, values in times.items()}
    return {**{f"{way}_s": round(s, 3) for way, s in best.items()},
            "ms_per_text_before": round(1000 * best["one_call_per_text"] / len(texts), 3),
            "ms_per_text_after": round(1000 * best["search_many"] / len(texts), 3),
            "speedup": round(best["one_call_per_text"] / best["search_many"], 2),
            "texts_whose_hits_differ": differ, "max_score_difference": float(f"{score:.1e}")}


def main() -> int:
    ap = parser(__file__, __doc__)
    ap.add_argument("--clips", type=positive_int, default=200_000, help="clips in the library [200000]")
    ap.add_argument("--queries", type=positive_int, default=1000, help="texts searched [1000]")
    ap.add_argument("-k", type=positive_int, default=10, help="results per text [10]")
    ap.add_argument("--repeats", type=positive_int, default=2, help="timed runs of each way, best kept [2]")
    args = ap.parse_args()
    if args.clips < CLIPS_PER_FILE * 20:
        ap.error(f"argument --clips: {args.clips} clips make fewer than 20 files, of which the filter keeps one; pass "
                 f"at least {CLIPS_PER_FILE * 20}")
    print(f"{cpu_name()}, {faiss.omp_get_max_threads()} FAISS threads; {args.clips} clips of dim {DIM}, "
          f"{args.queries} texts, k={args.k}", flush=True)
    texts = [f"text {i}" for i in range(args.queries)]
    encoder = TableEncoder(texts, seed=5)
    folder = Path(tempfile.mkdtemp(prefix="vmm-bench-search-many-"))
    try:
        started = time.perf_counter()
        build(folder, args.clips, encoder)
        print(f"catalog written in {time.perf_counter() - started:.1f} s", flush=True)
        every_20th = Where(path_glob="/videos/*/*[02468]0.mp4")  # files 0, 20, 40...
        for factory, where in (("auto", None), (f"IVF{auto_nlist(args.clips)},Flat", None),
                               (f"IVF{auto_nlist(args.clips)},Flat", every_20th)):
            started = time.perf_counter()
            with LibraryWriter.open(str(folder)) as writer:
                writer.catalog.set_setting("index_factory", factory)  # as `vmm index --factory` records it
                state = sync_index(str(folder), _writer=writer)
            built = time.perf_counter() - started
            library = VideoLibrary(str(folder), encoder, open_library(str(folder), model=encoder, device="cpu"))
            row = {"index": state.factory, "where": where and where.path_glob,
                   "index_build_s": round(built, 1), **compare(library, texts, args.k, where, args.repeats)}
            print(row, flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    run(main)
