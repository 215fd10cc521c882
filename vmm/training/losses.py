"""The pretraining losses: VTC, VTM, MLM, UTA (official ``criterions.py`` semantics) and distillation.

Similarities are the official ITC: mean over frames of the per-frame cosine, divided by ``temp`` in training.
Contrastive features are all-gathered across processes as the official ``AllGather`` does: each process
computes the loss of the whole global batch and its backward keeps only the gradient of its own slice. After
data-parallel averaging the features' VTC gradient is therefore the single-process gradient on the
concatenated batch divided by the number of processes (``temp``, not gathered, gets the full gradient); the
released checkpoints were trained that way, so VTC weighs 1/16 (5M) or 1/32 (17M, 25M) of its nominal weight
against the local VTM, MLM and UTA losses. ``loss.vtc`` = the process count gives the features the single-process
gradient (and ``temp`` that many times its own).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward returns this process's own gradient of its slice (the official
    ``AllGather``: no all-reduce, the other processes' gradients of that slice are dropped)."""

    @staticmethod
    def forward(ctx, x: Tensor, rank: int, world: int) -> Tensor:
        ctx.rank, ctx.batch = rank, x.shape[0]
        return gather_no_grad(x, world)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad[ctx.rank * ctx.batch:(ctx.rank + 1) * ctx.batch], None, None


def gather_with_grad(x: Tensor, rank: int, world: int) -> Tensor:
    """Concatenate ``x`` from all ``world`` processes in rank order (equal shapes); identity when world == 1."""
    return x if world == 1 else _GatherWithGrad.apply(x, rank, world)


def gather_no_grad(x: Tensor, world: int) -> Tensor:
    """Concatenate ``x`` from all ``world`` processes in rank order (equal shapes), without a backward."""
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def similarity(video: Tensor, text: Tensor) -> Tensor:
    """(Bv, T, E) unit frame vectors x (Bt, E) unit text vectors -> (Bv, Bt) mean-over-frames cosine."""
    return torch.einsum("vfe,te->vtf", video.float(), text.float()).mean(-1)


def positives(idx_a: Tensor, idx_b: Tensor) -> Tensor:
    """(A, B) bool: same sample id (several captions of one video are all positives)."""
    return idx_a.view(-1, 1) == idx_b.view(1, -1)


def vtc_loss(video: Tensor, text: Tensor, idx: Tensor, temp: Tensor, rank: int = 0, world: int = 1) -> Tensor:
    """Symmetric InfoNCE over the global batch with row-normalised multi-positive targets.

    ``video`` (B, T, E) and ``text`` (B, E) are this process's unit vectors, ``idx`` (B,) sample ids.

    >>> v = F.normalize(torch.randn(4, 2, 8), dim=-1); t = F.normalize(torch.randn(4, 8), dim=-1)
    >>> float(vtc_loss(v, t, torch.arange(4), torch.tensor(0.07))) > 0
    True
    """
    video_all = gather_with_grad(video, rank, world)
    text_all = gather_with_grad(text, rank, world)
    idx_all = gather_no_grad(idx, world)
    sim_v2t = similarity(video_all, text_all) / temp
    with torch.no_grad():
        pos = positives(idx_all, idx_all).float()
        targets = pos / pos.sum(1, keepdim=True)  # symmetric: the same targets serve t2v
    loss_v2t = -(F.log_softmax(sim_v2t, dim=1) * targets).sum(1).mean()
    loss_t2v = -(F.log_softmax(sim_v2t.t(), dim=1) * targets).sum(1).mean()
    return (loss_v2t + loss_t2v) / 2


