"""Parity with the official code beyond the fixed shapes of the golden files.

The models here are built from the official config a fixture records (``config_json``), through
``official_config_overrides``, so that a fixture with other sizes or settings of the same official code is
built the same way instead of by hand-picked fields. Settings the official code has but vmm cannot honour must
be refused, never silently dropped.
"""
import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vmm
from retrieval.metrics import retrieval_metrics, to_official_keys
from retrieval.rerank import rerank_topk
from tests.conftest import golden_files
from vmm.errors import VmmError
from vmm.models.multimodal import official_config_overrides


@pytest.fixture(scope="module")
def golden(reference_dir):
    return np.load(reference_dir / "videomamba_golden_mm_tiny.npz", allow_pickle=False)


@pytest.fixture(scope="module")
def golden_d2(reference_dir):
    return np.load(reference_dir / "videomamba_golden_tiny_d2.npz", allow_pickle=False)


def _official(z) -> dict:
    return json.loads(str(z["config_json"]))


def _state(z, prefix="state_dict/"):
    return {k[len(prefix):]: torch.from_numpy(z[k]) for k in z.files if k.startswith(prefix)}


def _build(official: dict):
    return vmm.create_model("videomamba_m16_mm", **official_config_overrides(official)).eval()


def _close(ours, ref, key, tol=1e-5):
    ref = torch.as_tensor(ref)
    assert tuple(ours.shape) == tuple(ref.shape), f"{key}: shape {tuple(ours.shape)} vs {tuple(ref.shape)}"
    err = (ours.float() - ref.float()).abs().max().item()
    assert err <= tol, f"{key}: max abs error {err}"


@pytest.mark.parametrize("path", golden_files("config_json"))
def test_golden_built_from_its_official_config(path):
    """Every output of each multimodal fixture, from a model built only from its config_json, with the official
    eval loop (every fixture of this format in the reference folder, not only the shared one)."""
    golden = np.load(path, allow_pickle=False)
    official = _official(golden)
    model = _build(official)
    vmm.load_checkpoint(model, _state(golden))  # strict: the config must give exactly the official keys
    T = lambda k: torch.from_numpy(golden[k])  # noqa: E731
    ids, mask = vmm.get_tokenizer("videomamba_m16_25m")(list(golden["input/text_raw"]), max_length=official["max_txt_l"])
    assert torch.equal(ids, T("input/text_input_ids")) and torch.equal(mask, T("input/text_attention_mask"))
    with torch.no_grad():
        x_vis, pooled, _ = model.vision_encoder(T("input/video_BCTHW"), keep_temporal=model.cfg.vision.keep_temporal)
        frames, tokens = model.encode_video(T("input/video_BCTHW"), per_frame=True, return_tokens=True)
        text, hidden = model.encode_text(ids, mask, return_hidden=True)
        itc = model.similarity(frames, text)
        V, N = frames.shape[0], text.shape[0]
        fusion = torch.stack([model.text_encoder.forward_fusion(hidden, mask, x_vis[v:v + 1].expand(N, -1, -1))
                              for v in range(V)])

        def itm(direction):
            def score(query, candidates):
                if direction == "v2t":
                    return model.itm_logits(tokens[query:query + 1].expand(len(candidates), -1, -1),
                                            hidden[candidates], mask[candidates])[:, 1]
                n = len(candidates)
                return model.itm_logits(tokens[candidates], hidden[query:query + 1].expand(n, -1, -1),
                                        mask[query:query + 1].expand(n, -1))[:, 1]
            return score
        i2t = rerank_topk(itc, official["k_test"], itm("v2t"), 32, "v2t")
        t2i = rerank_topk(itc, official["k_test"], itm("t2v"), 32, "t2v")
    for ours, key in [(x_vis, "out/x_vis"), (pooled, "out/pooled"), (model.vision_proj(pooled), "out/vision_proj"),
                      (frames, "out/video_emb"), (hidden, "out/text_hidden"),
                      (model.text_proj(hidden[:, 0]), "out/text_proj"), (text, "out/text_emb"),
                      (itc, "out/itc_v2t"), (itc.T, "out/itc_t2v"), (fusion, "out/fusion_hidden"),
                      (fusion[:, :, 0], "out/fusion_cls"), (model.itm_head(fusion[:, :, 0]), "out/itm_logits"),
                      (i2t, "out/itm_v2t"), (t2i, "out/itm_t2v")]:
        if key in golden.files or key in ("out/itc_v2t", "out/itm_v2t"):  # a fixture may leave some out
            _close(ours.detach(), golden[key], key)
    txt2vid, vid2txt = json.loads(str(golden["input/txt2img_json"])), json.loads(str(golden["input/img2txt_json"]))
    for (v2t, t2v), key in [((T("out/itm_v2t"), T("out/itm_t2v")), "out/metrics_itm_json"),
                            ((T("out/itc_v2t"), T("out/itc_t2v")), "out/metrics_itc_json")]:
        if key in golden.files:
            assert to_official_keys(retrieval_metrics(v2t, t2v, txt2vid, vid2txt)) == json.loads(str(golden[key]))


