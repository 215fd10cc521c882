"""The index row against the emb row on tied scores, and index_metrics' refusal of inputs it would misrank."""
import pytest
import torch
import torch.nn.functional as F

from retrieval.index_metrics import index_metrics, pooled_video_vectors
from retrieval.metrics import chunked_similarity, retrieval_metrics
from vmm.errors import VmmError


def tied_data():
    """12 videos (two pairs identical) and 36 texts repeating 5 captions: ties in both directions."""
    torch.manual_seed(0)
    frames = F.normalize(torch.randn(12, 4, 16), dim=-1)
    frames[7], frames[9] = frames[2], frames[4]
    texts = F.normalize(torch.randn(5, 16), dim=-1)[torch.arange(36) % 5]
    txt2vid = [t % 12 for t in range(36)]
    vid2txt = [[t for t in range(36) if txt2vid[t] == v] for v in range(12)]
    return frames, texts, txt2vid, vid2txt


def test_flat_index_row_ranks_ties_as_the_emb_row():
    """FAISS orders equal scores its own way: the v2t row was R@5 50.0 where the emb row says 41.7."""
    frames, texts, txt2vid, vid2txt = tied_data()
    row = index_metrics(frames, texts, txt2vid)
    itc = chunked_similarity(frames, texts)
    assert row["v2t"] == retrieval_metrics(itc, itc.T, txt2vid, vid2txt)["v2t"]
    library = pooled_video_vectors(frames) @ texts.T  # what a text query scores in a library
    assert row["t2v"] == retrieval_metrics(library, library.T, txt2vid, vid2txt)["t2v"]
    # an IVF index probing every list returns everything: the same ranking
    ivf = index_metrics(frames, texts, txt2vid, kind="ivf", nlist=3, nprobe=3)
    assert (ivf["t2v"], ivf["v2t"], ivf["ann_recall@10"]) == (row["t2v"], row["v2t"], {"t2v": 1.0, "v2t": 1.0})


def test_one_vector_per_video_is_one_frame():
    frames, texts, txt2vid, _ = tied_data()
    pooled = pooled_video_vectors(frames)
    assert index_metrics(pooled, texts, txt2vid) == index_metrics(pooled[:, None], texts, txt2vid)


@pytest.mark.parametrize("change, error, message", [
    (lambda f, t, o: (f, t, o[:-1]), ValueError, r"^txt2vid has 35 entries but text_emb has 36 texts"),
    (lambda f, t, o: (f, t, [99] + o[1:]), ValueError, r"^txt2vid\[0\] = \[99\] is out of range"),  # was all misses
    (lambda f, t, o: (f, t, [[0, 1]] + o[1:]), ValueError, r"^txt2vid\[0\] = \[0, 1\] names several videos"),
    (lambda f, t, o: (f, t, [0 if v == 5 else v for v in o]), ValueError, r"^video 5 has no text in txt2vid"),
    (lambda f, t, o: (f, t[:, :8], o), ValueError, r"^expected video_frames .* got \(12, 4, 16\) and \(36, 8\)$"),
    (lambda f, t, o: (f, t[:0], []), ValueError, r"^expected video_frames .* and \(0, 16\)$"),
    (lambda f, t, o: (f, t.index_fill(1, torch.tensor([0]), float("nan")), o), VmmError,
     r"^text_emb contains 36 non-finite values"),  # FAISS ranked them silently
])
def test_bad_inputs_are_refused_naming_the_argument(change, error, message):
    frames, texts, txt2vid, _ = tied_data()
    with pytest.raises(error, match=message):
        index_metrics(*change(frames, texts, txt2vid))


def test_embeddings_that_require_grad_are_evaluated():
    frames, texts, txt2vid, _ = tied_data()
    assert index_metrics(frames.requires_grad_(), texts, txt2vid) == index_metrics(frames.detach(), texts, txt2vid)
