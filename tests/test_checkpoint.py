"""Checkpoint loading: official layouts, interpolation, dtype, and every bad-input case."""
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vmm
from vmm.errors import CheckpointError


def tiny(**kw):
    base = dict(depth=2, num_frames=4, img_size=32, num_classes=5)
    base.update(kw)
    return vmm.create_model("videomamba_tiny", **base).eval()


def tiny_vision(**kw):
    base = dict(depth=2, num_frames=4, img_size=32)
    base.update(kw)
    return vmm.create_model("videomamba_tiny_vision", **base).eval()


def test_flat_and_wrapped_files_and_bf16(tmp_path):
    src = tiny()
    flat, wrapped = tmp_path / "flat.pth", tmp_path / "wrapped.pth"
    torch.save(src.state_dict(), flat)
    torch.save({"model": {k: v.to(torch.bfloat16) for k, v in src.state_dict().items()}, "epoch": 3}, wrapped)
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(vmm.load_checkpoint(tiny(), flat)(x), src(x))
        got = vmm.load_checkpoint(tiny(), wrapped)
        assert got.pos_embed.dtype == torch.float32
        torch.testing.assert_close(got.pos_embed, src.pos_embed.to(torch.bfloat16).float())


@pytest.mark.parametrize("prefix", ["backbone.", "encoder."])
def test_finetune_prefixes_are_stripped(tmp_path, prefix):
    """Spec 4.4: the official fine-tune loader accepts model/module wrappers and strips backbone./encoder."""
    src = tiny()
    path = tmp_path / "prefixed.pth"
    torch.save({"module": {prefix + k: v for k, v in src.state_dict().items()}}, path)
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(vmm.load_checkpoint(tiny(), path)(x), src(x))
    vision = tiny_vision()
    got = vmm.load_checkpoint(tiny_vision(), {prefix + k: v for k, v in vision.state_dict().items()})
    assert torch.equal(got.pool_norm.weight, vision.pool_norm.weight)


def test_vision_part_of_multimodal_file(tmp_path):
    src = tiny_vision()
    sd = {f"vision_encoder.{k}": v for k, v in src.state_dict().items()}
    sd.update({"text_encoder.bert.embeddings.word_embeddings.weight": torch.zeros(3, 2),
               "clip_teacher.proj": torch.zeros(2, 2), "temp": torch.tensor(0.07)})
    path = tmp_path / "mm.pth"
    torch.save({"model": sd}, path)
    got = vmm.load_checkpoint(tiny_vision(), path)
    assert torch.equal(got.pool_norm.weight, src.pool_norm.weight)


def test_temporal_and_spatial_interpolation():
    src = tiny()
    sd = src.state_dict()
    dst = vmm.load_checkpoint(tiny(num_frames=8, img_size=64), sd)
    expect_t = F.interpolate(sd["temporal_pos_embedding"].permute(0, 2, 1), size=8, mode="linear",
                             align_corners=False).permute(0, 2, 1)
    torch.testing.assert_close(dst.temporal_pos_embedding, expect_t)
    assert dst.pos_embed.shape == (1, 17, 192)
    torch.testing.assert_close(dst.pos_embed[:, 0], sd["pos_embed"][:, 0])
    grid = sd["pos_embed"][:, 1:].reshape(1, 2, 2, 192).permute(0, 3, 1, 2)
    expect_s = F.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    torch.testing.assert_close(dst.pos_embed[:, 1:], expect_s.reshape(1, 16, 192))


def test_wrong_shape_is_an_error_naming_the_key():
    sd = tiny().state_dict()
    sd["head.weight"] = torch.zeros(7, 192)
    with pytest.raises(CheckpointError, match=r"head\.weight \(7, 192\)"):
        vmm.load_checkpoint(tiny(), sd)


def test_missing_and_unexpected_keys(tmp_path):
    sd = tiny().state_dict()
    del sd["layers.1.mixer.D_b"]
    sd["layers.9.mixer.D"] = torch.zeros(384)
    with pytest.raises(CheckpointError, match=r"missing keys: layers\.1\.mixer\.D_b") as e:
        vmm.load_checkpoint(tiny(), sd)
    assert "unexpected keys: layers.9.mixer.D" in str(e.value)
    assert "\n" not in str(e.value)


def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "notes.pth"
    p.write_text("these are my notes, not weights")
    with pytest.raises(CheckpointError, match="not a PyTorch or safetensors checkpoint"):
        vmm.load_checkpoint(tiny(), p)
    with pytest.raises(CheckpointError, match="does not exist"):
        vmm.load_checkpoint(tiny(), tmp_path / "nope.pth")
    p2 = tmp_path / "list.pth"
    torch.save([1, 2, 3], p2)
    with pytest.raises(CheckpointError, match="no state dict"):
        vmm.load_checkpoint(tiny(), p2)


