"""One default nprobe: the evaluation's index row probes as many IVF lists as a library's search does."""
import faiss
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from index.store import VectorStore, default_nprobe
from retrieval.index_metrics import index_metrics

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


@pytest.mark.parametrize("nlist", [8, 64])
def test_the_index_row_probes_as_many_lists_as_a_library_search(nlist, monkeypatch):
    """The row, documented as ranking "the way a video library searches", probed nlist // 8 lists (1 of 8, 8 of
    64) where a library probes clamp(nlist // 32, 16, 256): all 8 of 8, 16 of 64."""
    rng = np.random.default_rng(nlist)
    frames = F.normalize(torch.from_numpy(rng.standard_normal((640, 2, 16))).float(), dim=-1)
    texts = F.normalize(torch.from_numpy(rng.standard_normal((640, 16))).float(), dim=-1)
    row = index_metrics(frames, texts, list(range(640)), kind="ivf", nlist=nlist)

    probed = []
    real = faiss.SearchParametersIVF
    monkeypatch.setattr(faiss, "SearchParametersIVF", lambda **kw: probed.append(kw["nprobe"]) or real(**kw))
    vectors = F.normalize(torch.from_numpy(rng.standard_normal((40 * nlist, 16))).float(), dim=-1).numpy()
    store = VectorStore.build(vectors, np.arange(len(vectors)), f"IVF{nlist},Flat")
    store.search(vectors[:3], 10)
    assert (row["nlist"], row["nprobe"]) == (nlist, probed[0]) == (nlist, default_nprobe(nlist))
    assert probed == [min(16, nlist)]


def test_an_index_row_probing_every_list_is_exact():
    """With 8 lists the default probes them all, so the IVF row must rank as the flat one."""
    rng = np.random.default_rng(1)
    frames = F.normalize(torch.from_numpy(rng.standard_normal((200, 2, 16))).float(), dim=-1)
    texts = F.normalize(torch.from_numpy(rng.standard_normal((300, 16))).float(), dim=-1)
    txt2vid = [t % 200 for t in range(300)]
    ivf, flat = index_metrics(frames, texts, txt2vid, kind="ivf", nlist=8), index_metrics(frames, texts, txt2vid)
    assert (ivf["t2v"], ivf["v2t"], ivf["ann_recall@10"]) == (flat["t2v"], flat["v2t"], {"t2v": 1.0, "v2t": 1.0})
