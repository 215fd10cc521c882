"""The pretraining recipe against the official one (spec sections 3.1, 3.4, 3.5): every released recipe's
settings, MLM's never-masked tokens, starting weights that never load partly or not at all without a word, and
options that a switched-off loss would drop silently."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vmm.errors import VmmError
from vmm.train import main
from vmm.training.config import load_config
from vmm.training.loop import build_model, check_model_config

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = REPO / "configs" / "pretrain"
TINY = str(PRETRAIN / "tiny.yaml")

CORPORA = {"5m": ["webvid2m", "cc3m"],
           "17m": ["webvid2m", "cc3m", "coco", "vg", "sbu", "cc12m"],
           "25m": ["webvid10m", "cc3m", "coco", "vg", "sbu", "cc12m"]}


@pytest.mark.parametrize("size", ["5m", "17m", "25m"])
def test_released_recipes_are_the_official_ones(size):
    s1 = load_config(PRETRAIN / f"videomamba_m16_{size}_stage1.yaml")
    s2 = load_config(PRETRAIN / f"videomamba_m16_{size}_stage2.yaml")
    for cfg in (s1, s2):
        m = check_model_config(cfg)
        assert (m.vision.embed_dim, m.vision.depth, m.vision.num_frames, m.vision.img_size) == (576, 32, 8, 224)
        assert (m.vision.drop_path_rate, m.embed_dim, m.temp_init, m.text.fusion_layer) == (0.25, 512, 0.07, 9)
        assert (cfg.data.max_text_len, cfg.data.hflip, cfg.loss.mlm_prob) == (32, 0.5, 0.5)
        assert (cfg.loss.vtc, cfg.loss.vtm, cfg.loss.mlm) == (1.0, 1.0, 1.0)
        assert (cfg.optim.weight_decay, cfg.optim.betas) == (0.05, [0.9, 0.999])
        assert [t.name for t in cfg.data.train] == CORPORA[size]
        assert cfg.freeze == []
        assert cfg.train.weights_dtype == "bfloat16"  # the official setup_model casts the whole model
    # Stage 1, masked: 10 epochs, cosine, warmup 1 epoch, lr 4e-4, 128 per GPU, UTA with 0.8 / 0.5 masking.
    assert (s1.schedule.epochs, s1.schedule.warmup_epochs, s1.optim.lr, s1.data.batch_size) == (10, 1, 4e-4, 128)
    assert (s1.loss.uta, s1.loss.video_mask_ratio, s1.loss.image_mask_ratio) == (1.0, 0.8, 0.5)
    assert s1.teacher.clip_model == "ViT-B-16" and s1.model.vision_init.endswith("k400_mask_pt_f8_res224.pth")
    assert s1.teacher.clip_renormalize is False  # the official teacher sees the student's ImageNet-normalised pixels
    # Stage 2, unmasked: no teacher, 1 epoch, lr 8e-5, warmup 0.2 epoch, 64 per GPU, from stage 1's model.
    assert (s2.loss.uta, s2.schedule.epochs, s2.schedule.warmup_epochs) == (0.0, 1, 0.2)
    assert (s2.optim.lr, s2.data.batch_size, s2.model.vision_init) == (8e-5, 64, None)
    assert s2.model.init == f"{s1.train.output_dir}/final"


def test_mlm_can_choose_sep_but_never_pad_or_cls():
    """Spec 3.4: "PAD and CLS are never masked" (so [SEP] is a candidate, as in the official masking)."""
    import vmm
    from vmm.training.loop import mlm_never_masked
    from vmm.training.losses import mask_tokens
    tok = vmm.get_tokenizer("vmm_nano", max_length=12)
    ids, att = tok(["a red ball moves left"], max_length=12)
    never = mlm_never_masked(tok)
    assert set(never) == {tok.pad_token_id, tok.cls_token_id}
    _, labels = mask_tokens(ids, att, 1.0, 30522, tok.mask_token_id, never)
    sep = ids == tok.sep_token_id
    assert sep.any() and (labels[sep] == tok.sep_token_id).all()
    assert (labels[(ids == tok.cls_token_id) | (att == 0)] == -100).all()


def _tiny(*overrides):
    return load_config(TINY, ["loss.uta=0", *overrides])


def test_stage2_init_missing_tensors_are_named(tmp_path, capsys):
    """A stage-2 model that stage 1 does not fully cover (here one layer more) says which tensors stay random."""
    source, _ = build_model(_tiny("loss.mlm=0"))
    source.save_pretrained(tmp_path / "stage1")
    capsys.readouterr()
    model, _ = build_model(_tiny("loss.mlm=0", "model.vision.depth=3", f"model.init={tmp_path / 'stage1'}"))
    err = capsys.readouterr().err
    assert "warning: model.init: 17 of the" in err and "vision_encoder.layers.2." in err
    assert torch.equal(model.vision_encoder.layers[1].mixer.in_proj.weight,
                       source.vision_encoder.layers[1].mixer.in_proj.weight)
    build_model(_tiny("loss.mlm=0", f"model.init={tmp_path / 'stage1'}"))  # the same model: nothing to say
    assert "warning" not in capsys.readouterr().err


def test_starting_weights_that_fit_nothing_are_refused(tmp_path):
    source, _ = build_model(_tiny())
    torch.save({"model": source.text_encoder.state_dict()}, tmp_path / "text_only.pth")
    with pytest.raises(VmmError, match=r"model.vision_init: .*text_only.pth holds none of the .* tensors"):
        build_model(_tiny(f"model.vision_init={tmp_path / 'text_only.pth'}"))
    torch.save({"model": {"head.weight": torch.zeros(2, 2)}}, tmp_path / "classifier.pth")
    with pytest.raises(VmmError, match=r"model.init: .*classifier.pth holds none of the .* stage-1 run's final"):
        build_model(_tiny(f"model.init={tmp_path / 'classifier.pth'}"))


def test_vision_init_in_the_k400_layout_loads_quietly(tmp_path, capsys):
    """The K400 masked-pretraining file has no pool_norm (spec 4.5): that alone is expected, not warned about."""
    source, _ = build_model(_tiny())
    vision = {k: v for k, v in source.vision_encoder.state_dict().items() if not k.startswith("pool_norm.")}
    torch.save({"model": vision}, tmp_path / "k400.pth")
    capsys.readouterr()
    model, _ = build_model(_tiny(f"model.vision_init={tmp_path / 'k400.pth'}"))
    assert "warning" not in capsys.readouterr().err
    assert torch.equal(model.vision_encoder.pos_embed, source.vision_encoder.pos_embed)
    source.save_pretrained(tmp_path / "whole")
    build_model(_tiny(f"model.vision_init={tmp_path / 'k400.pth'}", f"model.init={tmp_path / 'whole'}"))
    assert "model.vision_init=" in capsys.readouterr().err  # overwritten entirely by model.init


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from vmm.data.synthetic import generate_corpus
    root = tmp_path_factory.mktemp("corpus")
    generate_corpus(root, num_videos=12, seed=0, size=32, seconds=1.0, workers=1)
    return root


@pytest.mark.parametrize("extra, expected", [
    (["loss.video_mask_ratio=0.6"], ("warning: loss.video_mask_ratio=0.6, ", " not used with loss.uta=0")),
    (["loss.mlm=0", "loss.mlm_prob=0.15"], ("warning: loss.mlm_prob=0.15 is not used with loss.mlm=0",)),
    (["teacher.distill_model=runs/x/final"], ("warning: teacher.distill_model='runs/x/final' is not used with "
                                              "loss.distill=0",)),
])
def test_options_a_switched_off_loss_would_drop_are_warned_about(corpus, tmp_path, capsys, extra, expected):
    data = f"data.train=[{{'anno': '{corpus / 'train.json'}', 'root': '{corpus}'}}]"
    code = main(["--config", TINY, data, f"train.output_dir={tmp_path / 'out'}", "loss.uta=0", *extra, "--check"])
    err = capsys.readouterr().err
    assert code == 0 and all(part in err for part in expected), err


def test_stage2_recipe_inheriting_stage1_settings_is_quiet():
    from vmm.training.config import unused_options
    assert unused_options(load_config(PRETRAIN / "videomamba_m16_5m_stage2.yaml")) == []


def test_stage2_init_from_a_stage1_safetensors_file_names_no_tied_tensor(tmp_path, capsys):
    """The MLM decoder is the word-embedding table: a safetensors file stores it once, and loading it fills both,
    so neither name is reported as missing (the model is complete)."""
    source, _ = build_model(_tiny())
    source.save_pretrained(tmp_path / "stage1")
    capsys.readouterr()
    model, _ = build_model(_tiny(f"model.init={tmp_path / 'stage1' / 'model.safetensors'}"))
    assert "warning" not in capsys.readouterr().err
    assert torch.equal(model.text_encoder.embeddings.word_embeddings.weight,
                       source.text_encoder.embeddings.word_embeddings.weight)


def test_an_unreadable_init_file_is_named_by_its_option(tmp_path):
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(VmmError, match=r"^model.init: .*notes.pth"):
        build_model(_tiny(f"model.init={tmp_path / 'notes.pth'}"))


@pytest.mark.parametrize("size, gpus", [("5m", 16), ("17m", 32), ("25m", 32)])
def test_released_recipes_launch_on_the_official_gpus_from_the_official_weights(size, gpus):
    """Spec 3.5: 2 x 8 GPUs for 5M and 4 x 8 for 17M/25M at 128 clips each (the global batch, which VTC's negatives
    and the step count depend on), in bf16; the vision tower from the K400 masked pretraining, the text tower from
    BERT-base, a CLIP ViT-B/16 teacher with OpenAI's weights (QuickGELU); cosine to the official min_lr_multi 0.01."""
    import re

    import yaml
    recipe = PRETRAIN / f"videomamba_m16_{size}_stage1.yaml"
    launch = re.search(r"--config_file (configs/accelerate/\S+\.yaml)", recipe.read_text()).group(1)
    accelerate = yaml.safe_load((REPO / launch).read_text())
    assert (accelerate["num_processes"], accelerate["num_machines"] * 8) == (gpus, gpus)
    assert accelerate["distributed_type"] == "MULTI_GPU" and accelerate["mixed_precision"] == "bf16"
    s1 = load_config(recipe)
    assert s1.data.batch_size * gpus == {16: 2048, 32: 4096}[gpus]
    assert s1.model.text["init_from"].endswith("bert-base-uncased") and s1.model.init is None
    assert (s1.teacher.clip_model, s1.teacher.clip_weights, s1.teacher.clip_quick_gelu) == ("ViT-B-16", "openai", True)
    assert s1.schedule.min_lr_ratio == 0.01 and s1.schedule.max_steps is None and s1.optim.grad_clip is None
    s2 = load_config(PRETRAIN / f"videomamba_m16_{size}_stage2.yaml")
    assert s2.model.text.get("init_from") is None  # BERT comes from the stage-1 model, not from BERT-base again


