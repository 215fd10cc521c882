"""ITC -> ITM re-ranking: which pairs get scored, in what batches, and what the matrix holds."""
import json

import numpy as np
import pytest
import torch

from retrieval.metrics import retrieval_metrics, to_official_keys
from retrieval.rerank import NOT_SHORTLISTED, rerank_topk
from vmm.errors import VmmError

# 3 videos x 6 texts, all scores distinct so the top-k sets are unambiguous.
ITC = torch.tensor(
    [
        [0.10, 0.90, 0.30, 0.80, 0.20, 0.70],  # top-4 texts: 1, 3, 5, 2
        [0.60, 0.05, 0.50, 0.15, 0.40, 0.35],  # top-4 texts: 0, 2, 4, 5
        [0.25, 0.45, 0.95, 0.55, 0.85, 0.65],  # top-4 texts: 2, 4, 5, 3
    ]
)


class RecordingScorer:
    """Deterministic ITM stand-in: score = 100 * query + candidate, and a log of every call."""

    def __init__(self):
        self.calls: list[tuple[int, list[int]]] = []

    def __call__(self, query: int, candidates: torch.Tensor) -> torch.Tensor:
        assert candidates.dtype == torch.long and candidates.ndim == 1
        self.calls.append((query, candidates.tolist()))
        return 100.0 * query + candidates.to(torch.float32)

    def asked(self, query: int) -> list[int]:
        return [c for q, batch in self.calls if q == query for c in batch]


def test_v2t_scores_exactly_the_top_k_in_batches_and_replaces_the_itc_score():
    scorer = RecordingScorer()
    out = rerank_topk(ITC, k=4, score_pairs=scorer, batch_size=3, direction="v2t")
    # Each query's top-4, in ITC order, split into batches of 3 and 1.
    assert scorer.calls == [
        (0, [1, 3, 5]), (0, [2]),
        (1, [0, 2, 4]), (1, [5]),
        (2, [2, 4, 5]), (2, [3]),
    ]
    n = NOT_SHORTLISTED
    expected = torch.tensor(
        [
            [n, 1.0, 2.0, 3.0, n, 5.0],
            [100.0, n, 102.0, n, 104.0, 105.0],
            [n, n, 202.0, 203.0, 204.0, 205.0],
        ]
    )
    assert out.dtype == torch.float32
    assert torch.equal(out, expected)  # the ITM value replaces ITC; nothing is added


def test_t2v_ranks_videos_per_text_from_the_same_v2t_itc_matrix():
    scorer = RecordingScorer()
    out = rerank_topk(ITC, k=2, score_pairs=scorer, batch_size=32, direction="t2v")
    assert out.shape == (6, 3)
    # Text t's candidates are the columns of ITC: e.g. text 0 [.10 .60 .25] -> videos 1, 2.
    expected_topk = {0: [1, 2], 1: [0, 2], 2: [2, 1], 3: [0, 2], 4: [2, 1], 5: [0, 2]}
    assert scorer.calls == list(expected_topk.items())
    expected = torch.full((6, 3), NOT_SHORTLISTED)
    for text, videos in expected_topk.items():
        for video in videos:
            expected[text, video] = 100.0 * text + video
    assert torch.equal(out, expected)


@pytest.mark.parametrize("batch_size", [1, 2, 5, 32])
def test_every_batch_is_at_most_batch_size_and_no_pair_is_asked_twice(batch_size):
    scorer = RecordingScorer()
    itc = torch.randn(7, 23)
    rerank_topk(itc, k=11, score_pairs=scorer, batch_size=batch_size)
    assert all(1 <= len(batch) <= batch_size for _, batch in scorer.calls)
    for video in range(7):
        asked = scorer.asked(video)
        assert asked == itc[video].topk(11).indices.tolist()
        assert len(set(asked)) == 11


def test_k_larger_than_the_candidates_scores_every_pair():
    scorer = RecordingScorer()
    out = rerank_topk(ITC.numpy(), k=128, score_pairs=scorer, batch_size=4, direction="v2t")
    assert sorted(scorer.asked(1)) == list(range(6))
    assert (out != NOT_SHORTLISTED).all()
    assert torch.equal(out, 100.0 * torch.arange(3.0)[:, None] + torch.arange(6.0)[None, :])


