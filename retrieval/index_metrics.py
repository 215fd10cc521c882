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

from retrieval.metrics import _as_index_lists, gt_ranks, rank_summary
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

    from index.store import default_nprobe
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
        # A library's own rule, so that the row's ANN recall is what a library's searches get; it probed
        # nlist // 8 here (3 of 25 lists for 1,000 videos, where a library probes 16).
        index.nprobe = min(nprobe or default_nprobe(nlist), nlist)
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
        distances, found = index.search(q, n_stored)
        # Ranked by the emb row's rule (gt_ranks) on the scores the index returned, not in FAISS's order: equal
        # scores (a caption repeated for several videos) were ordered otherwise, so a flat index's v2t row was not
        # the emb row. Items an ANN search does not return score -inf, after every returned one.
        rows, cols = np.nonzero(found >= 0)
        scores = np.full(found.shape, -np.inf, dtype=np.float32)
        scores[rows, found[rows, cols]] = distances[rows, cols]
        is_gt = stored_owner[None, :] == query_owner[start:start + chunk, None]
        chunk_ranks = gt_ranks(scores, [np.flatnonzero(row) for row in is_gt])
        ranks[start:start + chunk] = np.where((is_gt & (scores > -np.inf)).any(1), chunk_ranks, n_stored - 1)
        # A returned item is one of the exact top 10 if its exact score reaches the 10th best: counting it by id
        # instead made an exact index lose recall wherever items tie there (MSVD's repeated captions). Equal
        # vectors can differ by an ulp in one matrix product (BLAS tiling), hence the tolerance on unit vectors.
        exact = torch.from_numpy(q) @ stored_t.T
        tenth = exact.topk(top, dim=1).values[:, -1:]
        returned = torch.from_numpy(found[:, :top])
        reached = exact.gather(1, returned.clamp(min=0)) >= tenth - TIE_TOLERANCE
        hits += int((reached & (returned >= 0)).sum())
    return ranks, hits / (top * len(queries)), info


def _checked_inputs(video_frames, text_emb, txt2vid) -> tuple[Tensor, Tensor, np.ndarray]:
    """Float32 CPU (V, F, E) frames, (T, E) texts and each text's video, or an error naming the faulty argument."""
    frames = torch.as_tensor(video_frames).detach().cpu().float()
    texts = torch.as_tensor(text_emb).detach().cpu().float()
    if frames.ndim == 2:
        frames = frames.unsqueeze(1)  # one vector per video, as chunked_similarity takes it for the emb row
    if frames.ndim != 3 or texts.ndim != 2 or frames.shape[-1] != texts.shape[-1] or not (len(frames) and len(texts)):
        raise ValueError(f"expected video_frames (V, F, E) or (V, E) and text_emb (T, E), V and T >= 1; got "
                         f"{tuple(frames.shape)} and {tuple(texts.shape)}")
    for name, values in (("video_frames", frames), ("text_emb", texts)):
        if not torch.isfinite(values).all():  # FAISS would rank them anyway, the emb row refuses them
            raise VmmError(f"{name} contains {int((~torch.isfinite(values)).sum())} non-finite values; the model "
                           "produced non-finite outputs (check the checkpoint and the precision setting)")
    if len(txt2vid) != len(texts):
        raise ValueError(f"txt2vid has {len(txt2vid)} entries but text_emb has {len(texts)} texts; give one video "
                         "index per text")
    owners = _as_index_lists(txt2vid, len(texts), len(frames), "txt2vid")
    several = next((t for t, ids in enumerate(owners) if len(ids) != 1), None)
    if several is not None:
        raise ValueError(f"txt2vid[{several}] = {owners[several]} names several videos; give each text its one video")
    owners = np.array([ids[0] for ids in owners], dtype=np.int64)
    captionless = np.setdiff1d(np.arange(len(frames)), owners)
    if len(captionless):  # the video would count as a v2t miss; retrieval_metrics refuses it too
        raise ValueError(f"video {int(captionless[0])} has no text in txt2vid ({len(captionless)} such videos); "
                         "every video needs at least one text")
    return frames, texts, owners


def index_metrics(video_frames: Tensor, text_emb: Tensor, txt2vid: list[int], kind: str = "flat",
                  nlist: Optional[int] = None, nprobe: Optional[int] = None) -> dict:
    """The ``index`` row: ranking through FAISS with pooled video vectors, plus ANN recall@10.

    ``video_frames`` is (V, F, E) unit per-frame embeddings (or (V, E), one vector per video), ``text_emb`` is
    (T, E), ``txt2vid[t]`` the video of text t; every video needs a text. Ranks follow the ``emb`` row's rule
    (:func:`retrieval.metrics.gt_ranks`), so a flat index's v2t row is the emb row's, ties included.
    ``kind`` is ``"flat"`` (exact) or ``"ivf"``, whose ``nlist``/``nprobe`` are whole numbers >= 1 (None: automatic;
    ``nprobe`` then follows a library's :func:`index.store.default_nprobe`).

    >>> v = F.normalize(torch.randn(4, 8, 16), dim=-1); t = F.normalize(torch.randn(6, 16), dim=-1)
    >>> row = index_metrics(v, t, txt2vid=[0, 1, 2, 3, 0, 1])
    >>> row["t2v"]["count"], row["v2t"]["count"], row["ann_recall@10"]
    (6, 4, {'t2v': 1.0, 'v2t': 1.0})
    """
    check_index_options(kind, nlist, nprobe)
    frames, texts, owners = _checked_inputs(video_frames, text_emb, txt2vid)
    videos = np.ascontiguousarray(pooled_video_vectors(frames).numpy(), dtype=np.float32)
    texts = np.ascontiguousarray(texts.numpy(), dtype=np.float32)
    video_ids = np.arange(len(videos), dtype=np.int64)
    t2v_ranks, t2v_recall, info = _index_direction(videos, texts, owners, video_ids, kind, nlist, nprobe)
    v2t_ranks, v2t_recall, _ = _index_direction(texts, videos, video_ids, owners, kind, nlist, nprobe)
    return {"t2v": rank_summary(t2v_ranks), "v2t": rank_summary(v2t_ranks), **info,
            "ann_recall@10": {"t2v": round(t2v_recall, 4), "v2t": round(v2t_recall, 4)}}

