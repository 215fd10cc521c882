"""The pretraining objectives against their definitions (spec 3.4), derived here independently: VTC's gradient in
closed form, the distributions that VTM's hard negatives, the UTA attention mask and MLM's choice of tokens are
drawn from, and which losses two processes share (VTC, all-gathered) and which each keeps to its own batch (VTM)."""
from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import vmm
from tests.test_train_losses import SPECIALS, TEXT, VISION, real_batch, tiny_model  # noqa: F401 (fixture)
from vmm.training import losses
from vmm.training.config import LossSection
from vmm.training.launch import reserved_port
from vmm.training.objective import PretrainObjective
from vmm.training.teacher import attention_guided_mask


def test_vtc_gradient_is_softmax_minus_targets_in_both_directions():
    """With S = mean_f <v_f, t> / temp and Y the row-normalised same-id matrix, the loss (CE_v2t + CE_t2v) / 2 has
    dL/dS = (softmax_rows(S) - Y + (softmax_rows(S^T) - Y)^T) / 2B; the features and temp get it by the chain rule."""
    torch.manual_seed(0)
    B, T, E = 5, 2, 8
    v = F.normalize(torch.randn(B, T, E), dim=-1).requires_grad_()
    t = F.normalize(torch.randn(B, E), dim=-1).requires_grad_()
    temp = torch.tensor(0.1, requires_grad=True)
    idx = torch.tensor([3, 1, 3, 2, 1])
    loss = losses.vtc_loss(v, t, idx, temp)
    loss.backward()
    with torch.no_grad():
        S = torch.einsum("vfe,te->vt", v, t) / T / temp
        Y = (idx[:, None] == idx[None]).float()
        Y = Y / Y.sum(1, keepdim=True)
        G = (S.softmax(1) - Y + (S.t().softmax(1) - Y).t()) / (2 * B)
        expected_v = (G @ t / (T * temp)).unsqueeze(1).expand(B, T, E)
        expected_t = torch.einsum("vt,vfe->te", G, v) / (T * temp)
        expected_temp = -(G * S).sum() / temp
    assert torch.allclose(v.grad, expected_v, atol=1e-5)
    assert torch.allclose(t.grad, expected_t, atol=1e-5)
    assert torch.allclose(temp.grad, expected_temp, rtol=1e-4)


