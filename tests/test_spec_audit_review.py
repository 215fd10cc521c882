"""Spec audit: the numbers and settings of shared/reference/videomamba_official.md, read from the spec itself,
against what vmm ships (the published table, the per-dataset protocols, the official hardware of each recipe)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from retrieval.annotations import DATASETS
from retrieval.paper_numbers import PAPER_ZERO_SHOT
from vmm.training.config import load_config

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = REPO / "configs" / "pretrain"
SPEC_NAMES = {"MSRVTT": "msrvtt", "DiDeMo": "didemo", "ActivityNet": "anet", "ANet": "anet", "LSMDC": "lsmdc",
              "MSVD": "msvd"}
CORPORA = ("5M", "17M", "25M")


def _section(text: str, start: str, end: str) -> str:
    return text[text.index(start):text.index(end, text.index(start))]


def _rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.strip().startswith("|")]


@pytest.fixture(scope="module")
def spec(reference_dir) -> str:
    return (reference_dir / "videomamba_official.md").read_text(encoding="utf-8")


def _recall_table(text: str) -> dict:
    """{(dataset, corpus, direction): (R@1, R@5, R@10)} of a markdown table laid out as the spec's section 5.4."""
    table, dataset = {}, None
    for cells in _rows(text):
        if len(cells) < 5 or cells[1] not in ("T2V", "V2T"):
            continue
        dataset = SPEC_NAMES[cells[0].split()[0]] if cells[0] else dataset
        for corpus, cell in zip(CORPORA, cells[2:5]):
            table[dataset, corpus, cells[1].lower()] = tuple(float(x) for x in re.findall(r"\d+\.\d", cell))
    return table


def test_every_published_digit_is_the_spec_s(spec):
    """Spec 5.4 (all 90 numbers) and the R@1 summary of section 8, against paper_numbers and docs/evaluation.md."""
    ours = {(d, c, r): PAPER_ZERO_SHOT[d][c][r] for d in PAPER_ZERO_SHOT for c in CORPORA for r in ("t2v", "v2t")}
    published = _recall_table(_section(spec, "### 5.4", "### 5.5"))
    assert len(published) == 30 and published == ours
    docs = _recall_table(_section((REPO / "docs" / "evaluation.md").read_text(encoding="utf-8"),
                                  "## 6. Published numbers", "## 7."))
    assert docs == ours
    summary = _section(spec, "7. **Zero", "8. **Classification")
    r1 = {}
    for cells in _rows(summary):
        if cells[0] in SPEC_NAMES:
            for corpus, cell in zip(CORPORA, cells[1:4]):
                r1[SPEC_NAMES[cells[0]], corpus] = tuple(float(x) for x in cell.split("/"))
    assert len(r1) == 15
    assert r1 == {(d, c): (PAPER_ZERO_SHOT[d][c]["t2v"][0], PAPER_ZERO_SHOT[d][c]["v2t"][0]) for d, c in r1}


def test_dataset_protocols_are_the_spec_s(spec):
    """Spec 3.7 (file, paragraph mode, text length, frames, DiDeMo's trimmed30) and 3.1's max_txt_l table."""
    seen = set()
    for cells in _rows(_section(spec, "### 3.7", "## 4.")):
        if cells[0] not in SPEC_NAMES:
            continue
        p = DATASETS[SPEC_NAMES[cells[0]]]
        seen.add(p.name)
        assert re.search(r"`([^`]+\.json)`", cells[1]).group(1) == p.annotation_file
        assert ("yes" in cells[2]) == p.paragraph
        assert (int(cells[3]), int(cells[4])) == (p.max_text_len, p.num_frames)
        assert (p.trim_seconds == 30.0) == ("trimmed30=True" in cells[5])
    assert seen == set(DATASETS)
    lengths = {SPEC_NAMES[c[0]]: int(c[1]) for c in _rows(_section(spec, "`max_txt_l`:", "### 3.2"))
               if c[0] in SPEC_NAMES}
    assert lengths == {name: p.max_text_len for name, p in DATASETS.items()}