def test_a_folder_says_what_to_pass_instead(tmp_path):
    saved = vmm.save_pretrained(tiny(), tmp_path / "saved")
    saved_re = re.escape(str(saved))
    with pytest.raises(CheckpointError, match=rf"^checkpoint {saved_re} is a saved vmm model folder, not a weights "
                                              rf"file; load it with vmm.from_pretrained\('{saved_re}'\)$"):
        vmm.load_checkpoint(tiny(), saved)  # was "is a folder, not ... a vmm model folder", which it is
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty is a folder, not a weights file or a vmm model folder \(no "
                                              r"config.json \+ model.safetensors\); pass a .pth or .safetensors file$"):
        vmm.load_checkpoint(tiny(), tmp_path / "empty")


class Payload:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


class RunConfig(dict):
    """A dict subclass with attribute access, as the EasyDict config the official training saves beside the
    weights."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.__dict__ = self


@pytest.mark.parametrize("zipped", [True, False])
def test_a_training_checkpoint_loads_its_weights_and_runs_none_of_its_objects(tmp_path, capsys, zipped):
    """The official multimodal training saves its config next to the weights, the ImageNet trainer its argparse
    namespace: torch's safe loader refused such a file whole, and weights_only=False would run what it names."""
    import argparse
    import os
    src = tiny()
    p = tmp_path / "checkpoint.pth"
    torch.save({"model": src.state_dict(), "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]},
                "config": RunConfig(lr=1e-4, model=RunConfig(num_frames=8)), "args": argparse.Namespace(epochs=3),
                "payload": Payload(), "hook": os.system, "epoch": 3}, p, _use_new_zipfile_serialization=zipped)
    model = vmm.load_checkpoint(tiny(), p)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), src.state_dict().values()))
    assert "arbitrary code ran" not in capsys.readouterr().out
    torch.save({"model": {"head.weight": Payload()}}, p, _use_new_zipfile_serialization=zipped)
    with pytest.raises(CheckpointError, match=r"is not a state dict: entries head.weight are not tensors$"):
        vmm.load_checkpoint(tiny(), p)
    torch.save(src, p, _use_new_zipfile_serialization=zipped)  # the whole model pickled
    # (the legacy format asks for the pickled class's source, which a placeholder has not: refused for safety)
    with pytest.raises(CheckpointError, match=r"holds a pickled Python object \(a whole model\?\), not a state "
                                              r"dict; re-save it with torch.save\(model.state_dict\(\), path\)$"
                       if zipped else r"contains objects other than tensors and was refused for safety"):
        vmm.load_checkpoint(tiny(), p)
    assert "arbitrary code ran" not in capsys.readouterr().out


def test_every_way_torch_and_safetensors_write_a_state_dict(tmp_path):
    """Read or named for what they are: safetensors bytes under a .pth name load; an old-style pickle with a
    protocol the safe unpickler cannot read is not called unsafe."""
    from safetensors.torch import save_file
    sd = tiny().state_dict()
    save_file(sd, str(tmp_path / "weights.pth"))
    torch.save(sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    for name in ("weights.pth", "legacy.pth"):
        got = vmm.read_checkpoint(tmp_path / name)
        assert got.keys() == sd.keys() and torch.equal(got["head.weight"], sd["head.weight"]), name
    torch.save(sd, tmp_path / "p4.pth", pickle_protocol=4)  # an opcode torch's safe loader does not read
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = vmm.read_checkpoint(tmp_path / "p4.pth")
    assert got.keys() == sd.keys() and torch.equal(got["head.weight"], sd["head.weight"])
    assert not [w for w in caught if "Detected pickle protocol" in str(w.message)]  # torch's line, not ours


def test_a_file_that_is_no_checkpoint_is_not_called_unsafe(tmp_path):
    """Text whose first byte is a pickle opcode ('g') made torch's unpickler fail with "Unsupported operand",
    which read as a checkpoint refused for safety."""
    p = tmp_path / "garbage.pth"
    p.write_text("garbage bytes here\n")
    with pytest.raises(CheckpointError, match="is not a PyTorch or safetensors checkpoint \\(neither a torch.save "
                                              "archive, a pickle nor a safetensors file\\); pass a .pth, .pt, .bin or "
                                              ".safetensors weights file$"):
        vmm.load_checkpoint(tiny(), p)


def test_safetensors_file(tmp_path):
    from safetensors.torch import save_file
    src = tiny()
    save_file(src.state_dict(), str(tmp_path / "m.safetensors"))
    got = vmm.load_checkpoint(tiny(), tmp_path / "m.safetensors")
    assert torch.equal(got.head.weight, src.head.weight)
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match=r"bad\.safetensors is not a safetensors file \(or it is damaged\)"):
        vmm.load_checkpoint(tiny(), tmp_path / "bad.safetensors")


