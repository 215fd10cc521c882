"""Retrieval metrics and the ITC similarity matrix, as the official evaluation computes them.

The ranking rule is the one of the official ``itm_eval``
(``videomamba/video_mm/tasks/retrieval_utils.py``): each query row is ordered by
``np.argsort(row)[::-1]`` (ascending numpy argsort, then reversed), and a query's
rank is the best (smallest) position of any of its ground-truth items. Equal
scores are therefore ordered exactly as numpy orders them for the official code
on the same machine; we call the same numpy function on the same float32 values
instead of re-deriving a tie rule.

Ranks are 0-based internally; R@k counts ranks < k, and the median / mean
ranks (MdR, MnR) are reported 1-based (best possible value 1.0).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F

from vmm.errors import VmmError

ScoreMatrix = Union[np.ndarray, torch.Tensor]
GroundTruth = Union[Sequence[Union[int, Sequence[int]]], Mapping[int, Union[int, Sequence[int]]]]

RECALL_AT = (1, 5, 10)


def _as_numpy_scores(scores: ScoreMatrix, name: str) -> np.ndarray:
    # The official code evaluates `tensor.cpu().float().numpy()`: float32 rows.
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().float().numpy()
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"{name} must be a 2-D score matrix, got shape {scores.shape}")
    if np.isnan(scores).any():
        raise VmmError(
            f"{name} contains {int(np.isnan(scores).sum())} NaN scores; the model produced "
            "non-finite outputs (check the checkpoint and the precision setting)"
        )
    return scores


def _as_index_lists(gt: GroundTruth, n_queries: int, n_candidates: int, name: str) -> list[list[int]]:
    # The official itm_eval takes dicts ({query: ground truth}); iterating one yields its keys, which were
    # silently taken for the ground truth, so a mapping is read by query index instead.
    if isinstance(gt, Mapping):
        absent = next((q for q in range(n_queries) if q not in gt), None)
        if absent is not None:
            raise ValueError(f"{name} has no key {absent}; a dict needs the keys 0..{n_queries - 1}, one per score "
                             "matrix row")
        gt = [gt[q] for q in range(n_queries)] if len(gt) == n_queries else gt  # else the length error below
    if len(gt) != n_queries:
        raise ValueError(f"{name} has {len(gt)} entries but the score matrix has {n_queries} rows")
    lists = []
    for q, entry in enumerate(gt):
        if isinstance(entry, torch.Tensor):
            entry = entry.cpu()
        ids = np.asarray(entry)
        if ids.size == 0:
            raise ValueError(f"{name}[{q}] has no ground-truth item")
        # int() would truncate an index of 1.7 to 1: only whole-number indices are accepted.
        if ids.ndim > 1 or ids.dtype.kind not in "iu":
            raise ValueError(f"{name}[{q}] = {entry!r} is not a candidate index or a list of them")
        ids = [int(i) for i in ids.reshape(-1)]
        if min(ids) < 0 or max(ids) >= n_candidates:
            raise ValueError(f"{name}[{q}] = {ids} is out of range for {n_candidates} candidates")
        lists.append(ids)
    return lists


def gt_ranks(scores: ScoreMatrix, ground_truth: GroundTruth) -> np.ndarray:
    """0-based rank of the best-ranked ground-truth candidate for every query row.

    ``ground_truth[q]`` is one candidate index or a list of them (several
    captions of one video): the best of them counts, as in the official code.

    >>> gt_ranks(np.array([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1]]), [0, [1, 2]]).tolist()
    [2, 1]
    """
    scores = _as_numpy_scores(scores, "scores")
    gt = _as_index_lists(ground_truth, scores.shape[0], scores.shape[1], "ground_truth")
    ranks = np.empty(scores.shape[0], dtype=np.int64)
    positions = np.empty(scores.shape[1], dtype=np.int64)
    arange = np.arange(scores.shape[1], dtype=np.int64)
    for q, row in enumerate(scores):
        order = np.argsort(row)[::-1]
        positions[order] = arange  # positions[c] = where candidate c landed
        ranks[q] = positions[gt[q]].min()
    return ranks


def rank_summary(ranks: np.ndarray) -> dict[str, float]:
    """R@1/5/10 in percent and 1-based median / mean rank, from 0-based ranks.

    >>> rank_summary(np.array([0, 3, 20, 1]))
    {'R@1': 25.0, 'R@5': 75.0, 'R@10': 75.0, 'MdR': 3.0, 'MnR': 7.0, 'count': 4}
    """
    ranks = np.asarray(ranks)
    n = len(ranks)
    if n == 0:
        raise ValueError("no queries to evaluate")
    summary: dict[str, float] = {f"R@{k}": 100.0 * int((ranks < k).sum()) / n for k in RECALL_AT}
    summary["MdR"] = float(np.median(ranks)) + 1.0
    summary["MnR"] = float(ranks.mean()) + 1.0
    summary["count"] = n
    return summary


def retrieval_metrics(
    scores_v2t: ScoreMatrix,
    scores_t2v: ScoreMatrix,
    txt2vid: GroundTruth,
    vid2txt: GroundTruth,
) -> dict[str, dict[str, float]]:
    """Recall@1/5/10, MdR and MnR for text->video and video->text retrieval.

    ``scores_v2t`` is (V, T), ``scores_t2v`` is (T, V) (after ITM re-ranking the two
    are different matrices; for plain ITC pass ``itc`` and ``itc.T``).
    ``txt2vid[t]`` is the video of text t; ``vid2txt[v]`` lists the texts of video v: lists, arrays,
    tensors, or dicts keyed by query index (the official ``txt2img`` / ``img2txt``).
    R@k are percentages, not rounded.

    >>> itc = np.array([[0.9, 0.1, 0.8], [0.2, 0.7, 0.3]])   # 2 videos x 3 texts
    >>> m = retrieval_metrics(itc, itc.T, txt2vid=[0, 1, 0], vid2txt=[[0, 2], [1]])
    >>> m["v2t"]["R@1"], m["t2v"]["R@1"], m["t2v"]["count"]
    (100.0, 100.0, 3)
    """
    v2t = _as_numpy_scores(scores_v2t, "scores_v2t")
    t2v = _as_numpy_scores(scores_t2v, "scores_t2v")
    if v2t.shape[::-1] != t2v.shape:
        raise ValueError(f"scores_v2t {v2t.shape} and scores_t2v {t2v.shape} are not transposed shapes")
    return {  # converted here so that an error names txt2vid or vid2txt
        "t2v": rank_summary(gt_ranks(t2v, _as_index_lists(txt2vid, *t2v.shape, "txt2vid"))),
        "v2t": rank_summary(gt_ranks(v2t, _as_index_lists(vid2txt, *v2t.shape, "vid2txt"))),
    }


def to_official_keys(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """Convert :func:`retrieval_metrics` output to the official ``itm_eval`` dict.

    ``txt_r*`` is video->text, ``img_r*`` is text->video; means are taken before
    rounding, then every value is rounded to 2 decimals, as the official code does.

    >>> m = {"v2t": {"R@1": 100 / 3, "R@5": 100.0, "R@10": 100.0},
    ...      "t2v": {"R@1": 25.0, "R@5": 100.0, "R@10": 100.0}}
    >>> to_official_keys(m)["txt_r_mean"], to_official_keys(m)["r_mean"]
    (77.78, 76.39)
    """
    tr1, tr5, tr10 = (metrics["v2t"][f"R@{k}"] for k in RECALL_AT)
    ir1, ir5, ir10 = (metrics["t2v"][f"R@{k}"] for k in RECALL_AT)
    tr_mean = (tr1 + tr5 + tr10) / 3
    ir_mean = (ir1 + ir5 + ir10) / 3
    official = {
        "txt_r1": tr1,
        "txt_r5": tr5,
        "txt_r10": tr10,
        "txt_r_mean": tr_mean,
        "img_r1": ir1,
        "img_r5": ir5,
        "img_r10": ir10,
        "img_r_mean": ir_mean,
        "r_mean": (tr_mean + ir_mean) / 2,
    }
    return {k: round(float(v), 2) for k, v in official.items()}


def chunked_similarity(
    video_emb: ScoreMatrix,
    text_emb: ScoreMatrix,
    chunk: int | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """ITC matrix (V, T): per-frame cosine of video and text, averaged over frames.

    ``video_emb`` is (V, F, E) per-frame embeddings (or (V, E)), ``text_emb`` is
    (T, E); both are expected L2-normalised already (``normalize=True`` does it per
    frame, as the official ``get_sim``). No temperature. Float32, unless called under
    autocast: the official bf16 eval runs it under bf16 autocast, which rounds each
    score (and the frame mean) to bf16. Videos are processed ``chunk`` at a time, so only a (chunk, F, T) block
    exists at once; by default the chunk keeps that block near 2**25 floats.
    The text->video matrix is the transpose.

    >>> v = torch.nn.functional.normalize(torch.randn(5, 8, 16), dim=-1)
    >>> t = torch.nn.functional.normalize(torch.randn(7, 16), dim=-1)
    >>> chunked_similarity(v, t, chunk=2).shape
    torch.Size([5, 7])
    """
    video = torch.as_tensor(video_emb).to(torch.float32)
    text = torch.as_tensor(text_emb).to(torch.float32)
    if video.ndim == 2:
        video = video.unsqueeze(1)  # one "frame": mean over it is the plain dot product
    if video.ndim != 3 or text.ndim != 2 or video.shape[-1] != text.shape[-1]:
        raise ValueError(
            f"expected video (V, F, E) or (V, E) and text (T, E); got {tuple(video.shape)} and {tuple(text.shape)}"
        )
    if normalize:
        video = F.normalize(video, dim=-1)
        text = F.normalize(text, dim=-1)
    n_video, n_frames, _ = video.shape
    if chunk is None:
        chunk = max(1, 2**25 // max(1, n_frames * text.shape[0]))
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    text = text.to(video.device)
    sims = torch.empty(n_video, text.shape[0], dtype=torch.float32, device=video.device)
    for start in range(0, n_video, chunk):
        block = torch.einsum("mld,nd->mln", video[start : start + chunk], text)  # (chunk, F, T)
        sims[start : start + chunk] = block.mean(1)
    return sims