# Spec 3.5: "GPUs | 2x8 for 5M; 4x8 for 17M/25M", 128 clips per GPU in stage 1.
OFFICIAL_GPUS = {"5m": (2, 16), "17m": (4, 32), "25m": (4, 32)}


@pytest.mark.parametrize("size", sorted(OFFICIAL_GPUS))
def test_each_official_recipe_names_a_launch_config_of_its_official_hardware(size):
    """The 17M/25M recipes ran on 4 nodes x 8 GPUs (a global batch of 4,096 clips, and VTC's gradient at 1/32):
    vmm shipped a launch config for the 5M recipe's 2 x 8 only, so those runs could not be launched as published."""
    recipe = PRETRAIN / f"videomamba_m16_{size}_stage1.yaml"
    text = recipe.read_text(encoding="utf-8")
    named = re.search(r"--config_file (configs/accelerate/\S+\.yaml)", text)
    assert named, f"{recipe.name} names no accelerate launch config for its official hardware"
    assert f"--config configs/pretrain/{recipe.name}" in text
    launch = yaml.safe_load((REPO / named.group(1)).read_text(encoding="utf-8"))
    nodes, gpus = OFFICIAL_GPUS[size]
    assert (launch["num_machines"], launch["num_processes"], launch["mixed_precision"]) == (nodes, gpus, "bf16")
    global_batch = load_config(recipe).data.batch_size * launch["num_processes"]
    assert global_batch == {16: 2048, 32: 4096}[gpus]
    assert named.group(1) in (REPO / "docs" / "training.md").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------------------------------
# Inputs the official shapes allow that vmm failed on with a bare torch error or computed silently wrong.

def test_an_empty_batch_of_clips_encodes_to_no_rows():
    """encode_text takes 0 texts, but 0 clips failed in the per-frame pooling with "cannot reshape tensor of 0
    elements" (reshape cannot infer a -1 of an empty batch)."""
    import torch
    import vmm
    model = vmm.create_model("videomamba_m16_mm", embed_dim=16, vision=dict(
        embed_dim=32, depth=1, img_size=32, num_frames=2), text=dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, fusion_layer=1)).eval()
    with torch.no_grad():
        frames, tokens = model.encode_video(torch.randn(0, 3, 2, 32, 32), per_frame=True, return_tokens=True)
        one = model.encode_video(torch.randn(1, 3, 2, 32, 32), per_frame=True)
    assert frames.shape == (0, 2, 16) and tokens.shape == (0, 8, 32) and one.shape == (1, 2, 16)


def test_frames_that_tubelets_do_not_divide_are_refused_not_dropped():
    """With tubelet_size=2 a 4-frame model took a 5-frame clip (5 // 2 == 2 tubelets) and the patch embedding
    silently dropped the 5th frame; a 1-frame image reached the conv as a bare "kernel size can't be greater"."""
    import torch
    import vmm
    from vmm.errors import VmmError
    model = vmm.create_model("videomamba_tiny", depth=1, num_frames=4, img_size=32, tubelet_size=2,
                             num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 4, 32, 32)).shape == (1, 3)
        with pytest.raises(VmmError, match=r"input has 5 frames, which tubelets of tubelet_size=2 frames do not "
                                           r"divide \(the last 1 would be dropped\); pass a multiple of 2 frames"):
            model(torch.randn(1, 3, 5, 32, 32))
    encoder = vmm.create_model("videomamba_tiny_vision", depth=1, num_frames=4, img_size=32, tubelet_size=2).eval()
    with torch.no_grad(), pytest.raises(VmmError, match="input has 1 frame, which tubelets"):
        encoder(torch.randn(1, 3, 1, 32, 32))


def test_per_frame_mode_with_a_tubelet_is_refused_when_built():
    """frame_mode='per_frame' encodes each frame as a 1-frame clip, which a 2-frame tubelet conv cannot take: the
    model built and failed on its first clip with a bare conv RuntimeError."""
    import vmm
    from vmm.errors import VmmError
    with pytest.raises(VmmError, match="frame_mode='per_frame' encodes every frame alone.*pass tubelet_size=1"):
        vmm.create_model("videomamba_tiny_vision", depth=1, num_frames=4, img_size=32, tubelet_size=2,
                         frame_mode="per_frame")