def test_hard_negatives_are_drawn_in_proportion_to_the_softmax_over_other_samples():
    """Official VTM: weights softmax(sim / temp) with every same-id entry zeroed, then one draw per row (a text per
    video) and per column (a video per text). 20 copies of one 6-sample batch sit in a batch of 120 whose
    similarities across copies are -1e4 (weight exactly 0), so each call draws every copy's rows independently:
    over 4,000 draws each frequency is within 4.5 sigma of its weight."""
    gen = torch.Generator().manual_seed(1)
    idx = torch.tensor([0, 1, 0, 2, 1, 3])
    sim = torch.randn(6, 6, generator=gen) * 1.5
    same = idx[:, None] == idx[None]
    expected_text = torch.where(same, 0.0, sim.exp())
    expected_text /= expected_text.sum(1, keepdim=True)
    expected_video = torch.where(same, 0.0, sim.t().exp())
    expected_video /= expected_video.sum(1, keepdim=True)
    copies, calls = 20, 200
    big_idx = (torch.arange(copies)[:, None] * 10 + idx).reshape(-1)
    big_sim = torch.full((copies, 6, copies, 6), -1e4)
    big_sim[torch.arange(copies), :, torch.arange(copies)] = sim
    big_sim = big_sim.reshape(6 * copies, 6 * copies)
    torch.manual_seed(2)
    text_counts, video_counts = torch.zeros(6, 6), torch.zeros(6, 6)
    rows = torch.arange(6).repeat(copies)
    for _ in range(calls):
        neg_text, neg_video = losses.sample_hard_negatives(big_sim, big_idx)
        for counts, neg in ((text_counts, neg_text), (video_counts, neg_video)):
            assert (neg // 6 == torch.arange(6 * copies) // 6).all()  # within its own copy
            counts.index_put_((rows, neg % 6), torch.ones(len(neg)), accumulate=True)
    n = copies * calls
    for counts, expected in ((text_counts, expected_text), (video_counts, expected_video)):
        assert not counts[same].any()  # the positive and the other captions of its video: never
        sigma = (expected * (1 - expected) / n).sqrt()
        assert ((counts / n - expected).abs() <= 4.5 * sigma + 1e-9).all(), (counts / n, expected)


def test_attention_mask_draws_visible_patches_as_sequential_draws_without_replacement():
    """Official encode_teacher: per frame, a multinomial without replacement over the CLS->patch attention, the first
    N - int(N * ratio) kept. With 4 patches and ratio 0.5, patch i is visible with probability
    sum over ordered pairs (a, b) holding i of w_a * w_b / (1 - w_a), each frame keeping exactly 2."""
    w = torch.tensor([0.5, 0.3, 0.15, 0.05])
    inclusion = torch.zeros(4)
    for a, b in itertools.permutations(range(4), 2):
        p = w[a] * w[b] / (1 - w[a])
        inclusion[a] += p
        inclusion[b] += p
    torch.manual_seed(3)
    attn = (w * 0.7).expand(200, 100, 4).contiguous()  # unnormalised, as the teacher's share of its softmax
    mask = attention_guided_mask(attn, 0.5)
    visible = ~mask[:, 1:].reshape(200, 100, 4)
    assert not mask[:, 0].any() and (visible.sum(-1) == 2).all()
    freq = visible.float().mean((0, 1))
    assert (freq - inclusion).abs().max() < 0.01, (freq, inclusion)  # 20,000 frames: sigma <= 0.0035


def test_mlm_chooses_each_eligible_token_independently():
    """Official MLM: a Bernoulli(prob) per token, so a caption with n eligible tokens has Binomial(n, prob) of them
    chosen (mean n p, variance n p (1 - p)), not a fixed share of each caption."""
    n_rows, length = 6000, 12
    ids = torch.randint(1000, 30000, (n_rows, length), generator=torch.Generator().manual_seed(4))
    ids[:, 0], ids[:, 11] = 101, 102  # CLS, 10 words, SEP: 11 eligible tokens
    att = torch.ones_like(ids)
    for prob in (0.5, 0.15):
        _, labels = losses.mask_tokens(ids, att, prob, 30522, 103, (0, 101), generator=torch.Generator().manual_seed(5))
        chosen = (labels != -100).sum(1).float()
        mean, var = 11 * prob, 11 * prob * (1 - prob)
        assert abs(chosen.mean() - mean) < 0.06 and abs(chosen.var() - var) < 0.15 * var, (chosen.mean(), chosen.var())


def _first_negatives(sim, idx):
    """Deterministic stand-in for the multinomial draw: the most similar other sample, so two runs agree."""
    other = sim.float().masked_fill(losses.positives(idx, idx), float("-inf"))
    return other.argmax(1), other.t().argmax(1)


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        losses.sample_hard_negatives = _first_negatives
        model = vmm.create_model("vmm_nano", vision=VISION, text=TEXT, embed_dim=32)
        model.load_state_dict(torch.load(Path(folder) / "model.pt"))
        objective = PretrainObjective(model.eval(), LossSection(vtc=1.0, vtm=1.0, mlm=0.0), 103, SPECIALS)
        batch = torch.load(Path(folder) / "batch.pt")
        part = {k: v.chunk(world)[rank] for k, v in batch.items()}
        with torch.no_grad():
            out = objective(part["video"], part["input_ids"], part["attention_mask"], part["sample_id"], rank=rank,
                            world=world)
        torch.save({k: v.detach() for k, v in out.items()}, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_share_vtc_but_each_keeps_its_own_vtm(real_batch, tmp_path, monkeypatch):  # noqa: F811
    """Official: VTC over the all-gathered batch (every process the same value, the single-process loss of the
    concatenated batch), VTM on each process's own clips and captions, its negatives drawn from them alone."""
    import torch.multiprocessing as mp
    model = tiny_model().eval()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    torch.save(real_batch, tmp_path / "batch.pt")
    with reserved_port() as held:
        mp.spawn(_worker, args=(2, held.getsockname()[1], str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    monkeypatch.setattr(losses, "sample_hard_negatives", _first_negatives)
    objective = PretrainObjective(model, LossSection(vtc=1.0, vtm=1.0, mlm=0.0), 103, SPECIALS)
    keys = ("video", "input_ids", "attention_mask", "sample_id")
    with torch.no_grad():
        whole = objective(*(real_batch[k] for k in keys))
        halves = [objective(*(real_batch[k].chunk(2)[r] for k in keys)) for r in range(2)]
    for r in range(2):
        assert torch.allclose(ranks[r]["vtc"], whole["vtc"], atol=1e-6)
        assert torch.allclose(ranks[r]["vtm"], halves[r]["vtm"], atol=1e-6)
    # the halves' VTM differs from the whole batch's (other negatives): the check above can tell them apart
    assert not torch.allclose(halves[0]["vtm"], whole["vtm"], atol=1e-4)
