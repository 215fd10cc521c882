"""Model folders and JSON model configs whose fields or overrides do not fit: each message names the file the bad
field is in, the key an override broke, and the fix."""
import json

import pytest
import torch

import vmm
from vmm.models import registry
from tests.test_factory_review import refused

SMALL = dict(depth=1, num_frames=4, img_size=32, num_classes=3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return vmm.save_pretrained(vmm.create_model("videomamba_tiny", **SMALL), tmp_path_factory.mktemp("m") / "tiny")


def test_from_pretrained_names_the_key_a_shape_override_breaks(folder):
    """torch's report, cut to one line, ended mid-shape ("the shape in current model is torch.Size([1") and named
    no fix."""
    message = refused(r"with num_frames=8 \(temporal_pos_embedding has shape \(1, 4, 192\) in the file but "
                      r"\(1, 8, 192\) in the model\); drop those overrides", vmm.from_pretrained, folder, num_frames=8)
    assert message.startswith(f"the weights in {folder}/model.safetensors do not fit model {folder}")
    refused(r"with num_classes=7 \(head.weight has shape \(3, 192\) in the file but \(7, 192\)",
            vmm.create_model, folder, num_classes=7)
    assert vmm.from_pretrained(folder, drop_path_rate=0.1).cfg.drop_path_rate == 0.1  # a shape-free one loads


def test_a_folder_from_a_newer_vmm_says_so(folder, tmp_path):
    """A config.json field this vmm does not know was refused as "unknown model option(s) x", as if the user had
    mistyped an argument."""
    cfg = json.loads((folder / "config.json").read_text())
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    (newer / "config.json").write_text(json.dumps({**cfg, "model": {**cfg["model"], "ssm_variant": "v3"}}))
    for load in (vmm.from_pretrained, vmm.create_model):
        message = refused(rf"^{newer}/config\.json: unknown model option\(s\) ssm_variant; ", load, newer)
        assert message.endswith(f"(the folder was saved by a newer vmm than this one, {vmm.__version__}, or the "
                                "file was edited; upgrade vmm, or fix that field of config.json)")
    # An override of the user's own that is wrong is no sign of a newer vmm.
    message = refused(r"with num_frame: unknown model option\(s\) num_frame", vmm.from_pretrained, folder, num_frame=8)
    assert "newer vmm" not in message


def test_a_bad_field_in_a_json_model_config_names_the_file(tmp_path, monkeypatch):
    """"unknown model option(s) num_frame" did not say it came from ~/configs/my_ssv2.json rather than the caller's
    own arguments."""
    monkeypatch.setattr(registry, "_CONFIG_DIRS", [tmp_path, *registry._CONFIG_DIRS])
    (tmp_path / "my_ssv2.json").write_text(json.dumps({"architecture": "videomamba_tiny", "model": {"num_frame": 16}}))
    (tmp_path / "my_ok.json").write_text(json.dumps({"architecture": "videomamba_tiny", "model": SMALL}))
    for kwargs in ({}, {"depth": 1}):
        refused(rf"^model config {tmp_path}/my_ssv2\.json: unknown model option\(s\) num_frame; .*did you mean "
                r"'num_frames'\? \(fix it in that file\)$", vmm.create_model, "my_ssv2", **kwargs)
    message = refused(r"^unknown model option\(s\) num_frame;", vmm.create_model, "my_ok", num_frame=8)
    assert "my_ok.json" not in message  # the caller's typo, not the file's
    assert vmm.create_model("my_ok", depth=2).cfg.depth == 2


def test_no_shipped_model_config_is_blamed():
    for name in vmm.list_models():
        cfg = vmm.get_model_config(name)
        if cfg is not None:
            assert not registry.config_fails(cfg["architecture"], cfg["model"]), name


def test_a_head_of_other_classes_starts_a_fine_tune_non_strictly(tmp_path):
    """A K400 file (400 classes) for a 174-class model was refused even with strict=False, and the message said only
    "check --model": the official fine-tuning drops such a head and keeps the model's own."""
    k400 = vmm.create_model("videomamba_tiny", **{**SMALL, "num_classes": 400})
    path = tmp_path / "k400.pth"
    torch.save({"model": k400.state_dict()}, path)
    ssv2 = dict(SMALL, num_classes=174)
    message = refused(r"head.weight \(400, 192\) vs model \(174, 192\).*\(the file's head has 400 classes and the "
                      r"model's 174; build the model with num_classes=400, or start a fine-tune .*"
                      r"vmm.load_checkpoint\(model, path, strict=False\)\)$", vmm.create_model, "videomamba_tiny",
                      pretrained=path, **ssv2)
    assert "check --model" not in message
    model = vmm.create_model("videomamba_tiny", **ssv2)
    head = model.head.weight.detach().clone()
    vmm.load_checkpoint(model, path, strict=False)
    assert torch.equal(model.head.weight, head)  # its own head
    assert all(torch.equal(v, k400.state_dict()[k]) for k, v in model.state_dict().items() if not k.startswith("head."))
    # Any other mis-shaped key is still refused, strict or not.
    refused(r"shape mismatch: cls_token", vmm.load_checkpoint, vmm.create_model("videomamba_small", **ssv2), path,
            strict=False)


def test_two_saves_into_one_folder_at_once_leave_one_whole_model(tmp_path, monkeypatch):
    """A second save that ran between the first one's two renames left the first one's config.json beside the
    second one's weights: a folder that loaded no more (or, of equal shapes, loaded the wrong model)."""
    import os
    import threading
    first, second = (vmm.create_model("videomamba_tiny", **dict(SMALL, num_classes=n)) for n in (3, 5))
    folder = tmp_path / "model"
    real_replace, other = os.replace, []

    def replace(src, dst):
        real_replace(src, dst)
        if not other:  # the first save has renamed its weights: the second one runs now
            other.append(threading.Thread(target=vmm.save_pretrained, args=(second, folder)))
            other[0].start()
            other[0].join(0.5)  # without a lock it finishes here, between the first save's two renames

    monkeypatch.setattr(os, "replace", replace)
    vmm.save_pretrained(first, folder)
    other[0].join()
    loaded = vmm.from_pretrained(folder)
    assert loaded.cfg.num_classes == 5 and torch.equal(loaded.head.weight, second.head.weight)