@pytest.mark.parametrize("layout", ["flat", "backbone", "multimodal"])
def test_sizes_read_from_the_weights_build_a_model_that_loads_them(layout):
    settings = dict(embed_dim=48, depth=3, img_size=24, patch_size=8, in_chans=3, tubelet_size=2, num_frames=6,
                    d_state=8, d_conv=3, expand=1, dt_rank=5)
    if layout == "multimodal":
        src = vmm.create_model("videomamba_m16_mm", vision=settings, embed_dim=16, text=dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, fusion_layer=1))
        sd, expected = src.state_dict(), dict(settings, clip_output_dim=512, clip_decoder_embed_dim=48)
    else:
        src = vmm.create_model("videomamba_tiny", num_classes=9, **settings)
        expected = dict(settings, num_classes=9)
        sd = {("backbone." if layout == "backbone" else "") + k: v for k, v in src.state_dict().items()}
    found = vmm.vision_overrides_from_state_dict(sd)
    assert found == expected
    model = vmm.create_model("videomamba_tiny_vision" if layout == "multimodal" else "videomamba_tiny", **found)
    vmm.load_checkpoint(model, sd)
    with pytest.raises(CheckpointError, match="not a VideoMamba state dict: no cls_token"):
        vmm.vision_overrides_from_state_dict({"text_encoder.embeddings.word_embeddings.weight": torch.zeros(3, 2)})
    # An ImageNet-style image model: a 2-D patch kernel and no temporal table, so no frame count either.
    prefix = "vision_encoder." if layout == "multimodal" else ""
    image = {k[len(prefix):]: v for k, v in src.state_dict().items()
             if k.startswith(prefix) and k != prefix + "temporal_pos_embedding"}
    image["patch_embed.proj.weight"] = image["patch_embed.proj.weight"][:, :, 0]
    found = vmm.vision_overrides_from_state_dict(image)
    assert "num_frames" not in found and found["tubelet_size"] == 1 and found["patch_size"] == 8