def sample_hard_negatives(sim_v2t: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """One negative text per video and one negative video per text, drawn from softmax(sim) over non-positives.

    Masking positives with -inf before the softmax is the official masked softmax renormalised; a row keeps
    a valid distribution whenever the batch holds another sample id. Returns (neg_text_of_video,
    neg_video_of_text) index tensors.

    >>> idx = torch.tensor([0, 0, 1, 2])
    >>> neg_t, neg_v = sample_hard_negatives(torch.randn(4, 4), idx)
    >>> bool((idx[neg_t] != idx).all() and (idx[neg_v] != idx).all())
    True
    """
    pos = positives(idx, idx)
    logits = sim_v2t.float().masked_fill(pos, float("-inf"))
    neg_text = torch.multinomial(F.softmax(logits, dim=1), 1).squeeze(1)
    neg_video = torch.multinomial(F.softmax(logits.t(), dim=1), 1).squeeze(1)
    return neg_text, neg_video


def vtm_loss(model, video_tokens: Tensor, text_hidden: Tensor, attention_mask: Tensor, video: Tensor,
             text: Tensor, idx: Tensor, temp: Tensor) -> Tensor:
    """Hard-negative matching: B positives, B (negative video, text), B (video, negative text) through fusion.

    Local to the process, as in the official code. A batch holding one sample id only (captions of one
    video) has no negative: it is scored on its positive pairs alone, so every parameter still gets a
    gradient (data-parallel training requires it).
    """
    if torch.unique(idx).numel() < 2:
        logits = model.itm_logits(video_tokens, text_hidden, attention_mask).float()
        return F.cross_entropy(logits, torch.ones(len(idx), dtype=torch.long, device=logits.device))
    with torch.no_grad():
        neg_text, neg_video = sample_hard_negatives(similarity(video, text) / temp, idx)
    tokens = torch.cat([video_tokens, video_tokens[neg_video], video_tokens], dim=0)
    hidden = torch.cat([text_hidden, text_hidden, text_hidden[neg_text]], dim=0)
    att = torch.cat([attention_mask, attention_mask, attention_mask[neg_text]], dim=0)
    logits = model.itm_logits(tokens, hidden, att).float()
    B = idx.shape[0]
    labels = torch.cat([torch.ones(B), torch.zeros(2 * B)]).long().to(logits.device)
    return F.cross_entropy(logits, labels)


def mask_tokens(input_ids: Tensor, attention_mask: Tensor, prob: float, vocab_size: int, mask_id: int,
                special_ids: tuple[int, ...], generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """BERT masking: choose tokens with ``prob`` (never padding or special ids); of those 80% -> [MASK],
    10% -> a random id, 10% unchanged. Returns (masked ids, labels with -100 on unchosen tokens).

    >>> ids = torch.tensor([[101, 2023, 2003, 102, 0]])
    >>> masked, labels = mask_tokens(ids, (ids != 0).long(), 1.0, 30522, 103, (101, 102, 0))
    >>> labels.tolist()
    [[-100, 2023, 2003, -100, -100]]
    """
    dev = input_ids.device
    chosen = torch.rand(input_ids.shape, device=dev, generator=generator) < prob
    chosen &= attention_mask.bool()
    for sid in special_ids:
        chosen &= input_ids != sid
    labels = input_ids.masked_fill(~chosen, -100)
    roll = torch.rand(input_ids.shape, device=dev, generator=generator)
    to_mask = chosen & (roll < 0.8)
    to_random = chosen & (roll >= 0.8) & (roll < 0.9)
    random_ids = torch.randint(vocab_size, input_ids.shape, device=dev, generator=generator)
    masked = input_ids.masked_fill(to_mask, mask_id)
    masked = torch.where(to_random, random_ids, masked)
    return masked, labels


def mlm_loss(model, input_ids: Tensor, attention_mask: Tensor, video_tokens: Tensor, prob: float,
             mask_id: int, special_ids: tuple[int, ...]) -> Tensor:
    """Masked language modelling conditioned on the video: text layers, fusion layers, then the MLM head."""
    enc = model.text_encoder
    masked, labels = mask_tokens(input_ids, attention_mask, prob, enc.config.vocab_size, mask_id, special_ids)
    hidden = enc.forward_text(masked, attention_mask)
    fused = enc.forward_fusion(hidden, attention_mask, video_tokens)
    chosen = labels != -100
    if not chosen.any():  # tiny batches of short captions can draw no token: a zero through the head
        return enc.mlm_logits(fused[:, 0]).float().sum() * 0.0
    logits = enc.mlm_logits(fused[chosen]).float()
    return F.cross_entropy(logits, labels[chosen])


def uta_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Unmasked token alignment: mean(2 - 2 cos) of the student's visible tokens and the teacher's.

    ``student`` (K, B, N, D) from the vision encoder's CLIP decoder(s); ``teacher`` (B, N, D).

    >>> t = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # one clip, two tokens
    >>> float(uta_loss(torch.tensor([[[[3.0, 0.0], [1.0, 0.0]]]]), t))  # cos 1 and 0: (0 + 2) / 2
    1.0
    """
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.float(), dim=-1).unsqueeze(0)
    return (2 - 2 * (s * t).sum(-1)).mean()


def distill_loss(student: Tensor, teacher: Tensor, kind: str = "cosine") -> Tensor:
    """Feature distillation from a frozen teacher: mean(1 - cos) or MSE of (B, D) features.

    >>> s, t = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    >>> round(float(distill_loss(s, t)), 4), float(distill_loss(s, t, "mse"))
    (0.2929, 1.0)
    """
    if kind == "cosine":
        return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()
    return F.mse_loss(student.float(), teacher.float())