def test_masked_stage_pools_one_vector_per_clip_and_the_unmasked_stage_one_per_frame():
    """Spec 3.2: with the attention mask of stage 1 the VTC feature is CLS + mean of the visible tokens (B, 1, D);
    unmasked (stage 2, eval) it is per frame (B, T, D), as the recipes' model config keeps keep_temporal."""
    from vmm.training.teacher import attention_guided_mask
    assert check_model_config(load_config(PRETRAIN / "videomamba_m16_5m_stage2.yaml")).vision.keep_temporal
    model, _ = build_model(_tiny())
    encoder, (B, T, P) = model.vision_encoder, (2, 4, 4)  # tiny: 4 frames of 2 x 2 patches
    video = torch.randn(B, 3, T, 32, 32)
    mask = attention_guided_mask(torch.rand(B, T, P), 0.5)
    assert mask.shape == (B, 1 + T * P) and int((~mask[:, 1:]).sum()) == B * T * P // 2
    with torch.no_grad():
        _, masked, x_clip = encoder(video, mask=mask, keep_temporal=model.cfg.vision.keep_temporal)
        _, unmasked, _ = encoder(video, keep_temporal=model.cfg.vision.keep_temporal)
    assert masked.shape == (B, 1, 64) and unmasked.shape == (B, T, 64)
    assert x_clip.shape[-2:] == (1 + T * P // 2, 32)  # the visible tokens (CLS too) go to the CLIP decoder
