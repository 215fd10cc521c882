"""The model factory and registry take hand-edited config files, None for a config section, odd pattern and name
spellings and empty arguments with one-line VmmErrors or the right model. Each test fails on the previous code."""
import json
import re
import shutil

import pytest
import torch

import vmm
from tests.tiny_model import TINY
from vmm.errors import VmmError
from vmm.factory import frames_override

CLASSIFIER = dict(depth=1, num_frames=2, img_size=32, num_classes=3)


def refused(needle, fn, *args, **kwargs):
    with pytest.raises(VmmError, match=needle) as e:
        fn(*args, **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "tiny"
    return vmm.save_pretrained(vmm.create_model("videomamba_tiny", **CLASSIFIER), folder)


def edited(saved, tmp_path, text=None, raw=None, change=None):
    """A copy of the saved folder with its config.json replaced or changed as a user's editor would."""
    folder = tmp_path / "edited"
    shutil.copytree(saved, folder)
    if change is not None:
        cfg = json.loads((saved / "config.json").read_text())
        change(cfg)
        text = json.dumps(cfg)
    (folder / "config.json").write_bytes(raw if raw is not None else text.encode())
    return folder


LOADERS = (vmm.from_pretrained, vmm.create_model, vmm.get_tokenizer, lambda d: frames_override(d, 4))


@pytest.mark.parametrize("raw, needle", [
    # A Latin-1 editor's save: UnicodeDecodeError from every loader, get_tokenizer and frames_override too.
    (b'{"architecture": "videomamba_tiny\xe9", "model": {}}', r"config\.json is not UTF-8 text \(byte 33\)"),
    # JSONDecodeError / AttributeError from get_tokenizer and frames_override.
    (b'{"architecture": ', r"config\.json is not valid JSON"),
    (b'[1, 2]', r'config\.json is not a vmm model config \(a JSON object with "architecture" and "model"\)'),
    (b'{"architecture": 5, "model": {}}', r"config\.json is not a vmm model config"),
])
def test_a_damaged_folder_config_is_one_line_from_every_loader(saved, tmp_path, raw, needle):
    folder = edited(saved, tmp_path, raw=raw)
    for load in LOADERS:
        refused(rf"^{folder}/{needle}", load, folder)


def test_a_bad_field_in_a_folder_config_names_the_file(saved, tmp_path):
    """"unknown model option(s) foo" and "depth='1': ..." did not say they came from the folder's config.json."""
    folder = edited(saved, tmp_path, change=lambda c: c["model"].update(foo=1))
    refused(rf"^{folder}/config\.json: unknown model option\(s\) foo; valid options: ", vmm.from_pretrained, folder)
    (folder / "config.json").write_text(json.dumps({**json.loads((saved / "config.json").read_text()),
                                                    "model": {**CLASSIFIER, "depth": "1"}}))
    refused(rf"^{folder}/config\.json: depth='1': depth must be a whole number", vmm.create_model, folder)


def test_a_folder_config_without_a_shape_field_names_it(saved, tmp_path):
    """It said only "does not fit its config (RuntimeError: Error(s) in loading state_dict for VideoMamba:)"."""
    folder = edited(saved, tmp_path, change=lambda c: c["model"].pop("depth"))
    message = refused(r"does not fit its config", vmm.from_pretrained, folder)
    assert 'Missing key(s) in state_dict: "layers.1.' in message
    assert message.endswith("config.json lacks depth, so the default was used")
    older = edited(saved, tmp_path / "older", change=lambda c: c["model"].pop("frame_mode"))  # an older format
    assert vmm.from_pretrained(older).cfg.frame_mode == "joint"


@pytest.mark.parametrize("text, needle", [
    (b'{"architecture": "videomamba_tiny\xe9", "model": {}}', "is not UTF-8 text"),
    (b'{"architecture": ["videomamba_tiny"], "model": {}}', "must be a JSON object"),  # TypeError: unhashable
    (b'{"architecture": "videomamba_tiny", "pretrained": "x.pth"}', "must be a JSON object"),  # AttributeError
])
def test_a_damaged_registry_config_is_one_line(tmp_path, monkeypatch, text, needle):
    from vmm.models import registry
    monkeypatch.setattr(registry, "_CONFIG_DIRS", [tmp_path, *registry._CONFIG_DIRS])
    (tmp_path / "mine.json").write_bytes(text)
    for call in (vmm.create_model, vmm.get_tokenizer, lambda n: vmm.create_model(n, pretrained="default")):
        refused(rf"^model config {tmp_path}/mine\.json {needle}", call, "mine")


def test_none_for_a_config_section_keeps_the_models_own(tmp_path):
    """vision=None made vmm_nano a 224px 32-layer VideoMamba-M, text=None a BERT-base: the entrypoint's defaults
    replaced the JSON config's section instead of leaving it as it was."""
    with torch.device("meta"):
        model = vmm.create_model("vmm_nano", vision=None, text=dict(init_from=None))
    assert (model.cfg.vision.depth, model.cfg.vision.img_size, model.cfg.vision.embed_dim) == (8, 64, 192)
    folder = vmm.save_pretrained(vmm.create_model("videomamba_m16_mm", **TINY), tmp_path / "mm")
    assert vmm.create_model(folder, text=None, vision=None).cfg.vision.img_size == 32


def test_list_models_pattern_ignores_case_and_must_be_a_string():
    assert vmm.list_models("*K400*") == vmm.list_models("*k400*") == [
        "videomamba_m16_k400", "videomamba_s16_k400", "videomamba_t16_k400"]
    refused(r"^list_models: pattern must be a string such as '\*k400\*', got None$", vmm.list_models, None)


@pytest.mark.parametrize("typed", ["VideoMamba_Tiny", " videomamba_tiny\n", "videomamba_tyni"])
def test_a_mistyped_name_suggests_the_registered_one(typed):
    refused(rf"^unknown model {re.escape(repr(typed))}; did you mean 'videomamba_tiny'\? available: ",
            vmm.create_model, typed)
    refused(r"^unknown model 'resnet50'; available: ", vmm.create_model, "resnet50")  # no guess when none is close


def test_an_empty_name_or_pretrained_is_named():
    """Path('') is '.', so both read as "a folder but not a vmm model folder" (the working folder)."""
    refused(r"^model is empty; pass a registered model name", vmm.create_model, "")
    refused(r"^the tokenizer's model name is empty", vmm.get_tokenizer, " ")
    refused(r"^pretrained='' is empty; pass a checkpoint file", vmm.create_model, "videomamba_tiny", pretrained="",
            **CLASSIFIER)


@pytest.mark.parametrize("reference", ["hf-hub:OpenGVLab/VideoMamba", "hf-hub:VideoMamba/", "hf-hub:/a/b.pth",
                                       "hf-hub:a//b.pth"])
def test_a_hub_reference_without_owner_repository_and_file_is_named(reference):
    """hf-hub:OpenGVLab/VideoMamba (no file) was read as the file VideoMamba of a repository OpenGVLab, and the
    message said that file was not in the cache."""
    from vmm.factory import resolve_pretrained
    with pytest.raises(VmmError, match=r"bad hub reference .*: it needs an owner, a repository and a file; use "
                                       r"hf-hub:OpenGVLab/VideoMamba/<file.pth>$"):
        resolve_pretrained(reference)
