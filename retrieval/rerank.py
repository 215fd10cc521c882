"""Two-stage retrieval: ITC shortlist, then ITM re-scoring, as the official ``evaluation()``.

For every query row the top-k candidates by ITC score are re-scored by a
cross-encoder (the ITM head in the model); every other entry of the result is
-100. The ITM logit *replaces* the ITC score, it is not added to it, so the
final ranking of a query is: its top-k by ITM logit, then all the rest tied at
-100. The model-free part lives here; the caller supplies the scorer.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Union

import numpy as np
import torch

from vmm.errors import VmmError, is_whole_number

ScorePairs = Callable[[int, torch.Tensor], torch.Tensor]
NOT_SHORTLISTED = -100.0  # the official fill value for entries outside the top-k


def rerank_topk(
    itc: Union[torch.Tensor, np.ndarray],
    k: int,
    score_pairs: ScorePairs,
    batch_size: int = 32,
    direction: Literal["v2t", "t2v"] = "v2t",
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Re-rank the top-``k`` ITC candidates of every query with ``score_pairs``.

    ``itc`` is the (V, T) video->text ITC matrix for both directions. With
    ``direction="v2t"`` the queries are videos and the result is (V, T); with
    ``"t2v"`` the queries are texts, candidates are videos, and the result is
    (T, V). ``score_pairs(query_index, candidate_indices)`` gets one query and a
    LongTensor of at most ``batch_size`` candidates (in ITC top-k order) and
    returns one score per candidate (the ITM match logit). ``k`` larger than the
    number of candidates scores them all. ``progress(done, total)`` is called
    after each query row. NaN ITC scores are an error (``torch.topk`` would
    shortlist them first).

    >>> itc = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.3]])   # 2 videos x 3 texts
    >>> itm = lambda video, texts: 10.0 * video + texts.float()   # any scorer
    >>> rerank_topk(itc, k=2, score_pairs=itm)
    tensor([[   0., -100.,    2.],
            [-100.,   11.,   12.]])
    """
    if direction not in ("v2t", "t2v"):
        raise ValueError(f"direction must be 'v2t' or 't2v', got {direction!r}")
    if not all(is_whole_number(n) and n >= 1 for n in (k, batch_size)):  # topk and range refuse 2.5 and True
        raise ValueError(f"k and batch_size must be whole numbers >= 1, got k={k!r}, batch_size={batch_size!r}")
    itc = torch.as_tensor(itc).float()  # bf16 scores (the official bf16 eval) keep their values and ties in float32
    if itc.ndim != 2:
        raise ValueError(f"itc must be a 2-D (V, T) matrix, got shape {tuple(itc.shape)}")
    if torch.isnan(itc).any():  # topk ranks NaN first: the NaN pairs would fill the shortlist, unnoticed
        raise VmmError(f"itc contains {int(torch.isnan(itc).sum())} NaN scores; the model produced non-finite "
                       "outputs (check the checkpoint and the precision setting)")
    sims = itc if direction == "v2t" else itc.T
    n_queries, n_candidates = sims.shape
    k = min(int(k), n_candidates)
    result = torch.full((n_queries, n_candidates), NOT_SHORTLISTED, dtype=torch.float32, device=sims.device)
    for query in range(n_queries):
        _, topk_idx = sims[query].topk(k=k, dim=0)
        scores = []
        for start in range(0, k, batch_size):
            batch = topk_idx[start : start + batch_size]
            batch_scores = torch.as_tensor(score_pairs(query, batch))
            if batch_scores.shape != batch.shape:
                raise ValueError(
                    f"score_pairs returned shape {tuple(batch_scores.shape)} for {len(batch)} candidates"
                )
            scores.append(batch_scores.to(device=result.device, dtype=result.dtype))
        if scores:  # none for a query without candidates (no videos, or no texts): torch.cat([]) raised
            result[query, topk_idx] = torch.cat(scores)
        if progress is not None:
            progress(query + 1, n_queries)
    return result
