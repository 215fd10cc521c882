"""Parity of the text side with the official code at configurations the shared golden file does not pin.

tests/data/official22_text/ holds official outputs (README.md there says how they were made): caption cleaning
(``pre_text``) and the official BertTokenizer on hard captions, and three UMT_VIDEOMAMBA text towers (fusion from
layer 0, from layer 1, and none) whose checkpoint is written as an official .pth file and loaded as a user would:
vmm.create_model("videomamba_m16_mm", pretrained=file) with the sizes read from its shapes.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import vmm
from vmm.data.text import clean_caption
from vmm.models.checkpoint import vision_overrides_from_state_dict

DATA = Path(__file__).parent / "data" / "official22_text"
CONFIGS = ["text_fusion0", "text_fusion1", "text_fusion_last"]
# fp32 on both sides; the official outputs reach about 10, so this is ~1e-6 relative.
ATOL = 1e-5
WORDS = "text_encoder.embeddings.word_embeddings.weight"


@pytest.fixture(scope="module")
def tok():
    return vmm.get_tokenizer("videomamba_m16_25m")


@pytest.fixture(scope="module")
def captions():
    return np.load(DATA / "tokenizer.npz", allow_pickle=False)


def test_caption_cleaning_is_pre_text(captions):
    raw = [str(t) for t in captions["input/text_raw"]]
    assert [clean_caption(t) for t in raw] == list(captions["out/pre_text"])
    assert [clean_caption(t, max_words=5) for t in raw] == list(captions["out/pre_text_max_l5"])


@pytest.mark.parametrize("length", [8, 32, 40])
def test_tokenizer_ids_and_masks(tok, captions, length):
    # accents, CJK (also outside the BMP), punctuation runs, URLs, numbers, a 60-word caption, captions with no word
    # left, <person>, apostrophes, hyphens, emoji, tabs and newlines, control and unassigned characters, typed [CLS]
    ids, mask = tok([str(t) for t in captions["input/text_raw"]], max_length=length)
    np.testing.assert_array_equal(ids.numpy(), captions[f"out/ids_{length}"])
    np.testing.assert_array_equal(mask.numpy(), captions[f"out/mask_{length}"])


def test_tokenizer_without_cleaning_lowercases_as_the_official_one(tok, captions):
    # The official BertTokenizer (transformers 4.36) on the raw captions. transformers 5 lower-cased "ΣΊΣΥΦΟΣ" with
    # a word-final "ς", which the official per-character lower-casing never makes: other WordPiece ids.
    raw = [str(t) for t in captions["input/text_raw"]]
    assert any("ΣΥΦΟΣ" in t for t in raw)
    ids, mask = tok(raw, max_length=40, clean=False)
    np.testing.assert_array_equal(ids.numpy(), captions["out/raw_ids_40"])
    np.testing.assert_array_equal(mask.numpy(), captions["out/raw_mask_40"])


def _text_overrides(sd, cfg):
    """The text settings of an official state dict: sizes from the shapes, the rest (heads, eps, activation) from
    the BERT config the fixture records, as a user reads them from the official config_bert.json."""
    layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("text_encoder.encoder.layer."))
    fused = [i for i in range(layers) if f"text_encoder.encoder.layer.{i}.crossattention.self.key.weight" in sd]
    b = cfg["bert_config"]
    return dict(vocab_size=sd[WORDS].shape[0], hidden_size=sd[WORDS].shape[1], num_hidden_layers=layers,
                intermediate_size=sd["text_encoder.encoder.layer.0.intermediate.dense.weight"].shape[0],
                max_position_embeddings=sd["text_encoder.embeddings.position_embeddings.weight"].shape[0],
                type_vocab_size=sd["text_encoder.embeddings.token_type_embeddings.weight"].shape[0],
                fusion_layer=fused[0] if fused else layers, num_attention_heads=b["num_attention_heads"],
                layer_norm_eps=b["layer_norm_eps"], hidden_act=b["hidden_act"])


def _fixture(name, tmp_path):
    z = np.load(DATA / f"{name}.npz", allow_pickle=False)
    cfg = json.loads(str(z["config_json"]))
    sd = {k[len("state_dict/"):]: torch.from_numpy(z[k]) for k in z.files if k.startswith("state_dict/")}
    # Only the word-table rows the inputs use are stored (the whole table is 30522 random rows); the others do
    # not change any output, so zeros stand in for them.
    words = torch.zeros(cfg["bert_config"]["vocab_size"], z["word_rows/values"].shape[1])
    words[torch.from_numpy(z["word_rows/ids"])] = torch.from_numpy(z["word_rows/values"])
    sd[WORDS] = words
    path = tmp_path / f"{name}.pth"
    torch.save(sd, path)
    model = vmm.create_model("videomamba_m16_mm", pretrained=path, embed_dim=sd["text_proj.weight"].shape[0],
                             vision=dict(vision_overrides_from_state_dict(sd),
                                         pool_type=cfg["vision_encoder"]["pool_type"]),
                             text=_text_overrides(sd, cfg), max_text_len=cfg["max_txt_l"])
    return z, cfg, sd, model.eval()


def _close(ours, z, key):
    expected = z[key]
    assert tuple(ours.shape) == expected.shape, key
    np.testing.assert_allclose(ours.detach().numpy(), expected, rtol=0, atol=ATOL, err_msg=key)


@pytest.mark.parametrize("name", CONFIGS)
@torch.no_grad()
def test_text_tower_itc_and_itm(name, tok, tmp_path):
    z, cfg, _, model = _fixture(name, tmp_path)
    assert model.text_encoder.config.fusion_layer == cfg["fusion_layer"]
    ids, mask = tok([str(t) for t in z["input/text_raw"]], max_length=cfg["max_txt_l"])
    np.testing.assert_array_equal(ids.numpy(), z["input/text_input_ids"])
    np.testing.assert_array_equal(mask.numpy(), z["input/text_attention_mask"])

    emb, hidden = model.encode_text(ids, mask, return_hidden=True)
    _close(hidden, z, "out/text_hidden")  # fusion_layer 0: the embeddings alone
    _close(model.text_proj(hidden[:, 0]), z, "out/text_proj")
    _close(emb, z, "out/text_emb")

    frames, tokens = model.encode_video(torch.from_numpy(z["input/video_BTCHW"]).permute(0, 2, 1, 3, 4),
                                        per_frame=True, return_tokens=True)
    _close(tokens, z, "out/x_vis")
    _close(model.similarity(frames, emb), z, "out/itc_v2t")  # get_sim: mean over frames of the cosine
    _close(model.similarity(frames, emb).t(), z, "out/itc_t2v")

    # The official evaluation's ITM call: one video's tokens (width encoder_width, unlike the hidden size) repeated
    # against every text, mode="fusion"; with no fusion layer the text CLS goes to itm_head unchanged.
    n = len(ids)
    fused = torch.stack([model.text_encoder.forward_fusion(hidden, mask, tokens[v:v + 1].expand(n, -1, -1))
                         for v in range(len(tokens))])
    _close(fused, z, "out/fusion_hidden")
    logits = torch.stack([model.itm_logits(tokens[v:v + 1].expand(n, -1, -1), hidden, mask)
                          for v in range(len(tokens))])
    _close(logits, z, "out/itm_logits")
    np.testing.assert_allclose(model.itm_scores(tokens, hidden, mask, batch_size=4).numpy(),
                               z["out/itm_logits"][..., 1], rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", CONFIGS)
def test_official_keys_all_load(name, tmp_path):
    # Every official key has its place: a fusion layer at 0 or none at all must not add or drop a crossattention.
    _, _, sd, model = _fixture(name, tmp_path)
    assert set(model.state_dict()) == set(sd)
