"""Parity with the official VideoMamba code at configurations the shared golden files do not pin.

Each tests/data/official22/*.npz holds an official state dict, random inputs and the official outputs
(README.md there says how they were made). The state dict is written as an official .pth file and loaded the
way a user would: vmm.create_model(..., pretrained=file) with the settings read from its shapes.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import vmm
from vmm.models.checkpoint import vision_overrides_from_state_dict

DATA = Path(__file__).parent / "data" / "official22"
# fp32 on both sides; the official outputs reach about 4, so this is ~1e-6 relative.
ATOL = 1e-5


def _fixture(name, tmp_path, **extra):
    z = np.load(DATA / f"{name}.npz", allow_pickle=False)
    cfg = json.loads(str(z["config_json"]))
    sd = {k[len("state_dict/"):]: torch.from_numpy(z[k]) for k in z.files if k.startswith("state_dict/")}
    path = tmp_path / f"{name}.pth"
    torch.save(sd, path)
    overrides = dict(vision_overrides_from_state_dict(sd), **extra)
    if cfg["cls"] == "VisionMamba":
        model = vmm.create_model("videomamba_tiny", pretrained=path, **overrides)
    else:
        model = vmm.create_model("videomamba_tiny_vision", pretrained=path, pool_type=cfg["kwargs"]["pool_type"],
                                 **overrides)
    return z, cfg, model.eval()


def cfg_dst(name):
    """The frame count and image size an interpolation fixture's checkpoint is loaded at."""
    z = np.load(DATA / f"{name}.npz", allow_pickle=False)
    return json.loads(str(z["config_json"]))["dst"]


def _close(ours, z, key):
    expected = z[key]
    assert tuple(ours.shape) == expected.shape, key
    np.testing.assert_allclose(ours.detach().numpy(), expected, rtol=0, atol=ATOL, err_msg=key)


@torch.no_grad()
def test_vision_encoder_odd_frames_unusual_ssm_sizes_and_avg_pool(tmp_path):
    # 5 frames, 3x3 grid of 8-px patches, D=48, depth 3, d_state 8, d_conv 3, expand 3, dt_rank 5, pool "avg"
    z, cfg, model = _fixture("mm_vision_odd", tmp_path)
    assert (model.cfg.d_conv, model.cfg.expand, model.cfg.dt_rank, model.cfg.num_frames) == (3, 3, 5, 5)
    x = torch.from_numpy(z["input/video_BCTHW"])
    for tag, call in cfg["calls"]:
        x_vis, pooled, _ = model(x, **call)
        _close(x_vis, z, f"out/{tag}/x_vis")
        _close(pooled, z, f"out/{tag}/pooled")
    x_vis, pooled, _ = model(torch.from_numpy(z["input/image_BCTHW"]))  # T=1: no temporal table
    _close(x_vis, z, "out/image/x_vis")
    _close(pooled, z, "out/image/pooled")


@torch.no_grad()
def test_vision_encoder_masked_pretraining_outputs(tmp_path):
    # UMT masking over tubelets of 2 frames: 6 of each tubelet's 9 patches hidden; x_clip is the distillation
    # target (the fp32 residual entering the final add + the sinusoid table at the visible positions -> decoder)
    z, _, model = _fixture("mm_vision_tubelet2", tmp_path)
    x_vis, pooled, x_clip = model(torch.from_numpy(z["input/video_BCTHW"]), mask=torch.from_numpy(z["input/mask"]),
                                  keep_temporal=False)
    _close(x_vis, z, "out/mask/x_vis")
    _close(pooled, z, "out/mask/pooled")
    _close(x_clip, z, "out/mask/x_clip")


@torch.no_grad()
def test_vision_encoder_tubelet_two_and_cls_cat_avg_pool(tmp_path):
    # tubelet 2 over 6 frames, 3x3 grid of 4-px patches, expand 1, d_conv 2, d_state 4; per-clip cls_cat_avg
    z, cfg, model = _fixture("mm_vision_tubelet2", tmp_path)
    assert model.cfg.tubelet_size == 2
    x_vis, pooled, _ = model(torch.from_numpy(z["input/video_BCTHW"]), keep_temporal=False)
    _close(x_vis, z, "out/no_temporal/x_vis")
    _close(pooled, z, "out/no_temporal/pooled")  # (B, 2, D): the CLS and the mean, concatenated


@torch.no_grad()
def test_classifier_three_frames_seven_classes(tmp_path):
    z, _, model = _fixture("classifier", tmp_path)
    x = torch.from_numpy(z["input/video_BCTHW"])
    _close(model.forward_features(x), z, "out/features")
    _close(model(x), z, "out/logits")


@torch.no_grad()
def test_classifier_checkpoint_interpolated_to_more_frames_and_a_larger_grid(tmp_path):
    # A checkpoint for 4 frames (2 tubelets of 2) at 16 px (2x2 grid) loaded into a model for 8 frames at 32 px
    # (4x4 grid): the official bicubic / linear table interpolation, then the forward pass.
    z, cfg, model = _fixture("classifier_interp", tmp_path, **cfg_dst("classifier_interp"))
    _close(model.pos_embed, z, "out/pos_embed")
    _close(model.temporal_pos_embedding, z, "out/temporal_pos_embedding")
    _close(model(torch.from_numpy(z["input/video_BCTHW"])), z, "out/logits")


@pytest.mark.parametrize("name", ["mm_vision_odd", "mm_vision_tubelet2", "classifier", "classifier_interp"])
def test_fixture_state_dicts_load_strictly(name, tmp_path):
    # Every official key has its place in the vmm model: a renamed or dropped key would fail here, not only in
    # the numbers above.
    z = np.load(DATA / f"{name}.npz", allow_pickle=False)
    keys = {k[len("state_dict/"):] for k in z.files if k.startswith("state_dict/")}
    _, _, model = _fixture(name, tmp_path, **(cfg_dst(name) if name.endswith("_interp") else {}))
    assert set(model.state_dict()) == keys  # PretrainVideoMamba's clip_decoder and pool_norm included
