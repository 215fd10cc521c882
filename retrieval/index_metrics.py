"""The ``index`` row of an evaluation: ranking through a FAISS index, the way a video library searches.

A library stores one vector per video (the pooled per-frame embeddings) in an exact or an ANN index, so this
row measures what search returns, apart from the model's ITC and ITM scores; ANN recall@10 against exact
search tells what an IVF index loses.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from retrieval.metrics import rank_summary
from vmm.errors import VmmError, is_whole_number

TIE_TOLERANCE = 1e-5  # inner products of unit vectors closer than this count as tied


def check_index_options(kind, nlist, nprobe, name: Optional[dict[str, str]] = None) -> None:
    """Refuse an index kind other than flat or ivf, and an nlist or nprobe that is no whole number >= 1 or not for ivf.

    ``name`` maps kind, nlist and nprobe to what the caller's user calls them (vmm eval: its flags).
    """
    name = name or {}
    if kind not in ("flat", "ivf"):  # anything else silently built an IVF
        raise VmmError(f"{name.get('kind', 'kind')} must be 'flat' or 'ivf', got {kind!r}")
    for option, value in (("nlist", nlist), ("nprobe", nprobe)):
        if value is not None and not (is_whole_number(value) and value >= 1):
            raise VmmError(f"{name.get(option, option)} must be a whole number >= 1, got {value!r}; leave it out "
                           "for the automatic value")
        if value is not None and kind != "ivf":  # an exact index has no lists: the value would be ignored
            raise VmmError(f"{name.get(option, option)} is {value}, but it applies only to {name.get('kind', 'kind')} "
                           f"'ivf'; leave it out or use 'ivf'")


def pooled_video_vectors(frames: Tensor) -> Tensor:
    """What a video library stores: the L2-normalised mean of the unit per-frame embeddings.

    >>> pooled_video_vectors(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])).tolist()
    [[0.7071067690849304, 0.7071067690849304]]
    """
    return F.normalize(frames.float().mean(1), dim=-1)


def _build_faiss_index(vectors: np.ndarray, kind: str, nlist: Optional[int], nprobe: Optional[int]):
    import faiss
    n, d = vectors.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
        info = {"type": "flat"}
    else:
        if nlist is None:
            nlist = max(1, min(int(round(4 * math.sqrt(n))), n // 39))
        nlist = max(1, min(nlist, n))
        index = faiss.index_factory(d, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        faiss.extract_index_ivf(index).cp.min_points_per_centroid = 1  # tiny sets: no "too few points" noise
        index.train(vectors)
        index.nprobe = max(1, min(nprobe or max(1, nlist // 8), nlist))
        info = {"type": "ivf", "nlist": nlist, "nprobe": index.nprobe}
    index.add(vectors)
    return index, info


def _index_direction(stored: np.ndarray, queries: np.ndarray, query_owner: np.ndarray, stored_owner: np.ndarray,
                     kind: str, nlist: Optional[int], nprobe: Optional[int]) -> tuple[np.ndarray, float, dict]:
    """0-based rank of each query's ground truth through a FAISS index, and ANN recall@10 vs exact search.

    A query's ground truth are the stored items whose owner video equals the query's owner video.
    A ground truth that an ANN search does not return at all counts as ranked last.
    """
    index, info = _build_faiss_index(stored, kind, nlist, nprobe)
    n_stored = len(stored)
    top = min(10, n_stored)
    ranks = np.empty(len(queries), dtype=np.int64)
    hits, chunk = 0, max(1, (1 << 23) // n_stored)
    stored_t = torch.from_numpy(stored)
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk]
        _, found = index.search(q, n_stored)
        owner = np.where(found >= 0, stored_owner[np.clip(found, 0, None)], -1)
        is_gt = owner == query_owner[start:start + chunk, None]
        ranks[start:start + chunk] = np.where(is_gt.any(1), is_gt.argmax(1), n_stored - 1)
        # A returned item is one of the exact top 10 if its exact score reaches the 10th best: counting it by id
        # instead made an exact index lose recall wherever items tie there (MSVD's repeated captions). Equal
        # vectors can differ by an ulp in one matrix product (BLAS tiling), hence the tolerance on unit vectors.
        exact = torch.from_numpy(q) @ stored_t.T
        tenth = exact.topk(top, dim=1).values[:, -1:]
        returned = torch.from_numpy(found[:, :top])
        reached = exact.gather(1, returned.clamp(min=0)) >= tenth - TIE_TOLERANCE
        hits += int((reached & (returned >= 0)).sum())
    return ranks, hits / (top * len(queries)), info


def index_metrics(video_frames: Tensor, text_emb: Tensor, txt2vid: list[int], kind: str = "flat",
                  nlist: Optional[int] = None, nprobe: Optional[int] = None) -> dict:
    """The ``index`` row: ranking through FAISS with pooled video vectors, plus ANN recall@10.

    ``kind`` is ``"flat"`` (exact) or ``"ivf"``, whose ``nlist``/``nprobe`` are whole numbers >= 1 (None: automatic).

    >>> v = F.normalize(torch.randn(4, 8, 16), dim=-1); t = F.normalize(torch.randn(6, 16), dim=-1)
    >>> row = index_metrics(v, t, txt2vid=[0, 1, 2, 3, 0, 1])
    >>> row["t2v"]["count"], row["v2t"]["count"], row["ann_recall@10"]
    (6, 4, {'t2v': 1.0, 'v2t': 1.0})
    """
    check_index_options(kind, nlist, nprobe)
    videos = np.ascontiguousarray(pooled_video_vectors(video_frames).numpy(), dtype=np.float32)
    texts = np.ascontiguousarray(text_emb.float().numpy(), dtype=np.float32)
    owners = np.asarray(txt2vid, dtype=np.int64)
    video_ids = np.arange(len(videos), dtype=np.int64)
    t2v_ranks, t2v_recall, info = _index_direction(videos, texts, owners, video_ids, kind, nlist, nprobe)
    v2t_ranks, v2t_recall, _ = _index_direction(texts, videos, video_ids, owners, kind, nlist, nprobe)
    return {"t2v": rank_summary(t2v_ranks), "v2t": rank_summary(v2t_ranks), **info,
            "ann_recall@10": {"t2v": round(t2v_recall, 4), "v2t": round(v2t_recall, 4)}}