def test_official_keep_temporal_false_pools_the_whole_clip(golden_d2):
    """keep_temporal is an official vision_encoder setting that encode_vision passes at eval; it was ignored."""
    official = {"vision_encoder": {"embed_dim": 192, "depth": 2, "img_size": 32, "num_frames": 4,
                                   "keep_temporal": False},
                "bert_config": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                                "intermediate_size": 128, "fusion_layer": 1, "max_position_embeddings": 32},
                "embed_dim": 32}
    model = _build(official)
    assert model.cfg.vision.keep_temporal is False
    model.vision_encoder.load_state_dict(_state(golden_d2, "mm/state_dict/"))
    with torch.no_grad():
        frames = model.encode_video(torch.from_numpy(golden_d2["mm/input_BCTHW"]), per_frame=True)
        expected = F.normalize(model.vision_proj(torch.from_numpy(golden_d2["mm/pooled_no_temporal"])), dim=-1)
    _close(frames, expected, "video_emb without keep_temporal")
    assert model.pooled_per_clip(4) == 1


def test_official_avg_and_cls_pool_types(golden_d2):
    base = dict(embed_dim=192, depth=2, img_size=32, num_frames=4)
    x = torch.from_numpy(golden_d2["mm/input_BCTHW"])
    x_vis_ref = torch.from_numpy(golden_d2["mm/patch_tokens_keep_temporal"])  # (B, T*P, D)
    sd = _state(golden_d2, "mm/state_dict/")
    avg = vmm.create_model("videomamba_tiny_vision", pool_type="avg", **base).eval()
    avg.load_state_dict(sd)
    cls = vmm.create_model("videomamba_tiny_vision", pool_type="cls", **base).eval()
    cls.load_state_dict(sd)
    with torch.no_grad():
        per_frame = avg.pool_norm(x_vis_ref.reshape(2, 4, -1, 192).mean(2))
        whole = avg.pool_norm(x_vis_ref.mean(1, keepdim=True))
        _close(avg(x, keep_temporal=True)[1], per_frame, "avg keep_temporal")
        _close(avg(x, keep_temporal=False)[1], whole, "avg whole clip")
        # "cls" ignores keep_temporal: one vector per clip either way
        a, b = cls(x, keep_temporal=True)[1], cls(x, keep_temporal=False)[1]
    assert a.shape == (2, 1, 192) and torch.equal(a, b)


@pytest.mark.parametrize("frame_mode", ["joint", "per_frame"])
@pytest.mark.parametrize("pool_type", ["cls+avg", "cls", "avg", "cls_cat_avg"])
@pytest.mark.parametrize("keep_temporal", [True, False])
def test_pooled_per_clip_is_what_encode_video_gives(frame_mode, pool_type, keep_temporal):
    """vmm eval sizes its per-video buffer from pooled_per_clip, so it must agree with every pooling setting."""
    model = vmm.create_model("videomamba_m16_mm", embed_dim=16, vision=dict(
        embed_dim=32, depth=1, img_size=32, num_frames=3, frame_mode=frame_mode, pool_type=pool_type,
        keep_temporal=keep_temporal), text=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                intermediate_size=64, fusion_layer=1)).eval()
    with torch.no_grad():
        frames = model.encode_video(torch.randn(2, 3, 3, 32, 32), per_frame=True)
    assert frames.shape == (2, model.pooled_per_clip(3), 16)