def test_a_file_the_loader_refuses_tells_no_input_size(tmp_path, capsys):
    """checkpoint_input_size (the commands' default --frames) read a file with Python objects beside its tensors
    with torch's weights-only load and let its UnpicklingError out: vmm encode/index/eval/classify ended in a
    traceback instead of the loader's one-line refusal."""
    import argparse

    from vmm.cli import main
    from vmm.factory import checkpoint_frames, checkpoint_input_size
    p = tmp_path / "with_args.pth"  # objects beside the tensors are read as inert placeholders now
    torch.save({"model": tiny().state_dict(), "args": argparse.Namespace(lr=1e-4)}, p)
    assert checkpoint_input_size(p) == (4, 32) and checkpoint_frames(p) == 4
    bad_shape = tiny().state_dict()
    bad_shape["pos_embed"] = torch.zeros(5)  # no token axis
    torch.save(bad_shape, tmp_path / "bad_shape.pth")
    assert checkpoint_input_size(tmp_path / "bad_shape.pth") is None
    for name, legacy in (("model.pth", False), ("model_legacy.pth", True)):  # a whole model pickled: refused
        torch.save(tiny(), tmp_path / name, _use_new_zipfile_serialization=not legacy)
        assert checkpoint_input_size(tmp_path / name) is None and checkpoint_frames(tmp_path / name) is None
        assert main(["encode", "--model", "videomamba_tiny", "--checkpoint", str(tmp_path / name),
                     "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and name in err and err.count("\n") == 1, err
        assert ("Python objects" if legacy else "holds a pickled Python object") in err, err


def test_an_imagenet_file_loads_strictly_as_the_official_video_model_starts_from_it(tmp_path):
    """Spec 4.2: the official IN-1K files (image_sm: 2-D patch kernel, no temporal table, {'model': ...}) were
    refused for a missing temporal_pos_embedding. The official video model keeps its zero-initialised table
    when it loads one, so at one frame the loaded model is the image classifier."""
    src = tiny(num_frames=1, num_classes=7)
    with torch.no_grad():
        src.temporal_pos_embedding.normal_()  # must not survive: the file has no temporal table
    image = {k: v for k, v in src.state_dict().items() if k != "temporal_pos_embedding"}
    image["patch_embed.proj.weight"] = image["patch_embed.proj.weight"][:, :, 0].clone()  # [D, 3, 16, 16]
    torch.save({"model": image}, tmp_path / "videomamba_t16_in1k_res224.pth")
    model = vmm.load_checkpoint(tiny(**vmm.vision_overrides_from_state_dict(image), num_frames=1),
                                tmp_path / "videomamba_t16_in1k_res224.pth")
    assert torch.equal(model.temporal_pos_embedding, torch.zeros(1, 1, 192))
    assert torch.equal(model.patch_embed.proj.weight[:, :, 0], image["patch_embed.proj.weight"])
    x = torch.randn(2, 3, 1, 32, 32)
    with torch.no_grad():  # the official image model: the same stack without any temporal embedding
        hidden, residual = model.run_layers(model.embed(x, use_image=True))
        image_logits = model.head(model.final_norm(hidden[:, :1], residual[:, :1])[:, 0])
        assert torch.equal(model(x), image_logits)
    # A video file that lacks its temporal table is still incomplete.
    video = tiny().state_dict()
    del video["temporal_pos_embedding"]
    with pytest.raises(CheckpointError, match="missing keys: temporal_pos_embedding"):
        vmm.load_checkpoint(tiny(), video)


def test_a_position_table_the_official_rule_cannot_resample_is_reported_as_the_file_has_it():
    """A DeiT-style table (CLS + distillation token + grid) made the bicubic reshape raise a bare RuntimeError;
    a table of another width was resampled first and reported with a shape the file does not have."""
    sd = tiny().state_dict()
    sd["pos_embed"] = torch.zeros(1, 2 + 14 * 14, 192)
    with pytest.raises(CheckpointError, match=r"pos_embed \(1, 198, 192\) vs model \(1, 5, 192\)"):
        vmm.load_checkpoint(tiny(), sd)
    small = vmm.create_model("videomamba_small", depth=2, num_frames=8, img_size=224, num_classes=5).state_dict()
    with pytest.raises(CheckpointError, match=r"pos_embed \(1, 197, 384\) vs model \(1, 5, 192\), "
                                              r"temporal_pos_embedding \(1, 8, 384\) vs model \(1, 4, 192\)"):
        vmm.load_checkpoint(tiny(), small)


def test_a_file_of_another_size_names_its_size_and_the_model_to_pass(tmp_path):
    """A VideoMamba-S file given to the Ti model said only "check --model / the model config matches the
    checkpoint" after a list of mismatched keys: which model fits the file was left to guess."""
    small = vmm.create_model("videomamba_small", num_frames=4, img_size=32, num_classes=5).state_dict()
    torch.save(small, tmp_path / "videomamba_s16_k400.pth")
    with pytest.raises(CheckpointError) as e:
        vmm.load_checkpoint(tiny(), tmp_path / "videomamba_s16_k400.pth")
    assert str(e.value).startswith(f"{tmp_path / 'videomamba_s16_k400.pth'} does not fit model videomamba_tiny: ")
    assert str(e.value).endswith("(the file is a VideoMamba with embed_dim=384 and depth=24 and the model has "
                                 "embed_dim=192 and depth=2; pass --model videomamba_small or another model of the "
                                 "file's size, or build one with vmm.vision_overrides_from_state_dict)")
    assert "\n" not in str(e.value)
    vision = {f"vision_encoder.{k}": v for k, v in tiny_vision(depth=3).state_dict().items()}
    with pytest.raises(CheckpointError, match=r"depth=3 and the model has embed_dim=192 and depth=2; pass a --model "
                                              r"of the file's size"):
        vmm.load_checkpoint(tiny_vision(), vision)
    tiny_mm = {f"vision_encoder.{k}": v for k, v in tiny_vision(depth=24).state_dict().items()}
    with pytest.raises(CheckpointError, match="pass --model videomamba_tiny_vision or another"):
        vmm.load_checkpoint(tiny_vision(), tiny_mm)
    # Same sizes, other keys: the key list says what differs, and the generic advice stays.
    sd = tiny().state_dict()
    sd["head.weight"] = torch.zeros(7, 192)
    with pytest.raises(CheckpointError, match=r"\(check --model / the model config matches the checkpoint\)$"):
        vmm.load_checkpoint(tiny(), sd)


def _resample_1d(table, n_out, cubic):
    """Resample axis 0 of a float64 array as the official F.interpolate(align_corners=False, no antialias) does:
    source position (i + 0.5) * n_in / n_out - 0.5, edge values repeated; linear clamps the position at 0,
    bicubic is Keys' cubic convolution with a = -0.75 on the four nearest rows."""
    n_in = table.shape[0]
    out = np.zeros((n_out,) + table.shape[1:])
    for i in range(n_out):
        src = (i + 0.5) * n_in / n_out - 0.5
        if not cubic:
            src = max(src, 0.0)
            x0 = int(np.floor(src))
            t = src - x0
            out[i] = (1 - t) * table[x0] + t * table[min(x0 + 1, n_in - 1)]
            continue
        x0, t, a = int(np.floor(src)), src - np.floor(src), -0.75
        for tap, d in zip(range(x0 - 1, x0 + 3), (1 + t, t, 1 - t, 2 - t)):
            w = ((a + 2) * d - (a + 3)) * d * d + 1 if d <= 1 else ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
            out[i] += w * table[min(max(tap, 0), n_in - 1)]
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("frames, size", [(6, 96), (3, 48)])
def test_position_tables_are_resampled_as_the_official_code_does(frames, size, dtype):
    """Spec 4.2: linear along T, bicubic on the square grid with the CLS slot kept, both align_corners=False,
    checked against a float64 computation written from those rules. A bf16 file's tables were rounded back to
    bf16 after resampling, so the fp32 model got them off by up to 1e-2; a float64 model's were resampled in
    float32, off by up to 1e-7."""
    torch.manual_seed(0)
    src = tiny(depth=1, embed_dim=32, img_size=64)  # a 4x4 grid, 4 frames
    sd = {k: torch.randn_like(v).to(dtype) if "pos_emb" in k else v.to(dtype) for k, v in src.state_dict().items()}
    model = tiny(depth=1, embed_dim=32, num_frames=frames, img_size=size)
    got = vmm.load_checkpoint(model.double() if dtype == torch.float64 else model, sd)
    atol = 1e-12 if dtype == torch.float64 else 1e-5
    pos, temporal = sd["pos_embed"][0].double().numpy(), sd["temporal_pos_embedding"][0].double().numpy()
    grid, new = 4, size // 16
    spatial = pos[1:].reshape(grid, grid, -1)
    spatial = _resample_1d(spatial, new, cubic=True)  # rows, then columns: the bicubic kernel is separable
    spatial = _resample_1d(spatial.transpose(1, 0, 2), new, cubic=True).transpose(1, 0, 2)
    expect = np.concatenate([pos[:1], spatial.reshape(new * new, -1)])
    np.testing.assert_allclose(got.pos_embed[0].detach().double().numpy(), expect, atol=atol)
    np.testing.assert_allclose(got.temporal_pos_embedding[0].detach().double().numpy(),
                               _resample_1d(temporal, frames, cubic=False), atol=atol)


def test_a_file_from_a_newer_torch_says_to_upgrade_torch(tmp_path):
    """torch refuses a zip archive whose format version is newer than it reads; vmm called it truncated or
    damaged and said to download it again, which gives the same file."""
    import zipfile
    good, newer = tmp_path / "good.pth", tmp_path / "newer.pth"
    torch.save(tiny(depth=1).state_dict(), good)
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(newer, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, b"99\n" if name.endswith("/version") else zin.read(name))
    newer_re = re.escape(str(newer))
    for load in (lambda: vmm.load_checkpoint(tiny(depth=1), newer),
                 lambda: vmm.create_model("videomamba_tiny", pretrained=newer, depth=1, num_frames=4, img_size=32,
                                          num_classes=5)):
        with pytest.raises(CheckpointError, match=f"^checkpoint {newer_re} was saved by a newer PyTorch than this one "
                                                  r"\(.*\); upgrade torch") as e:
            load()
        assert "damaged" not in str(e.value)


def test_a_file_of_another_kind_names_its_kind_and_the_model_to_pass(tmp_path):
    """A K400 classifier file given to the multimodal vision encoder (or the other way round) listed the keys
    norm/head/pool_norm and said only "check --model": the file was of the model's size, so no model was named."""
    from tests.tiny_model import TINY
    classifier = tiny().state_dict()
    with pytest.raises(CheckpointError) as e:
        vmm.load_checkpoint(tiny_vision(), classifier)
    assert str(e.value).endswith("(the file is a video classifier (head, norm_f) and the model a multimodal vision "
                                 "encoder (pool_norm); pass a --model of the file's kind)")
    assert "\n" not in str(e.value)
    mm = vmm.create_model("videomamba_m16_mm", **TINY)
    with pytest.raises(CheckpointError, match=r"the file is a video-text model \(vision_encoder\. \+ text_encoder\.\) "
                                              r"and the model a video classifier"):
        vmm.load_checkpoint(vmm.create_model("videomamba_tiny", **vmm.vision_overrides_from_state_dict(
            mm.state_dict())), mm.state_dict())
    with torch.device("meta"):  # official sizes name the model to pass; meta: shapes only, no memory
        middle, vision = vmm.create_model("videomamba_middle"), vmm.create_model("videomamba_middle_vision")
    with pytest.raises(CheckpointError, match="the model a multimodal vision encoder \\(pool_norm\\); pass --model "
                                              "videomamba_middle or another model of the file's kind\\)$"):
        vmm.load_checkpoint(vision, middle.state_dict())
    with pytest.raises(CheckpointError, match="pass --model videomamba_middle_vision or another model of the file's"):
        vmm.load_checkpoint(middle, vision.state_dict())


def test_a_checkpoint_under_the_home_folder_tells_its_frame_count(tmp_path, monkeypatch):
    """The loaders read a quoted "~/t16.pth" as the home folder, but checkpoint_frames did not: the commands then
    ran a 16-frame file at the model config's 8 frames through an interpolated temporal table."""
    from vmm.factory import checkpoint_frames, checkpoint_input_size
    monkeypatch.setenv("HOME", str(tmp_path))
    torch.save(tiny().state_dict(), tmp_path / "t4.pth")
    assert checkpoint_frames("~/t4.pth") == 4 and checkpoint_input_size("~/t4.pth") == (4, 32)


def test_the_masked_pretraining_file_names_its_kind_and_how_to_use_it(tmp_path):
    """Spec 4.2: the released K400 masked-pretraining file (final norm "norm", clip_decoder, no head, no pool_norm)
    fits no model strictly; the official code only starts training from it. Given to the vision encoder or the
    classifier it was refused with "check --model / the model config matches the checkpoint", which no --model
    fixes."""
    encoder = tiny_vision().state_dict()
    mask_pt = {k: v for k, v in encoder.items() if not k.startswith("pool_norm.")}
    torch.save(mask_pt, tmp_path / "videomamba_t16_k400_mask_pt.pth")
    for model in (tiny_vision(), tiny()):
        with pytest.raises(CheckpointError) as e:
            vmm.load_checkpoint(model, tmp_path / "videomamba_t16_k400_mask_pt.pth")
        assert str(e.value).endswith("(the file is a masked-pretraining encoder (clip_decoder, no head or pool_norm); "
                                     "it only starts training: pass it as vmm train's model.vision_init, or load it "
                                     "with vmm.load_checkpoint(model, path, strict=False), which keeps the model's own "
                                     "head or pool_norm)"), str(e.value)
        # the way out the message gives works, and loads the file's weights
        got = vmm.load_checkpoint(model, tmp_path / "videomamba_t16_k400_mask_pt.pth", strict=False)
        assert torch.equal(got.layers[1].mixer.A_b_log, encoder["layers.1.mixer.A_b_log"])
    # Of another size, the encoder model of the file's size is named first.
    with torch.device("meta"):
        middle = {k: v for k, v in vmm.create_model("videomamba_middle_vision").state_dict().items()
                  if not k.startswith("pool_norm.")}
    with pytest.raises(CheckpointError, match="pass --model videomamba_middle_vision or another model of the file's "
                                              "size"):
        vmm.load_checkpoint(tiny_vision(), middle)


def _released_files(ref: dict) -> dict:
    """The released classifier files of the size of key list ``ref`` (spec 4.2, 4.4, 5): key -> shape, and whether
    the file wraps them in {'model': ...}. K400 at 8/16/32/64 frames and 64 frames at 384 px, SSv2 at 16 frames and
    288 px, and the ImageNet image models at 224 and 448 px (2-D patch kernel, no temporal table, 1000 classes)."""
    def variant(frames=8, res=224, classes=400, image=False):
        shapes = {k: list(v) for k, v in ref.items()}
        D = shapes["cls_token"][-1]
        shapes.update({"pos_embed": [1, (res // 16) ** 2 + 1, D], "temporal_pos_embedding": [1, frames, D],
                       "head.weight": [classes, D], "head.bias": [classes]})
        if image:
            del shapes["temporal_pos_embedding"]
            shapes["patch_embed.proj.weight"] = [D, 3, 16, 16]
        return shapes, image
    return {"k400_f8": variant(), "k400_f16": variant(16), "k400_f32": variant(32), "k400_f64": variant(64),
            "k400_f64_res384": variant(64, 384), "ssv2_f16_res288": variant(16, 288, 174),
            "in1k_res224": variant(classes=1000, image=True), "in1k_res448": variant(res=448, classes=1000, image=True)}


@pytest.mark.parametrize("size", ["tiny", "small", "middle"])
def test_every_released_classifier_layout_loads_strictly_at_its_own_and_other_sizes(reference_dir, size):
    """Every official classifier file of the spec, with its exact keys and shapes (the official key lists, frames,
    resolution, head and ImageNet form changed as the spec says), loads strictly into the model built from its own
    sizes and into the 8-frame 224 px model of its head (tables resampled). Tiny with random values, checked to
    arrive unchanged; the larger sizes as shapes only (meta tensors), which is what the key mapping sees."""
    import json
    ref = json.loads((reference_dir / f"videomamba_state_dict_{size}.json").read_text())
    device = "cpu" if size == "tiny" else "meta"
    for name, (shapes, wrapped) in _released_files(ref).items():
        sd = {k: torch.randn(v, device=device) for k, v in shapes.items()}
        found = vmm.vision_overrides_from_state_dict(sd)
        assert (found["img_size"], found.get("num_frames"), found["num_classes"]) == (
            16 * round((shapes["pos_embed"][1] - 1) ** 0.5), shapes.get("temporal_pos_embedding", [0, None])[1],
            shapes["head.weight"][0]), name
        checkpoint = {"model": sd} if wrapped else sd
        with torch.device(device):
            own = vmm.create_model(f"videomamba_{size}", **found)
            default = vmm.create_model(f"videomamba_{size}", num_classes=found["num_classes"])
        for model in (own, default):
            vmm.load_checkpoint(model, checkpoint)  # strict: raises on any key or shape that does not fit
            if device == "cpu":
                loaded = model.state_dict()
                unchanged = [k for k in sd if k in loaded and loaded[k].shape == sd[k].shape]
                assert len(unchanged) >= len(sd) - 3, name  # all but the tables and an image file's kernel
                assert all(torch.equal(loaded[k], sd[k]) for k in unchanged), name
                assert torch.equal(loaded["pos_embed"][:, 0], sd["pos_embed"][:, 0]), name  # CLS slot kept


def test_load_checkpoint_reads_a_path_under_the_home_folder(tmp_path, monkeypatch):
    """create_model(pretrained="~/x.pth") expanded the "~", but vmm.load_checkpoint and vmm.read_checkpoint said
    "checkpoint ~/x.pth does not exist" of a file that was there; the model then records the real path."""
    from vmm.models.checkpoint import check_weights_file
    monkeypatch.setenv("HOME", str(tmp_path))
    src = tiny(depth=1)
    torch.save(src.state_dict(), tmp_path / "t4.pth")
    assert torch.equal(vmm.read_checkpoint("~/t4.pth")["head.weight"], src.head.weight)
    assert check_weights_file("~/t4.pth") == "zip"  # the check every loader runs, public on its own
    got = vmm.load_checkpoint(tiny(depth=1), "~/t4.pth")
    assert torch.equal(got.head.weight, src.head.weight) and got.pretrained_source == str(tmp_path / "t4.pth")


def test_a_cut_torch_archive_is_called_truncated_by_load_checkpoint(tmp_path):
    """An interrupted download of a .pth (a torch.save zip archive without its end) was, through vmm.load_checkpoint
    and vmm.read_checkpoint, "not a PyTorch checkpoint (RuntimeError: PytorchStreamReader failed ... This is an
    internal miniz error. If you are seeing this error, there is a high)": cut mid-sentence, and the wrong fix."""
    torch.save(tiny(depth=1).state_dict(), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    tmp_re = re.escape(str(tmp_path))
    for cut in (100, len(data) // 2, len(data) - 10):
        (tmp_path / "cut.pth").write_bytes(data[:cut])
        for load in (vmm.read_checkpoint, lambda p: vmm.load_checkpoint(tiny(depth=1), p)):
            with pytest.raises(CheckpointError, match=rf"^checkpoint {tmp_re}/cut\.pth is truncated or damaged "
                                                      r"\(an incomplete torch\.save archive: an interrupted download "
                                                      r"or copy\?\); download or save it again$"):
                load(tmp_path / "cut.pth")


@pytest.mark.parametrize("protocol", [1, 2])
def test_every_loader_reads_a_legacy_pickle_and_names_a_cut_one(tmp_path, protocol):
    """A checkpoint saved before PyTorch 1.6 (a pickle, no zip archive) with protocol 1 opens with torch's magic
    number as a long ("L1195..."): vmm.read_checkpoint read it, but create_model(pretrained=) and vmm classify's
    checks called it "some other kind of file". Cut short, any legacy pickle was "not a PyTorch checkpoint
    (EOFError: unreadable)", which sent users to check the format rather than download it again."""
    from vmm.factory import checkpoint_vision_settings
    src = tiny(depth=1)
    path = tmp_path / "legacy.pth"
    torch.save(src.state_dict(), path, _use_new_zipfile_serialization=False, pickle_protocol=protocol)
    assert path.read_bytes()[:1] == (b"L" if protocol == 1 else b"\x80")
    assert torch.equal(vmm.read_checkpoint(path)["head.weight"], src.head.weight)
    loaded = vmm.create_model("videomamba_tiny", pretrained=path, depth=1, num_frames=4, img_size=32, num_classes=5)
    assert torch.equal(loaded.head.weight, src.head.weight)
    assert checkpoint_vision_settings(path)["num_classes"] == 5
    if protocol == 2:  # torch's safe unpickler cannot read a cut protocol-1 file at all ("Unsupported operand")
        data = path.read_bytes()
        (tmp_path / "cut.pth").write_bytes(data[:len(data) // 2])
        tmp_re = re.escape(str(tmp_path))
        with pytest.raises(CheckpointError, match=rf"^checkpoint {tmp_re}/cut\.pth is truncated or damaged \(.+\); "
                                                  r"download or save it again$"):
            vmm.read_checkpoint(tmp_path / "cut.pth")


def test_safetensors_under_another_suffix_loads_everywhere(tmp_path):
    """read_checkpoint reads a safetensors file by its bytes whatever its name, but create_model(pretrained=)
    refused the same file named .pth and asked to rename it."""
    from safetensors.torch import save_file
    src = tiny(depth=1)
    save_file(src.state_dict(), str(tmp_path / "weights.pth"))
    loaded = vmm.create_model("videomamba_tiny", pretrained=tmp_path / "weights.pth", depth=1, num_frames=4,
                              img_size=32, num_classes=5)
    assert torch.equal(loaded.head.weight, src.head.weight)


def test_a_multimodal_file_with_other_fusion_layers_names_them():
    """A multimodal file trained with another fusion_layer listed the crossattention keys of one layer and said
    only "check --model / the model config matches the checkpoint"."""
    text = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128, fusion_layer=2,
                max_position_embeddings=32)
    vision = dict(depth=1, num_frames=2, img_size=32)
    src = vmm.create_model("videomamba_m16_mm", vision=vision, text=text, embed_dim=32)
    for changed, file_says in ((dict(fusion_layer=3), "4 layers with cross-attention from layer 2 and the model's 4 "
                                                      "from layer 3"),
                               (dict(num_hidden_layers=3), "4 layers with cross-attention from layer 2 and the "
                                                           "model's 3 from layer 2")):
        dst = vmm.create_model("videomamba_m16_mm", vision=vision, text={**text, **changed}, embed_dim=32)
        with pytest.raises(CheckpointError, match=rf"\(the file's text encoder has {file_says}; build the model "
                                                  r"with text=dict\(num_hidden_layers=4, fusion_layer=2\)\)$"):
            vmm.load_checkpoint(dst, src.state_dict())
    official = {k.replace("text_encoder.", "text_encoder.bert.", 1): v for k, v in src.state_dict().items()}
    dst = vmm.create_model("videomamba_m16_mm", vision=vision, text={**text, "fusion_layer": 1}, embed_dim=32)
    with pytest.raises(CheckpointError, match=r"text=dict\(num_hidden_layers=4, fusion_layer=2\)\)$"):
        vmm.load_checkpoint(dst, official)  # the official files' text_encoder.bert. keys


def test_a_zip_that_torch_did_not_write_is_no_checkpoint_not_a_damaged_one(tmp_path):
    """A NumPy .npz or a zipped release opens like torch.save's archive (PK..): every loader called it "truncated or
    damaged; download or save it again", which no new download fixes."""
    import zipfile
    from vmm.factory import checkpoint_vision_settings
    from vmm.models.checkpoint import check_weights_file
    np.savez(tmp_path / "weights.npz", head=np.zeros(3))
    with zipfile.ZipFile(tmp_path / "release.zip", "w") as z:
        z.writestr("videomamba/README.md", "weights inside")
    for name in ("weights.npz", "release.zip"):
        path = tmp_path / name
        path_re = re.escape(str(path))
        for load in (vmm.read_checkpoint, checkpoint_vision_settings,
                     lambda p: vmm.create_model("videomamba_tiny", pretrained=p, depth=1, num_frames=4, img_size=32)):
            with pytest.raises(CheckpointError, match=rf"^checkpoint {path_re} is not a PyTorch or safetensors "
                                                      r"checkpoint \(a zip archive, but not torch\.save's: it has no "
                                                      r"data\.pkl\); pass a \.pth, \.pt, \.bin or \.safetensors "
                                                      r"weights file$"):
                load(path)
    torch.save(tiny(depth=1).state_dict(), tmp_path / "t.pth")  # torch's own archive still reads
    assert check_weights_file(tmp_path / "t.pth") == "zip"


@pytest.mark.parametrize("offsets", [["0", "4"], {"0": 0, "1": 4}, None])
def test_a_safetensors_header_with_malformed_offsets_is_damaged_not_a_traceback(tmp_path, offsets):
    """A header that is valid JSON but gives a tensor's data_offsets as strings or a dict was a bare TypeError or
    KeyError from the file check every loader runs first."""
    import json
    import struct
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": offsets}}).encode()
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))
    path_re = re.escape(str(path))
    with pytest.raises(CheckpointError, match=rf"^checkpoint {path_re} is truncated or damaged; download or save it "
                                              r"again$"):
        vmm.read_checkpoint(path)


@pytest.mark.parametrize("name", ["videomamba_t16_k400.pth", "model.safetensors"])
def test_a_git_lfs_pointer_says_to_fetch_the_weights(tmp_path, name):
    """A repository cloned without git-lfs leaves a small text file where the weights were: it was "not a PyTorch
    or safetensors checkpoint ...; pass a .pth" (the user had) or "not a safetensors file (or it is damaged)"."""
    path = tmp_path / name
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "4d7a" * 16 + "\nsize 298046281\n")
    path_re = re.escape(str(path))
    for load in (vmm.read_checkpoint, lambda p: vmm.create_model("videomamba_tiny", pretrained=p, depth=1)):
        with pytest.raises(CheckpointError, match=rf"^checkpoint {path_re} is a Git LFS pointer \(\d+ bytes\), not the "
                                                  r"weights; fetch them with 'git lfs pull' in its repository, or "
                                                  r"download the file itself$"):
            load(path)


def test_a_torch_file_named_safetensors_is_told_to_be_renamed(tmp_path):
    """torch.load reads a file named .safetensors as safetensors whatever its bytes, so a torch.save file under that
    name cannot load; it was "not a safetensors file (or it is damaged)", which sent users to download it again."""
    src = tiny(depth=1)
    torch.save(src.state_dict(), tmp_path / "w.safetensors")
    tmp_re = re.escape(str(tmp_path))
    with pytest.raises(CheckpointError, match=rf"^checkpoint {tmp_re}/w\.safetensors is a torch\.save file named "
                                              r"\.safetensors; rename it to w\.pth$"):
        vmm.read_checkpoint(tmp_path / "w.safetensors")
    (tmp_path / "w.safetensors").rename(tmp_path / "w.pth")
    assert torch.equal(vmm.read_checkpoint(tmp_path / "w.pth")["head.weight"], src.head.weight)
