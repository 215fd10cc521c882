"""Pretraining losses, teachers and optimizer groups on a tiny real model.

The distributed test runs a real 2-process gloo group: the gathered contrastive loss must equal the
single-process loss on the concatenated batch, and the data-parallel gradients the official ones (features:
the single-process gradient divided by the process count, as the official AllGather gives; temp: in full).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import vmm
from vmm.errors import VmmError
from vmm.training import losses
from vmm.training.config import LossSection
from vmm.training.objective import PretrainObjective
from vmm.training.optim import freeze, lr_factor, no_weight_decay_names, param_groups
from vmm.training.launch import reserved_port

TEXT = dict(init_from=None, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            fusion_layer=1, max_position_embeddings=64, mlm_head=True)
VISION = dict(depth=2, embed_dim=64, img_size=32, num_frames=4, clip_output_dim=32)
SPECIALS = (0, 101, 102)  # PAD, CLS, SEP


def tiny_model():
    torch.manual_seed(0)
    return vmm.create_model("vmm_nano", vision=VISION, text=TEXT, embed_dim=32)


# -- MLM -------------------------------------------------------------------------------------------------
def test_mlm_masking_statistics_and_specials():
    gen = torch.Generator().manual_seed(0)
    n, length = 4000, 16
    lengths = torch.randint(4, length + 1, (n,), generator=gen)
    ids = torch.randint(1000, 30000, (n, length), generator=gen)
    att = (torch.arange(length)[None] < lengths[:, None]).long()
    ids[att == 0] = 0
    ids[:, 0] = 101
    ids[torch.arange(n), lengths - 1] = 102
    masked, labels = losses.mask_tokens(ids, att, 0.5, 30522, 103, SPECIALS, generator=gen)
    chosen = labels != -100
    eligible = (att == 1) & (ids != 101) & (ids != 102)
    assert not chosen[~eligible].any()  # never PAD, CLS or SEP
    assert (masked[~chosen] == ids[~chosen]).all() and (labels[chosen] == ids[chosen]).all()
    rate = chosen.sum() / eligible.sum()
    to_mask = (masked == 103) & chosen
    unchanged = (masked == ids) & chosen
    changed = chosen & ~to_mask & ~unchanged
    k = chosen.sum()
    assert abs(rate - 0.5) < 0.01
    assert abs(to_mask.sum() / k - 0.8) < 0.01
    assert abs(unchanged.sum() / k - 0.1) < 0.01  # a random id equal to the original is ~1 in 30522
    assert abs(changed.sum() / k - 0.1) < 0.01


def test_mlm_loss_runs_through_text_fusion_and_head():
    model = tiny_model()
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102, 0, 0]] * 2)
    att = (ids != 0).long()
    x_vis = torch.randn(2, 16, 64, requires_grad=True)
    loss = losses.mlm_loss(model, ids, att, x_vis, 1.0, 103, SPECIALS)
    loss.backward()
    assert abs(float(loss.detach()) - torch.log(torch.tensor(30522.0))) < 1.5  # near-uniform at init
    assert x_vis.grad.abs().sum() > 0  # conditioned on the video through the fusion layers
    assert model.text_encoder.encoder.layer[1].crossattention.self.key.weight.grad is not None


# -- VTM -------------------------------------------------------------------------------------------------
def test_hard_negatives_are_never_positives_and_follow_similarity():
    idx = torch.tensor([0, 0, 1, 2, 3, 3])
    sim = torch.zeros(6, 6)
    sim[0, 2] = sim[2, 0] = 5.0  # video 0's hardest negative text is 2, and text 0's hardest video is 2
    counts = torch.zeros(6)
    for _ in range(300):
        neg_text, neg_video = losses.sample_hard_negatives(sim, idx)
        assert (idx[neg_text] != idx).all() and (idx[neg_video] != idx).all()
        counts[neg_text[0]] += 1
    assert counts[2] > 250  # e^5 / (e^5 + 3) = 0.98


def test_vtm_feeds_3b_pairs_with_negatives_from_other_samples(monkeypatch):
    model = tiny_model()
    B = 4
    idx = torch.tensor([7, 7, 8, 9])
    video_tokens = torch.arange(B).float().view(B, 1, 1).expand(B, 5, 64).clone()
    text_hidden = torch.arange(B).float().view(B, 1, 1).expand(B, 6, 64).clone()
    seen = {}

    def fake_itm_logits(tokens, hidden, att):
        seen.update(video=tokens[:, 0, 0].long(), text=hidden[:, 0, 0].long())
        return torch.zeros(tokens.shape[0], 2, requires_grad=True)
    monkeypatch.setattr(model, "itm_logits", fake_itm_logits)
    emb = F.normalize(torch.randn(B, 2, 32), dim=-1)
    loss = losses.vtm_loss(model, video_tokens, text_hidden, torch.ones(B, 6, dtype=torch.long), emb,
                           F.normalize(torch.randn(B, 32), dim=-1), idx, torch.tensor(0.07))
    v, t = seen["video"], seen["text"]
    assert len(v) == 3 * B and abs(float(loss.detach()) - torch.log(torch.tensor(2.0))) < 1e-6
    assert (v[:B] == torch.arange(B)).all() and (t[:B] == torch.arange(B)).all()  # positives
    assert (idx[v[B:2 * B]] != idx[t[B:2 * B]]).all()  # negative video for each text
    assert (idx[v[2 * B:]] != idx[t[2 * B:]]).all()  # negative text for each video


# -- VTC -------------------------------------------------------------------------------------------------
def test_vtc_multi_positive_targets_match_a_direct_computation():
    torch.manual_seed(1)
    v = F.normalize(torch.randn(5, 3, 16), dim=-1)
    t = F.normalize(torch.randn(5, 16), dim=-1)
    idx = torch.tensor([0, 1, 0, 2, 1])
    temp = torch.tensor(0.05)
    sim = torch.stack([torch.stack([(v[i] @ t[j]).mean() for j in range(5)]) for i in range(5)]) / temp
    expected = 0.0
    for logits in (sim, sim.t()):
        for i in range(5):
            pos = [j for j in range(5) if idx[j] == idx[i]]
            expected += -torch.log_softmax(logits[i], 0)[pos].mean() / 10
    assert torch.allclose(losses.vtc_loss(v, t, idx, temp), expected, atol=1e-6)


def _distributed_worker(rank: int, world: int, port: int, folder: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = vmm.create_model("vmm_nano", vision=VISION, text=TEXT, embed_dim=32)
        model.load_state_dict(torch.load(Path(folder) / "model.pt"))
        objective = PretrainObjective(model.eval(), LossSection(vtc=1.0, vtm=0.0, mlm=0.0), 103, SPECIALS)
        ddp = DistributedDataParallel(objective, find_unused_parameters=True)
        batch = torch.load(Path(folder) / "batch.pt")
        part = {k: v.chunk(world)[rank] for k, v in batch.items()}
        out = ddp(part["video"], part["input_ids"], part["attention_mask"], part["sample_id"], rank=rank,
                  world=world)
        out["loss"].backward()
        grads = {n: p.grad for n, p in objective.named_parameters() if p.grad is not None}
        torch.save({"loss": out["loss"].detach(), "grads": grads}, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def real_batch(tmp_path_factory):
    """Four decoded clips of three videos (video 0 has two captions: sample ids 0, 1, 0, 2)."""
    from vmm.data.synthetic import generate_corpus
    from vmm.training.data import Collate, PretrainDataset, load_annotation_corpus
    from vmm.transforms import TrainTransform
    root = tmp_path_factory.mktemp("vtc")
    generate_corpus(root, num_videos=6, seed=3, size=32, seconds=1.0, workers=1)
    entries = json.loads((root / "train.json").read_text())[:3]
    entries[0]["caption"] = [entries[0]["caption"], "another caption of the first video"]
    (root / "three.json").write_text(json.dumps(entries))
    corpus = load_annotation_corpus(str(root / "three.json"), str(root))
    dataset = PretrainDataset([corpus], 4, TrainTransform(32), seed=0, caption_sampling="all")
    keys = [(0, 0, 0), (0, 0, 2), (0, 0, 1), (0, 0, 3)]  # units: (v0,c0) (v0,c1) (v1) (v2)
    batch = Collate(vmm.get_tokenizer("vmm_nano"), 16)([dataset[k] for k in keys])
    del batch["failed"]
    assert batch["sample_id"].tolist() == [0, 1, 0, 2]
    return batch


def test_two_process_gathered_vtc_has_the_official_loss_and_gradients(real_batch, tmp_path):
    """The official AllGather's backward returns each process its own gradient of its slice (no all-reduce), so
    after DDP averaging the features' VTC gradient is 1/world of the single-process one; temp, used whole on
    every process, keeps its full gradient. (vmm used to all-reduce there: world times the official gradient.)"""
    import torch.multiprocessing as mp
    model = tiny_model().eval()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    torch.save(real_batch, tmp_path / "batch.pt")
    with reserved_port() as held:
        mp.spawn(_distributed_worker, args=(2, held.getsockname()[1], str(tmp_path)), nprocs=2, join=True)

    objective = PretrainObjective(model, LossSection(vtc=1.0, vtm=0.0, mlm=0.0), 103, SPECIALS)
    out = objective(real_batch["video"], real_batch["input_ids"], real_batch["attention_mask"],
                    real_batch["sample_id"])
    out["loss"].backward()
    single = {n: p.grad for n, p in objective.named_parameters() if p.grad is not None}
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for r in ranks:  # every process computes the loss of the whole global batch
        assert abs(float(r["loss"]) - float(out["loss"].detach())) < 1e-6
    assert set(ranks[0]["grads"]) == set(single)
    for name, grad in single.items():  # DDP averages the processes' gradients of their own slices
        expected = grad if name == "model.temp" else grad / 2
        scale = float(expected.abs().max())  # fp32 rounding of two half-batch sums, relative to the tensor's size
        for r in ranks:
            assert torch.allclose(r["grads"][name], expected, rtol=1e-4, atol=1e-5 * scale + 1e-9), name
    assert single["model.temp"].abs() > 0 and single["model.vision_encoder.patch_embed.proj.weight"].abs().sum() > 0


# -- UTA and teachers ------------------------------------------------------------------------------------
def tiny_teacher(image_size=32, weights=None):
    from vmm.training.teacher import ClipTeacher
    torch.manual_seed(0)
    return ClipTeacher("ViT-B-16", image_size, weights, True, {
        "embed_dim": 32, "vision_cfg": {"layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}})


def test_clip_teacher_tokens_attention_and_weight_loading(tmp_path):
    teacher = tiny_teacher()
    video = torch.randn(2, 3, 4, 32, 32)
    tokens, attn = teacher(video)
    assert tokens.shape == (2, 1 + 4 * 4, 32) and attn.shape == (2, 4, 4)
    assert torch.allclose(tokens.norm(dim=-1), torch.ones(2, 17), atol=1e-5)
    assert (attn > 0).all() and (attn.sum(-1) < 1).all()  # CLS->patch share of a softmax over CLS + patches
    frame2, _ = teacher(video[:, :, 2:3])  # frames are independent; patches in spatial-first order
    assert torch.allclose(frame2[:, 1:], tokens[:, 1 + 2 * 4:1 + 3 * 4], atol=1e-5)
    assert not any(p.requires_grad for p in teacher.parameters())
    torch.save({"visual." + k: v for k, v in teacher.visual.state_dict().items()}, tmp_path / "clip.pt")
    bigger = tiny_teacher(image_size=48, weights=tmp_path / "clip.pt")  # position table resized to 3x3
    assert bigger.visual.positional_embedding.shape == (10, 64)
    assert torch.equal(bigger.visual.conv1.weight, teacher.visual.conv1.weight)
    # the teacher inside an official multimodal checkpoint (clip_teacher.*, Conv3d patchify) is kept on resume
    official = {"clip_teacher." + k: (v.unsqueeze(2) if k == "conv1.weight" else v)
                for k, v in teacher.visual.state_dict().items()}
    official["vision_encoder.cls_token"] = torch.zeros(1, 1, 64)
    torch.save({"model": official}, tmp_path / "videomamba_m16_5M_f8_res224.pth")
    resumed = tiny_teacher(weights=tmp_path / "videomamba_m16_5M_f8_res224.pth")
    assert all(torch.equal(a, b) for a, b in zip(resumed.visual.state_dict().values(),
                                                 teacher.visual.state_dict().values()))


def test_clip_teacher_takes_the_students_pixels_as_the_official_one():
    from vmm.training.teacher import ClipTeacher
    official = tiny_teacher()
    renorm = ClipTeacher("ViT-B-16", 32, None, True, {
        "embed_dim": 32, "vision_cfg": {"layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}},
        renormalize=True)
    renorm.load_state_dict(official.state_dict())
    video = torch.randn(2, 3, 4, 32, 32)
    assert not torch.allclose(official(video)[0], renorm(video)[0], atol=1e-3)
    # the default feeds the tower the student tensor unchanged: renormalize=True equals it on the mapped tensor
    imagenet_to_clip = video * renorm.renorm_scale + renorm.renorm_shift
    assert torch.allclose(official(imagenet_to_clip)[0], renorm(video)[0], atol=1e-5)


def test_attention_guided_mask_keeps_the_attended_patches():
    from vmm.training.teacher import attention_guided_mask
    attn = torch.full((3, 4, 16), 1e-6)
    attn[:, :, [1, 5, 9, 13]] = 1.0
    mask = attention_guided_mask(attn, 0.8)  # 16 - int(12.8) = 4 visible per frame
    assert mask.shape == (3, 65) and not mask[:, 0].any()
    visible = ~mask[:, 1:].reshape(3, 4, 16)
    assert (visible.sum(-1) == 4).all() and visible[:, :, [1, 5, 9, 13]].all()
    assert (~attention_guided_mask(torch.rand(2, 1, 196), 0.5)[:, 1:]).sum(-1).tolist() == [98, 98]


def test_uta_and_distill_losses():
    t = F.normalize(torch.randn(2, 9, 32), dim=-1)
    assert float(losses.uta_loss(t[None] * 3.0, t)) < 1e-6  # scale-free
    assert abs(float(losses.uta_loss(-t[None], t)) - 4.0) < 1e-5
    f = torch.randn(4, 16)
    assert float(losses.distill_loss(2 * f, f, "cosine")) < 1e-6 and float(losses.distill_loss(f, f, "mse")) == 0


def test_student_clip_tokens_align_with_teacher_targets():
    from vmm.training.teacher import attention_guided_mask
    model, teacher = tiny_model(), tiny_teacher()
    video = torch.randn(2, 3, 4, 32, 32)
    tokens, attn = teacher(video)
    mask = attention_guided_mask(attn, 0.5)
    targets = tokens[~mask].reshape(2, -1, 32)
    _, pooled, x_clip = model.vision_encoder(video, mask=mask)
    assert x_clip.shape == (1,) + targets.shape and pooled.shape == (2, 1, 64)
    loss = losses.uta_loss(x_clip, targets)
    loss.backward()
    assert 0 < float(loss.detach()) < 4 and model.vision_encoder.clip_decoder[0].head.weight.grad.abs().sum() > 0


# -- optimizer -------------------------------------------------------------------------------------------
def test_official_weight_decay_spares_only_1d_parameters_and_biases():
    """The official create_optimizer runs over the DDP-wrapped model, which has no no_weight_decay(): only
    len(shape) == 1 and *.bias skip decay, so temp (0-D), A_log and the position tables are decayed."""
    model = tiny_model()
    skip = no_weight_decay_names(model)
    expected = {n for n, p in model.named_parameters() if p.ndim == 1 or n.endswith(".bias")}
    assert skip == expected
    for name in ("temp", "vision_encoder.pos_embed", "vision_encoder.layers.0.mixer.A_log",
                 "text_encoder.embeddings.position_embeddings.weight"):
        assert name not in skip, name
    assert {"vision_encoder.layers.0.mixer.D", "vision_encoder.layers.0.norm.weight", "vision_proj.bias"} <= skip
    groups = param_groups(model, 0.05)
    assert {id(p) for p in groups[1]["params"]} == {id(p) for n, p in model.named_parameters() if n in expected}
    with pytest.raises(VmmError, match="optim.no_decay must be one of official, extended, got 'none'"):
        no_weight_decay_names(model, "none")


def test_weight_decay_groups_use_tags_and_names():
    model = tiny_model()
    skip = no_weight_decay_names(model, "extended")
    for name in ("temp", "vision_encoder.pos_embed", "vision_encoder.cls_token", "vision_encoder.temporal_pos_embedding",
                 "vision_encoder.layers.0.mixer.A_log", "vision_encoder.layers.0.mixer.D",
                 "vision_encoder.layers.1.mixer.A_b_log", "vision_encoder.layers.0.norm.weight",
                 "text_encoder.embeddings.position_embeddings.weight", "text_encoder.embeddings.LayerNorm.weight",
                 "vision_proj.bias"):
        assert name in skip, name
    for name in ("vision_encoder.layers.0.mixer.in_proj.weight", "vision_encoder.patch_embed.proj.weight",
                 "text_encoder.encoder.layer.0.attention.self.query.weight", "vision_proj.weight",
                 "text_encoder.embeddings.word_embeddings.weight", "itm_head.weight"):
        assert name not in skip, name
    groups = param_groups(model, 0.05, "extended")
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert groups[1]["weight_decay"] == 0.0


def test_freeze_ranges_and_unknown_pattern():
    from vmm.errors import VmmError
    model = tiny_model()
    frozen = freeze(model, ["text_encoder.embeddings", "text_encoder.encoder.layer.0-0"])
    assert "text_encoder.encoder.layer.0.attention.self.query.weight" in frozen
    assert not any(n.startswith("text_encoder.encoder.layer.1") for n in frozen)
    assert not model.text_encoder.embeddings.word_embeddings.weight.requires_grad
    assert all(p.requires_grad for p in model.text_encoder.encoder.layer[1].parameters())
    assert all(id(p) not in {id(q) for g in param_groups(model, 0.05) for q in g["params"]}
               for n, p in model.named_parameters() if n in frozen)
    with pytest.raises(VmmError, match="freeze pattern 'text_encoder.layers.0' matches no parameter"):
        freeze(model, ["text_encoder.layers.0"])
    with pytest.raises(VmmError, match=r"freeze patterns \['text_encoder', 'vision_\*', '\*_proj', 'itm_head', "
                                        r"'temp'\] freeze every parameter, so nothing would train"):
        freeze(model, ["text_encoder", "vision_*", "*_proj", "itm_head", "temp"])


def test_cosine_schedule_with_warmup():
    values = [lr_factor(s, 100, 10, 0.01) for s in range(101)]
    assert values[5] == 0.5 and values[10] == 1.0
    assert all(a >= b for a, b in zip(values[10:], values[11:])) and abs(values[100] - 0.01) < 1e-12


def test_schedule_is_clipped_at_the_floor_as_the_official_one():
    """min_lr_multi clips the official curve (max(floor, warmup or cosine)); it does not rescale it."""
    floor, total, warmup = 0.2, 100, 10
    values = [lr_factor(s, total, warmup, floor) for s in range(total + 1)]
    assert values[0] == floor and values[1] == floor and values[3] == 0.3  # warmup starts at the floor
    cosine = lambda s: 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))  # noqa: E731
    assert values[40] == cosine(40)  # above the floor the curve is the plain cosine, not floor + (1 - floor) * cos
    assert all(v == floor for s, v in enumerate(values) if s > warmup and cosine(s) <= floor)


def test_fractional_warmup_is_not_rounded():
    """The official scheduler gets steps_per_epoch * warmup_epochs unrounded (stage 2: 0.2 epoch). 0.2 epoch of 7
    steps is 1.4 steps: step 1 is still in warmup at 1 / 1.4, and the cosine starts from 1.4; rounding to 1 put
    step 1 at the peak. Under one step (0.2 epoch of 1 step) step 0 is warmup at the floor, not the peak."""
    from types import SimpleNamespace as NS
    from vmm.training.loop import planned_warmup
    cfg = NS(schedule=NS(warmup_steps=None, warmup_epochs=0.2))
    assert planned_warmup(cfg, 7) == pytest.approx(1.4) and planned_warmup(cfg, 2441) == pytest.approx(488.2)
    warmup, total = planned_warmup(cfg, 7), 14
    assert lr_factor(0, total, warmup, 0.01) == 0.01
    assert lr_factor(1, total, warmup, 0.01) == pytest.approx(1 / 1.4)
    assert lr_factor(2, total, warmup, 0.01) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.6 / 12.6)))
    assert lr_factor(0, 5, planned_warmup(cfg, 1), 0.01) == 0.01
    assert lr_factor(1, 5, 0.2, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.8 / 4.8)))


def test_degenerate_batches_still_reach_every_head():
    """One sample id only (no VTM negative) or no MLM token drawn: losses stay finite and touch the heads."""
    model = tiny_model()
    ids = torch.tensor([[101, 2023, 102, 0]] * 3)
    att = (ids != 0).long()
    x_vis = torch.randn(3, 16, 64)
    hidden = model.text_encoder.forward_text(ids, att)
    emb = F.normalize(torch.randn(3, 2, 32), dim=-1)
    vtm = losses.vtm_loss(model, x_vis, hidden, att, emb, emb[:, 0], torch.tensor([4, 4, 4]), torch.tensor(0.07))
    mlm = losses.mlm_loss(model, ids, att, x_vis, 0.0, 103, SPECIALS)
    (vtm + mlm).backward()
    assert torch.isfinite(vtm) and float(mlm.detach()) == 0.0
    assert model.itm_head.weight.grad is not None
    assert model.text_encoder.cls.predictions.transform.dense.weight.grad is not None