def test_training_pools_as_the_config_says(monkeypatch):
    """The official encode_vision passes keep_temporal in training too; vmm's objective forced True."""
    from vmm.training.config import LossSection
    from vmm.training.objective import PretrainObjective
    shapes = []
    for keep_temporal in (True, False):
        model = vmm.create_model("videomamba_m16_mm", embed_dim=16, vision=dict(
            embed_dim=32, depth=1, img_size=32, num_frames=3, keep_temporal=keep_temporal),
            text=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                      fusion_layer=1))
        model.vision_proj.register_forward_hook(lambda mod, inp, out: shapes.append(tuple(out.shape)))
        objective = PretrainObjective(model, LossSection(vtc=1.0, vtm=0.0, mlm=0.0), 103, (0, 101))
        ids = torch.tensor([[101, 2023, 102, 0], [101, 2003, 1037, 102]])
        objective(torch.randn(2, 3, 3, 32, 32), ids, (ids != 0).long(), torch.tensor([0, 1]))["loss"].backward()
    assert shapes == [(2, 3, 16), (2, 1, 16)]


def test_a_differently_shaped_official_config_is_honoured(golden):
    """Every size setting of the official config reaches the model (shapes follow the official formulas)."""
    official = copy.deepcopy(_official(golden))
    v, b = official["vision_encoder"], official["bert_config"]
    v.update(embed_dim=48, depth=3, d_state=8, d_conv=3, expand=1, patch_size=8, img_size=24, num_frames=4,
             kernel_size=2, norm_epsilon=1e-6, clip_decoder_embed_dim=48, clip_output_dim=20, drop_path_rate=0.1,
             pool_type="avg", keep_temporal=False)
    b.update(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=40, fusion_layer=1,
             max_position_embeddings=24, layer_norm_eps=1e-6, hidden_act="gelu_new", vocab_size=1000)
    official.update(embed_dim=12, encoder_width=48, max_txt_l=10, temp_init=0.05)
    model = _build(official)
    sd = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    D, E, N, R = 48, 48, 8, math.ceil(48 / 16)
    assert sd["vision_encoder.patch_embed.proj.weight"] == (D, 3, 2, 8, 8)
    assert sd["vision_encoder.pos_embed"] == (1, (24 // 8) ** 2 + 1, D)
    assert sd["vision_encoder.temporal_pos_embedding"] == (1, 4 // 2, D)
    assert sd["vision_encoder.layers.2.mixer.x_proj_b.weight"] == (R + 2 * N, E)
    assert sd["vision_encoder.layers.2.mixer.A_b_log"] == (E, N)
    assert sd["vision_encoder.layers.0.mixer.conv1d.weight"] == (E, 1, 3)
    assert sd["vision_encoder.clip_decoder.0.head.weight"] == (20, 48)
    assert "vision_encoder.layers.3.norm.weight" not in sd
    assert sd["text_encoder.encoder.layer.1.crossattention.self.key.weight"] == (32, D)
    assert "text_encoder.encoder.layer.0.crossattention.self.key.weight" not in sd
    assert sd["text_encoder.embeddings.word_embeddings.weight"] == (1000, 32)
    assert sd["vision_proj.weight"] == (12, D) and sd["text_proj.weight"] == (12, 32)
    assert model.vision_encoder.layers[0].norm.eps == 1e-6
    assert model.text_encoder.encoder.layer[0].output.LayerNorm.eps == 1e-6
    assert model.vision_encoder.layers[2].drop_path.p == pytest.approx(0.05)  # the shifted official schedule
    assert model.cfg.max_text_len == 10 and model.temp.item() == pytest.approx(0.05)
    hidden = torch.randn(2, 5, 32)
    act = model.text_encoder.encoder.layer[0].intermediate
    torch.testing.assert_close(act(hidden), F.gelu(act.dense(hidden), approximate="tanh"))
    with torch.no_grad():
        frames, tokens = model.encode_video(torch.randn(2, 3, 4, 24, 24), per_frame=True, return_tokens=True)
    assert frames.shape == (2, 1, 12) and tokens.shape == (2, 2 * 9, D)


def test_official_ssm_cfg_and_bert_config_extras(golden):
    """The official configs nest the Mamba sizes in ssm_cfg and carry config_bert.json's own keys."""
    official = copy.deepcopy(_official(golden))
    v = official["vision_encoder"]
    for k in ("d_state", "d_conv", "expand", "dt_rank"):
        v.pop(k)
    v.update(ssm_cfg={"d_state": 8, "d_conv": 3, "expand": 1, "dt_rank": "auto", "dt_min": 0.001},
             channels=3, use_checkpoint=False, bimamba_type="v2")
    official["bert_config"].update(architectures=["BertForMaskedLM"], model_type="bert", initializer_range=0.02,
                                   position_embedding_type="absolute", encoder_width=192,
                                   hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    model = _build(official)
    mixer = model.vision_encoder.layers[0].mixer
    assert (mixer.d_state, mixer.d_conv, mixer.d_inner, mixer.dt_rank) == (8, 3, 192, 12)
    official["vision_encoder"]["ssm_cfg"]["bias"] = True
    with pytest.raises(VmmError, match="ssm_cfg.bias"):
        _build(official)
    # Mamba takes exactly "auto" in ssm_cfg; a size given twice takes the later one, in the config's own order.
    assert official_config_overrides({"vision_encoder": {"ssm_cfg": {"dt_rank": "auto16"}}})["vision"] == {
        "dt_rank": "auto16"}  # left for create_model to refuse, as before
    assert official_config_overrides({"vision_encoder": {"ssm_cfg": {"d_state": 8}, "d_state": 4}})["vision"] == {
        "d_state": 4}
    assert official_config_overrides({"vision_encoder": {"d_state": 4, "ssm_cfg": {"d_state": 8}}})["vision"] == {
        "d_state": 8}


@pytest.mark.parametrize("section,key,value,match", [
    ("vision_encoder", "rms_norm", False, "rms_norm"),
    ("vision_encoder", "bimamba", False, "bimamba"),
    ("vision_encoder", "residual_in_fp32", False, "residual_in_fp32"),
    ("vision_encoder", "clip_return_layer", 2, "clip_return_layer"),
    ("vision_encoder", "pool_type", "max", "pool_type"),
    ("vision_encoder", "use_learnable_pos_emb", True, "use_learnable_pos_emb"),
    ("bert_config", "hidden_act", "swish", "hidden_act"),
    ("bert_config", "position_embedding_type", "relative_key", "position_embedding_type"),
    (None, "eval_frame_ensemble", "mean", "eval_frame_ensemble"),
    (None, "encoder_width", 64, "encoder_width"),
    ("bert_config", "encoder_width", 64, "encoder_width"),
    ("vision_encoder", "add_pool_norm", False, "add_pool_norm"),
])
def test_official_settings_vmm_cannot_honour_are_refused(golden, section, key, value, match):
    official = copy.deepcopy(_official(golden))
    (official[section] if section else official)[key] = value
    with pytest.raises(VmmError, match=match):
        _build(official)


def test_an_official_pretraining_config_builds_its_bert_for_masked_lm(golden):
    """is_pretrain=True was mapped to the MLM head, but the text encoder class that pretraining builds
    (BertForMaskedLM, official build_bert) was refused, so no pretraining-mode config could be built."""
    official = copy.deepcopy(_official(golden))
    official.update(is_pretrain=True, text_encoder_class="BertForMaskedLM")
    model = _build(official)
    assert model.cfg.text.mlm_head
    # The official pretraining state dict: BERT under text_encoder.bert., plus the MLM head text_encoder.cls.
    sd = {k.replace("text_encoder.", "text_encoder.bert.", 1): v for k, v in _state(golden).items()}
    sd.update({k: v for k, v in model.state_dict().items() if k.startswith("text_encoder.cls.")})
    sd["text_encoder.cls.predictions.decoder.weight"] = sd["text_encoder.bert.embeddings.word_embeddings.weight"]
    vmm.load_checkpoint(model, sd)  # strict
    ids, mask = (torch.from_numpy(golden[k]) for k in ("input/text_input_ids", "input/text_attention_mask"))
    with torch.no_grad():  # the MLM head changes none of the retrieval outputs
        x_vis, _, _ = model.vision_encoder(torch.from_numpy(golden["input/video_BCTHW"]))
        text, hidden = model.encode_text(ids, mask, return_hidden=True)
        fused = model.text_encoder.forward_fusion(hidden, mask, x_vis[:1].expand(len(ids), -1, -1))
    _close(text, golden["out/text_emb"], "out/text_emb")
    _close(fused, golden["out/fusion_hidden"][0], "out/fusion_hidden")
    official["is_pretrain"] = False
    with pytest.raises(VmmError, match="is_pretrain=False and text_encoder_class='BertForMaskedLM' disagree"):
        _build(official)
    official.update(is_pretrain=True, text_encoder_class="BertLMHeadModel")
    with pytest.raises(VmmError, match="text_encoder_class='BertLMHeadModel' is not supported"):
        _build(official)