def test_reproduces_the_official_itm_matrices_of_the_golden_fixture(reference_dir):
    golden = np.load(reference_dir / "videomamba_golden_mm_tiny.npz", allow_pickle=False)
    itm_logits = torch.from_numpy(golden["out/itm_logits"])  # (V, T, 2): the official ITM head outputs
    itc = torch.from_numpy(golden["out/itc_v2t"])

    def v2t_scorer(video, texts):
        return itm_logits[video, texts, 1]

    def t2v_scorer(text, videos):
        return itm_logits[videos, text, 1]

    # The fixture used k_test=128 >= N, so every pair is scored and no -100 remains.
    i2t = rerank_topk(itc, k=128, score_pairs=v2t_scorer, direction="v2t")
    t2i = rerank_topk(itc, k=128, score_pairs=t2v_scorer, direction="t2v")
    assert torch.equal(i2t, torch.from_numpy(golden["out/itm_v2t"]))
    assert torch.equal(t2i, torch.from_numpy(golden["out/itm_t2v"]))
    txt2vid = json.loads(str(golden["input/txt2img_json"]))
    vid2txt = json.loads(str(golden["input/img2txt_json"]))
    official = json.loads(str(golden["out/metrics_itm_json"]))
    assert to_official_keys(retrieval_metrics(i2t, t2i, txt2vid, vid2txt)) == official


def test_reranking_changes_recall_only_inside_the_shortlist():
    # Video i's GT is text i. ITC gets video 0 wrong (text 1 first); ITM fixes it, but video 2's GT
    # (text 2) is outside its top-2 shortlist, so no ITM score can rescue it.
    itc = torch.tensor([[0.5, 0.6, 0.1], [0.2, 0.9, 0.1], [0.8, 0.7, 0.1]])
    itm = torch.tensor([[5.0, 1.0, 9.0], [1.0, 5.0, 0.0], [3.0, 4.0, 99.0]])
    scorer = lambda video, texts: itm[video, texts]  # noqa: E731
    i2t = rerank_topk(itc, k=2, score_pairs=scorer, direction="v2t")
    assert i2t[2, 2] == NOT_SHORTLISTED
    m_itc = retrieval_metrics(itc, itc.T, [0, 1, 2], [[0], [1], [2]])
    m_itm = retrieval_metrics(i2t, i2t.T, [0, 1, 2], [[0], [1], [2]])
    assert m_itc["v2t"]["R@1"] == pytest.approx(100 / 3)
    assert m_itm["v2t"]["R@1"] == pytest.approx(200 / 3)


def test_progress_and_bad_arguments():
    seen = []
    rerank_topk(ITC, k=1, score_pairs=RecordingScorer(), progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    with pytest.raises(ValueError, match="direction"):
        rerank_topk(ITC, k=1, score_pairs=RecordingScorer(), direction="both")
    with pytest.raises(ValueError, match="k and batch_size"):
        rerank_topk(ITC, k=0, score_pairs=RecordingScorer())
    with pytest.raises(ValueError, match="returned shape"):
        rerank_topk(ITC, k=3, score_pairs=lambda q, c: torch.zeros(1))
    for k, batch_size in ((2.5, 32), (True, 32), (2, 1.5)):  # were TypeErrors from inside torch.topk and range
        with pytest.raises(ValueError, match=r"^k and batch_size must be whole numbers >= 1"):
            rerank_topk(ITC, k=k, score_pairs=RecordingScorer(), batch_size=batch_size)
    assert torch.equal(rerank_topk(ITC, k=np.int64(2), score_pairs=RecordingScorer()),
                       rerank_topk(ITC, k=2, score_pairs=RecordingScorer()))


def test_nan_itc_scores_are_refused_not_shortlisted_first():
    """torch.topk ranks NaN above every score: the NaN pair took a shortlist place and its ITM logit hid the NaN."""
    itc = ITC.clone()
    itc[0, 0] = float("nan")
    with pytest.raises(VmmError, match=r"^itc contains 1 NaN scores; the model produced non-finite outputs"):
        rerank_topk(itc, k=1, score_pairs=RecordingScorer(), direction="t2v")


def test_docstring_examples_run():
    import doctest

    import retrieval.rerank

    result = doctest.testmod(retrieval.rerank)
    assert result.attempted > 0 and result.failed == 0
