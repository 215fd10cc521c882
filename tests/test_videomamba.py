"""The VideoMamba encoders against the official key lists and the official golden outputs."""
import json

import numpy as np
import pytest
import torch

import vmm
from tests.conftest import golden_files
from vmm.errors import VmmError


def _shapes(model):
    return {k: list(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("size", ["tiny", "small", "middle"])
def test_classifier_state_dict_matches_official(reference_dir, size):
    ref = json.loads((reference_dir / f"videomamba_state_dict_{size}.json").read_text())
    model = vmm.create_model(f"videomamba_{size}")
    assert _shapes(model) == ref


def _key_lists():
    from tests.conftest import REFERENCE
    files = sorted(REFERENCE.glob("videomamba_state_dict_*.json")) if REFERENCE.is_dir() else []
    return [pytest.param(f, id=f.stem) for f in files if "_mm_" not in f.name]


@pytest.mark.parametrize("path", _key_lists())
def test_every_official_key_list_is_built_from_its_own_shapes(path):
    """Any official classifier key list in the reference folder (other sizes, frame counts, resolutions): the
    sizes read from its shapes build a model with exactly its keys and shapes."""
    ref = json.loads(path.read_text())
    sizes = vmm.vision_overrides_from_state_dict({k: torch.empty(v) for k, v in ref.items()})
    assert _shapes(vmm.create_model("videomamba_tiny", **sizes)) == ref


def test_param_counts_match_spec():
    counts = {n: sum(p.numel() for p in vmm.create_model(f"videomamba_{n}").parameters())
              for n in ("tiny", "small", "middle")}
    assert counts == {"tiny": 7_033_744, "small": 25_568_656, "middle": 73_875_856}


def test_vision_encoder_matches_official_multimodal_subset(reference_dir):
    ref = json.loads((reference_dir / "videomamba_state_dict_mm_m16_retrieval.json").read_text())
    sub = {k[len("vision_encoder."):]: v for k, v in ref.items() if k.startswith("vision_encoder.")}
    assert _shapes(vmm.create_model("videomamba_middle_vision")) == sub


@pytest.fixture(scope="module")
def golden(reference_dir):
    return np.load(reference_dir / "videomamba_golden_tiny_d2.npz", allow_pickle=False)


def _sub(z, prefix):
    return {k[len(prefix):]: torch.from_numpy(z[k]) for k in z.files if k.startswith(prefix)}


def _close(a, b, tol=1e-5):
    err = (a - torch.from_numpy(b)).abs().max().item()
    assert err <= tol, f"max abs error {err}"


def _golden_part(path, part: str, name: str):
    """A fixture's ``part`` (sm/ or mm/): the arrays, its model built from the sizes of its own weights (so every
    fixture of this format is built the same way) with them loaded, and its input."""
    z = np.load(path, allow_pickle=False)
    sd = _sub(z, f"{part}/state_dict/")
    model = vmm.create_model(name, **vmm.vision_overrides_from_state_dict(sd)).eval()
    vmm.load_checkpoint(model, sd)
    return z, model, torch.from_numpy(z[f"{part}/input_BCTHW"])


def test_golden_sizes_are_read_from_its_weights(golden):
    assert vmm.vision_overrides_from_state_dict(_sub(golden, "sm/state_dict/")) == dict(
        embed_dim=192, depth=2, img_size=32, patch_size=16, in_chans=3, tubelet_size=1, num_frames=4, d_state=16,
        d_conv=4, expand=2, dt_rank=12, num_classes=5)


@pytest.mark.parametrize("path", golden_files("sm/state_dict/"))
def test_golden_classifier(path):
    z, m, x = _golden_part(path, "sm", "videomamba_tiny")
    with torch.no_grad():
        _close(m.forward_features(x), z["sm/cls_feature"])
        if "sm/logits" in z.files:
            _close(m(x), z["sm/logits"])
        if "sm/mixer0_input_BLD" in z.files:
            _close(m.layers[0].mixer(torch.from_numpy(z["sm/mixer0_input_BLD"])), z["sm/mixer0_output_BLD"])


@pytest.mark.parametrize("path", golden_files("mm/state_dict/"))
def test_golden_multimodal_vision_encoder(path):
    z, e, x = _golden_part(path, "mm", "videomamba_tiny_vision")
    with torch.no_grad():
        x_vis, pooled, x_clip = e(x, keep_temporal=True)
        _close(x_vis, z["mm/patch_tokens_keep_temporal"])
        _close(pooled, z["mm/pooled_keep_temporal"])
        assert x_clip is None
        if "mm/pooled_no_temporal" in z.files:
            _close(e(x, keep_temporal=False)[1], z["mm/pooled_no_temporal"])
        if "mm/image_input_first_frame_pooled" in z.files:
            _close(e(x[:, :, :1])[1], z["mm/image_input_first_frame_pooled"])  # T=1: image path



def _golden_outputs(z, model, x, part):
    """What the fixture records of ``part``, computed by ``model``: (output, fixture key) pairs."""
    if part == "sm":
        return [(model.forward_features(x), "sm/cls_feature"), (model(x), "sm/logits")]
    x_vis, pooled, _ = model(x, keep_temporal=True)
    return [(x_vis, "mm/patch_tokens_keep_temporal"), (pooled, "mm/pooled_keep_temporal"),
            (model(x, keep_temporal=False)[1], "mm/pooled_no_temporal")]


@pytest.mark.parametrize("mode", ["bf16 weights", "bf16 autocast"])
@pytest.mark.parametrize("path, part, name", [
    pytest.param(p.values[0], part, name, id=f"{p.id}-{part}")
    for part, name in (("sm", "videomamba_tiny"), ("mm", "videomamba_tiny_vision"))
    for p in golden_files(f"{part}/state_dict/")])
def test_golden_outputs_in_bf16_on_cpu(path, part, name, mode):
    """The official fp32 outputs within bf16 rounding (spec 3.6: the official evaluation casts the model to bf16
    and runs under bf16 autocast), for a model cast with precision="bf16" and for an fp32 one under autocast:
    within 2% of each output's range (bf16 keeps 8 bits; the residual stream stays fp32)."""
    import contextlib
    z = np.load(path, allow_pickle=False)
    sd = _sub(z, f"{part}/state_dict/")
    precision = "bf16" if mode == "bf16 weights" else "fp32"
    model = vmm.load_checkpoint(vmm.create_model(name, precision=precision,
                                                 **vmm.vision_overrides_from_state_dict(sd)).eval(), sd)
    x = torch.from_numpy(z[f"{part}/input_BCTHW"])
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "bf16 autocast" else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        outputs = _golden_outputs(z, model, x, part)
    for ours, key in outputs:
        if key not in z.files:
            continue
        assert ours.dtype == torch.bfloat16, key  # really computed in bf16
        ref = torch.from_numpy(z[key])
        err = (ours.float() - ref).abs().max().item()
        assert err <= 2e-2 * ref.abs().max().item(), f"{key}: max abs error {err}"


def test_headless_classifier_sizes_read_from_its_weights():
    """The official VisionMamba(num_classes=0) has an Identity head, so its state dict has no head keys.

    Its sizes must build a headless classifier; num_classes was left at the default 400, and loading the file
    then failed with missing head.weight/head.bias."""
    src = vmm.create_model("videomamba_tiny", depth=2, num_frames=6, tubelet_size=2, img_size=48, patch_size=8,
                           embed_dim=64, num_classes=0)
    sd = src.state_dict()
    assert not any(k.startswith("head.") for k in sd)
    overrides = vmm.vision_overrides_from_state_dict(sd)
    assert overrides["num_classes"] == 0
    m = vmm.load_checkpoint(vmm.create_model("videomamba_tiny", **overrides).eval(), sd)
    x = torch.randn(1, 3, 6, 48, 48)
    with torch.no_grad():
        assert m(x).shape == (1, 64)
        torch.testing.assert_close(m(x), src.eval()(x))
    # an encoder file (final norm "norm", no head) still leaves the head to the caller
    enc = vmm.create_model("videomamba_tiny_vision", depth=1, num_frames=2, img_size=32).state_dict()
    assert "num_classes" not in vmm.vision_overrides_from_state_dict(enc)


def test_official_init_details():
    m = vmm.create_model("videomamba_tiny", depth=3, num_frames=2, img_size=32)
    mixer = m.layers[1].mixer
    assert torch.equal(mixer.dt_proj.bias, torch.zeros_like(mixer.dt_proj.bias))
    assert torch.equal(mixer.dt_proj_b.bias, torch.zeros_like(mixer.dt_proj_b.bias))
    assert torch.allclose(mixer.A_log[0].exp(), torch.arange(1, 17, dtype=torch.float32))
    assert torch.equal(mixer.D, torch.ones_like(mixer.D))
    assert m.cls_token.abs().sum() == 0 and m.temporal_pos_embedding.abs().sum() == 0
    assert 0.015 < m.pos_embed.std().item() < 0.025
    bound = 1 / (mixer.d_inner ** 0.5) / (3 ** 0.5)  # kaiming-uniform(a=sqrt 5) bound / sqrt(depth)
    assert mixer.out_proj.weight.abs().max().item() <= bound + 1e-6
    # shifted drop-path schedule: block 0 has none, block i has linspace(0, r, depth)[i - 1]
    m = vmm.create_model("videomamba_tiny", depth=4, drop_path_rate=0.3, num_frames=2, img_size=32)
    rates = [layer.drop_path.p for layer in m.layers]
    assert rates == pytest.approx([0.0, 0.0, 0.1, 0.2]) and m.drop_path.p == pytest.approx(0.3)
    assert {"A_log", "D", "A_b_log", "D_b"} <= {n.split(".")[-1] for n in m.no_weight_decay()}


def _no_grad(m):
    return [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]


def test_every_parameter_gets_a_gradient():
    e = vmm.create_model("videomamba_tiny_vision", depth=2, num_frames=2, img_size=32)
    x_vis, pooled, x_clip = e(torch.randn(2, 3, 2, 32, 32), mask=None)
    (x_vis.sum() + pooled.sum()).backward()
    assert _no_grad(e) == ["clip_decoder.0.head.weight", "clip_decoder.0.head.bias",
                           "clip_decoder.0.norm.weight", "clip_decoder.0.norm.bias"]  # used only with a mask
    # The classifier reads only the CLS, which sits first: the last layer's forward scan sees nothing but
    # itself there, so that layer's forward A cannot matter (the official model behaves the same).
    m = vmm.create_model("videomamba_tiny", depth=2, num_frames=2, img_size=32, num_classes=3)
    m(torch.randn(2, 3, 2, 32, 32)).sum().backward()
    assert _no_grad(m) == ["layers.1.mixer.A_log"]


def test_grad_checkpointing_changes_nothing():
    m = vmm.create_model("videomamba_tiny", depth=2, num_frames=2, img_size=32, num_classes=3)
    x = torch.randn(1, 3, 2, 32, 32)
    ref = m(x)
    m.set_grad_checkpointing(True)
    torch.testing.assert_close(m(x), ref)


def test_overrides_are_checked():
    with pytest.raises(VmmError, match="unknown model option"):
        vmm.create_model("videomamba_tiny", num_layers=3)
    with pytest.raises(VmmError, match="unknown model"):
        vmm.create_model("videomamba_huge")


def test_an_unknown_frame_mode_is_refused_before_the_model_is_built():
    """frame_mode='perframe' built a model (a training run then failed on its first batch); given to the
    multimodal model, pooled_per_clip already counted it as a joint model."""
    with pytest.raises(VmmError, match=r"^frame_mode='perframe' is not supported; pass one of joint, per_frame$"):
        vmm.create_model("videomamba_tiny_vision", depth=1, num_frames=2, img_size=32, frame_mode="perframe")
    with pytest.raises(VmmError, match=r"^vision frame_mode='per-frame' is not supported"):
        vmm.create_model("videomamba_m16_mm", vision=dict(depth=1, frame_mode="per-frame"))


def test_wrong_frame_count_is_a_clear_error():
    m = vmm.create_model("videomamba_tiny", depth=1, num_frames=4, img_size=32)
    with pytest.raises(VmmError, match="num_frames=2"):
        m(torch.randn(1, 3, 2, 32, 32))



@pytest.mark.parametrize("name", ["videomamba_tiny", "videomamba_tiny_vision"])
def test_a_frame_of_another_shape_with_the_same_patch_count_is_refused(name):
    """A 16x64 frame has the 4 patches of the model's 32x32 ones: it ran, its 1x4 patches silently given the 2x2
    grid's position embeddings. Any frame size the model was not built for is named."""
    m = vmm.create_model(name, depth=1, num_frames=2, img_size=32).eval()
    for h, w in [(16, 64), (64, 16)]:
        with pytest.raises(VmmError, match=rf"^input is 4 patches per frame \({h // 16}x{w // 16} from {h}x{w} pixels, "
                                           r"patch_size=16\) but the model was built for 2x2 \(img_size=32\); resize "
                                           r"frames to 32x32"):
            m(torch.randn(1, 3, 2, h, w))

def test_per_frame_mode_is_a_frame_order_blind_image_encoder():
    e = vmm.create_model("videomamba_tiny_vision", depth=2, num_frames=4, img_size=32, frame_mode="per_frame").eval()
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        x_vis, pooled, _ = e(x)
        _, reversed_pooled, _ = e(x.flip(2))
        _, one, _ = e(x[:, :, 2:3])  # frame 2 alone, through the T=1 image path
    assert x_vis.shape == (2, 16, 192) and pooled.shape == (2, 4, 192)
    torch.testing.assert_close(pooled.flip(1), reversed_pooled)
    torch.testing.assert_close(pooled[:, 2], one[:, 0])


def test_tubelet_pooling_follows_the_official_view_or_says_why_it_cannot():
    """With tubelet_size > 1 the official keep_temporal pooling views the T'*P patch tokens as T groups (input
    frames); where they do not divide it was a bare RuntimeError from reshape."""
    e = vmm.create_model("videomamba_tiny_vision", depth=1, embed_dim=32, tubelet_size=2, num_frames=2,
                         img_size=48).eval()
    x = torch.randn(1, 3, 2, 48, 48)  # one tubelet of 9 patches, 2 input frames
    with torch.no_grad():
        with pytest.raises(VmmError, match="tubelet_size=2; pass keep_temporal=False or pool_type='cls'"):
            e(x, keep_temporal=True)
        x_vis, pooled, _ = e(x, keep_temporal=False)
    assert x_vis.shape == (1, 9, 32) and pooled.shape == (1, 1, 32)
    e = vmm.create_model("videomamba_tiny_vision", depth=1, embed_dim=32, tubelet_size=2, num_frames=4,
                         img_size=32).eval()
    with torch.no_grad():  # 2 tubelets x 4 patches in 4 groups of 2 tokens, as the official view(B, T, -1, D)
        x_vis, pooled, _ = e(torch.randn(1, 3, 4, 32, 32), keep_temporal=True)
    assert pooled.shape == (1, 4, 32) and x_vis.shape == (1, 8, 32)


def test_distillation_target_of_a_float64_model():
    """The official student target adds its float32 sin-cos table cast to the input's dtype (type_as(x)) to the
    fp32 residual; vmm cast it to the residual's fp32, so a float64 model failed in its float64 clip decoder."""
    e = vmm.create_model("videomamba_tiny_vision", depth=2, embed_dim=32, num_frames=2, img_size=32,
                         clip_output_dim=8).double().eval()
    x = torch.randn(2, 3, 2, 32, 32, dtype=torch.float64)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, [2, 7]] = mask[1, [1, 4]] = True  # CLS (0) stays visible
    with torch.no_grad():
        _, _, x_clip = e(x, mask=mask)
        _, residual = e.run_layers(e.embed(x)[~mask].reshape(2, 7, 32))
    table = np.array([[p / np.power(10000, 2 * (j // 2) / 32) for j in range(32)] for p in range(9)])
    table[:, 0::2], table[:, 1::2] = np.sin(table[:, 0::2]), np.cos(table[:, 1::2])
    pos = torch.tensor(table, dtype=torch.float).double().expand(2, -1, -1)[~mask].reshape(2, 7, 32)
    dec = e.clip_decoder[0]
    expected = torch.nn.functional.layer_norm(
        (residual.double() + pos) @ dec.head.weight.T + dec.head.bias, (8,), dec.norm.weight, dec.norm.bias)
    assert x_clip.dtype == torch.float64 and x_clip.shape == (1, 2, 7, 8)
    torch.testing.assert_close(x_clip[0], expected, rtol=0, atol=1e-12)


def test_set_scan_backend_refuses_a_name_that_is_none_at_once():
    """set_scan_backend took any name, and the model failed at its next forward."""
    import vmm
    from vmm.errors import VmmError
    model = vmm.create_model("videomamba_tiny", depth=1, num_frames=2, img_size=32)
    with pytest.raises(VmmError, match=r"^set_scan_backend: scan_backend='Triton' is not a scan backend; pass one "
                                       r"of mamba_ssm, reference, triton"):
        model.set_scan_backend("Triton")
    model.set_scan_backend("reference")
    assert model.cfg.scan_backend == "reference" and {layer.mixer.scan_backend for layer in model.layers} == {
        "reference"}


def test_the_gpu_patch_embedding_takes_an_empty_batch():
    """On CUDA the patch embedding runs as one GEMM, whose view(..., -1) could not size an empty batch: 0 clips
    encoded to no rows on the CPU but failed on a GPU with "cannot reshape tensor of 0 elements". The GEMM path
    runs here on CPU tensors that say they are CUDA ones."""
    from unittest import mock
    embed = vmm.create_model("videomamba_tiny_vision", depth=1, num_frames=4, img_size=32).patch_embed
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad(), mock.patch.object(torch.Tensor, "is_cuda", property(lambda self: True)):
        gemm, empty = embed(x), embed(x[:0])
    with torch.no_grad():
        conv = embed(x)
    assert torch.allclose(gemm, conv, atol=1e-5) and empty.shape == (0, *conv.shape[1:])