def test_a_rank_with_no_clips_sizes_its_token_rows_as_the_model_does():
    """A rank that decodes nothing (more ranks than videos, or all of its videos unreadable) still sends its ITM
    token rows to the gather; they were sized one token grid per frame, but a tubelet of 2 frames gives one grid
    per 2 frames, so the ranks' rows differed in size (8 vs 16 here) and the gather could not line them up."""
    import math

    import torch
    import vmm
    from index.decode import DecodeOptions
    from retrieval.evaluate import _encode_videos, _Runtime
    model = vmm.create_model("videomamba_m16_mm", embed_dim=16, vision=dict(
        embed_dim=32, depth=1, img_size=32, num_frames=4, tubelet_size=2), text=dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, fusion_layer=1)).eval()
    with torch.no_grad():
        _, decoded = model.encode_video(torch.randn(1, 3, 4, 32, 32), return_tokens=True)
    empty = _encode_videos(model, None, [], DecodeOptions(num_frames=4, window=math.inf), 2,
                           _Runtime(torch.device("cpu"), torch.float32), workers=0)
    assert decoded.shape[1:] == (8, 32) and empty.tokens.shape == (0, *decoded.shape[1:])


# ------------------------------------------------------------------------------------------------------------------
# Every official key list of the reference folder (any size, frame count, resolution, fusion depth): the model built
# from the list's own shapes has exactly its keys, shapes and order, and loads it strictly.

def _text_overrides(shapes: dict) -> dict:
    """The text tower settings a multimodal key list implies (head count does not show in shapes: 1 always fits)."""
    t = {k.replace("text_encoder.bert.", "text_encoder.", 1): v for k, v in shapes.items()}
    layers = {int(k.split(".")[3]) for k in t if k.startswith("text_encoder.encoder.layer.")}
    fusion = [int(k.split(".")[3]) for k in t if ".crossattention." in k]
    vocab, hidden = t["text_encoder.embeddings.word_embeddings.weight"]
    return dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=len(layers), num_attention_heads=1,
                intermediate_size=t["text_encoder.encoder.layer.0.intermediate.dense.weight"][0],
                max_position_embeddings=t["text_encoder.embeddings.position_embeddings.weight"][0],
                type_vocab_size=t["text_encoder.embeddings.token_type_embeddings.weight"][0],
                fusion_layer=min(fusion, default=len(layers)),
                mlm_head=any(k.startswith("text_encoder.cls.") for k in t), init_from=None)


def _official_key_lists(reference_dir) -> list:
    return sorted(reference_dir.glob("videomamba_state_dict_*.json"))


def test_every_official_key_list_is_the_state_dict_of_the_model_built_from_it(reference_dir):
    """The classifier registered its head after the layers, so its state dict listed head.* last where the official
    VisionMamba (and every released file) lists it after patch_embed; the multimodal order was already the official."""
    import json

    import torch
    import vmm
    files = _official_key_lists(reference_dir)
    assert len(files) >= 5
    for path in files:
        shapes = json.loads(path.read_text(encoding="utf-8"))
        sd = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
        vision = vmm.vision_overrides_from_state_dict(sd)
        with torch.device("meta"):
            if any(k.startswith("text_encoder.") for k in shapes):
                model = vmm.create_model("videomamba_m16_mm", vision=vision, text=_text_overrides(shapes),
                                         embed_dim=shapes["vision_proj.weight"][0])
                # the official layout's names: BERT under text_encoder.bert. when it has the MLM head
                bert = "text_encoder.bert." if model.cfg.text.mlm_head else "text_encoder."
                own = {(bert + k[len("text_encoder."):] if k.startswith("text_encoder.") and ".cls." not in k
                        else k): list(v.shape) for k, v in model.state_dict().items()}
            else:
                model = vmm.create_model("videomamba_tiny", **vision)
                own = {k: list(v.shape) for k, v in model.state_dict().items()}
        official = {k: v for k, v in shapes.items() if not k.startswith("clip_teacher.")}  # the frozen teacher
        assert list(own.items()) == list(official.items()), path.name
        vmm.load_checkpoint(model, sd)  # strict
