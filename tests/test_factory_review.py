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


def test_precision_casts_the_weights_and_a_bf16_model_runs_on_the_cpu():
    """create_model took no precision= (open_clip's factory does): "unknown model option(s) precision"."""
    model = vmm.create_model("videomamba_tiny", precision="bf16", **CLASSIFIER)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        logits = model.eval()(torch.randn(2, 3, 2, 32, 32))  # fp32 frames, as the transforms give them
    assert logits.shape == (2, 3) and torch.isfinite(logits.float()).all()
    mm, _, eval_tf = vmm.create_model_and_transforms("videomamba_m16_mm", precision="fp16", **TINY)
    assert {p.dtype for p in mm.parameters()} == {torch.float16}
    assert next(vmm.create_model("videomamba_tiny", **CLASSIFIER).parameters()).dtype == torch.float32
    refused(r"^precision='bfloat16' is not a precision; pass 'fp32', 'bf16', 'fp16' \(or torch\.float32, "
            r"torch\.bfloat16, torch\.float16\) or 'auto' \(the dtype a model folder was saved in\); did you mean "
            r"'bf16'\?$", vmm.create_model, "videomamba_tiny", precision="bfloat16")


def test_precision_takes_the_torch_dtypes_pytorch_code_passes(tmp_path):
    """precision=torch.bfloat16 (what PyTorch code writes) was refused as "not a precision" by every loader."""
    from vmm.models.multimodal import VideoTextModel
    assert vmm.create_model("videomamba_tiny", precision=torch.bfloat16, **CLASSIFIER).cls_token.dtype == torch.bfloat16
    folder = vmm.save_pretrained(vmm.create_model("videomamba_m16_mm", **TINY), tmp_path / "mm")
    assert {p.dtype for p in vmm.from_pretrained(folder, precision=torch.float16).parameters()} == {torch.float16}
    loaded = VideoTextModel.from_pretrained(folder, precision=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    model, _, _ = vmm.create_model_and_transforms(folder, precision=torch.float32)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    # other dtypes are refused before anything is built, by name
    for dtype in (torch.float64, torch.int8):
        refused(rf"^precision={re.escape(str(dtype))} is not a precision; pass 'fp32', 'bf16', 'fp16' \(or "
                r"torch\.float32, torch\.bfloat16, torch\.float16\) or 'auto'", vmm.from_pretrained, "nowhere",
                precision=dtype)


def test_a_bf16_folder_loads_in_fp32_unless_auto_keeps_its_dtype(tmp_path):
    """A bf16 model saved with save_pretrained came back fp32 whatever was asked, and nothing could keep bf16."""
    torch.manual_seed(0)
    model = vmm.create_model("videomamba_tiny", **CLASSIFIER).to(torch.bfloat16)
    folder = vmm.save_pretrained(model, tmp_path / "bf16")

    def same(loaded, dtype):
        assert {p.dtype for p in loaded.parameters()} == {dtype}
        return all(torch.equal(a.to(dtype), b) for a, b in zip(model.state_dict().values(),
                                                                loaded.state_dict().values()))
    assert same(vmm.from_pretrained(folder), torch.float32) and same(vmm.create_model(folder), torch.float32)
    assert same(vmm.from_pretrained(folder, precision="auto"), torch.bfloat16)
    assert same(vmm.create_model(folder, precision="auto"), torch.bfloat16)
    assert same(vmm.create_model("videomamba_tiny", pretrained=folder, precision="auto", **CLASSIFIER), torch.bfloat16)
    assert same(vmm.from_pretrained(folder, precision="fp16"), torch.float16)
    # no folder: "auto" is fp32, the dtype the model is built in
    assert next(vmm.create_model("videomamba_tiny", precision="auto", **CLASSIFIER).parameters()).dtype == torch.float32


def test_auto_keeps_the_dtype_of_most_weights_of_a_mixed_folder(tmp_path):
    """A bf16 model keeping its norms, biases and D in fp32 (as mixed-precision recipes do) holds more fp32 tensors
    than bf16 ones: "auto" counted tensors and loaded it in fp32, twice the memory of what was saved."""
    model = vmm.create_model("videomamba_m16_mm", **TINY).to(torch.bfloat16)
    for p in model.parameters():
        if p.ndim <= 1:
            p.data = p.data.float()
    dtypes = [t.dtype for t in model.state_dict().values() if t.is_floating_point()]
    assert dtypes.count(torch.float32) > dtypes.count(torch.bfloat16)  # the case: fp32 wins by tensor count
    folder = vmm.save_pretrained(model, tmp_path / "mixed")
    assert {p.dtype for p in vmm.from_pretrained(folder, precision="auto").parameters()} == {torch.bfloat16}


def test_get_model_config_names_a_mistyped_model():
    """get_model_config("videomamba_m16_25M_typo") returned None, which reads as "a bare entrypoint"."""
    refused(r"^unknown model 'videomamba_m16_25M_typo'; did you mean 'videomamba_m16_25m'\? available: ",
            vmm.get_model_config, "videomamba_m16_25M_typo")
    assert vmm.get_model_config("videomamba_tiny") is None  # a bare entrypoint still has no config
    # callers that take paths still say what the path is, not "unknown model"
    assert frames_override("/no/such/folder", 4) == {"num_frames": 4}
    refused(r"^model folder /no/such/folder does not exist", vmm.get_tokenizer, "/no/such/folder")


def test_a_pretrained_folder_holding_the_model_asked_for_is_built_once(tmp_path, monkeypatch):
    """create_model("vmm_nano", pretrained=True) built vmm_nano, then built the shipped folder's model again only to
    copy every weight over: twice the time."""
    from tests.tiny_model import save_tiny_model
    from vmm.models import registry
    builds = []
    entry = registry._ENTRYPOINTS["videomamba_m16_mm"]

    def counted(**kwargs):
        model = entry(**kwargs)
        builds.append(next(model.parameters()).device.type)
        return model
    monkeypatch.setitem(registry._ENTRYPOINTS, "videomamba_m16_mm", counted)
    nano = vmm.create_model("vmm_nano", pretrained=True)
    assert builds.count("cpu") == 1
    assert (nano.model_name, nano.pretrained_source) == ("vmm_nano", str(vmm.factory.default_pretrained("vmm_nano")))
    assert nano.model_meta == {k: v for k, v in vmm.get_model_config("vmm_nano").items()
                               if k not in ("architecture", "model")}
    folder = save_tiny_model(tmp_path / "mm")
    builds.clear()
    once = vmm.create_model("videomamba_m16_mm", pretrained=folder, **TINY)
    assert builds.count("cpu") == 1
    # another config (a dropout rate) is still built as asked, with the same weights
    other = vmm.create_model("videomamba_m16_mm", pretrained=folder, **{**TINY, "vision": {
        **TINY["vision"], "drop_path_rate": 0.1}})
    assert other.cfg.vision.drop_path_rate == 0.1 != once.cfg.vision.drop_path_rate
    assert all(torch.equal(a, b) for a, b in zip(once.state_dict().values(), other.state_dict().values()))


def test_save_pretrained_unwraps_compiled_and_data_parallel_models(tmp_path):
    """A torch.compile'd model was saved with "_orig_mod." before every key, a folder no loader took ("does not fit
    its config"); a DataParallel one was "DataParallel was not built by vmm.create_model"."""
    model = vmm.create_model("videomamba_tiny", **CLASSIFIER)
    for name, wrapped in (("compiled", torch.compile(model)), ("dp", torch.nn.DataParallel(torch.compile(model)))):
        loaded = vmm.from_pretrained(vmm.save_pretrained(wrapped, tmp_path / name))
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_a_home_relative_path_is_expanded_everywhere(tmp_path, monkeypatch):
    """pretrained="~/x.pth" was expanded but a folder was not: pretrained="~/folder" said the folder was "not a
    weights file or a vmm model folder", create_model("~/folder") that it did not exist, and save_pretrained("~/m")
    made a folder named "~" in the working folder."""
    from tests.tiny_model import save_tiny_model
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    vmm.save_pretrained(vmm.create_model("videomamba_tiny", **CLASSIFIER), "~/tiny")
    assert (tmp_path / "tiny" / "model.safetensors").is_file() and not (tmp_path / "~").exists()
    assert vmm.from_pretrained("~/tiny").cfg.depth == vmm.create_model("~/tiny").cfg.depth == 1
    assert vmm.create_model("videomamba_tiny", pretrained="~/tiny", **CLASSIFIER).cfg.num_classes == 3
    save_tiny_model(tmp_path / "mm")
    assert frames_override("~/mm", 4) == {"vision": {"num_frames": 4}}
    assert vmm.get_tokenizer("~/mm").max_length == vmm.get_tokenizer(tmp_path / "mm").max_length


def test_a_hub_reference_may_name_a_file_in_a_folder_of_the_repository(tmp_path, monkeypatch):
    """hf-hub:owner/repo/sub/file.pth was refused as "bad hub reference": the file was read as repo/sub's."""
    import huggingface_hub.constants as hc
    from vmm.factory import resolve_pretrained
    hub = tmp_path / "hub" / "models--OpenGVLab--VideoMamba"
    (hub / "snapshots" / "abc" / "k400").mkdir(parents=True)
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text("abc")
    torch.save(vmm.create_model("videomamba_tiny", **CLASSIFIER).state_dict(), hub / "snapshots/abc/k400/t.pth")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_pretrained("hf-hub:OpenGVLab/VideoMamba/k400/t.pth") == hub / "snapshots/abc/k400/t.pth"
    model = vmm.create_model("videomamba_tiny", pretrained="hf-hub:OpenGVLab/VideoMamba/k400/t.pth", **CLASSIFIER)
    assert model.pretrained_source.endswith("k400/t.pth")


def test_a_folder_loads_the_weights_file_its_config_names(tmp_path):
    """A trainable-only export written or copied over a full save left the old model.safetensors beside it, and
    every loader took that file, the previous model's weights, without a word."""
    from vmm.training.export import save_trainable
    old, new = (vmm.create_model("videomamba_tiny", **CLASSIFIER) for _ in range(2))
    with torch.no_grad():
        new.head.bias.fill_(1.0)
    folder = vmm.save_pretrained(old, tmp_path / "final")
    save_trainable(new, folder, frozen=[])
    assert (folder / "model.safetensors").is_file()
    for loaded in (vmm.from_pretrained(folder), vmm.create_model(folder),
                   vmm.create_model("videomamba_tiny", pretrained=folder, **CLASSIFIER)):
        assert torch.equal(loaded.head.bias, new.head.bias)
    vmm.save_pretrained(old, folder)  # and a full save over an export is the full save
    assert torch.equal(vmm.from_pretrained(folder).head.bias, old.head.bias)


def test_an_empty_or_cut_weights_file_is_named_as_such(saved, tmp_path):
    """A model folder whose model.safetensors was cut short (an interrupted copy) "did not fit its config", and an
    empty .pth (an interrupted download) was "some other kind of file": both sent users to the wrong fix."""
    weights = (saved / "model.safetensors").read_bytes()
    for name, data, needle in (("cut", weights[:len(weights) // 2], "is truncated or damaged; download or save it"),
                               ("empty", b"", r"is empty \(0 bytes\); download or save it again")):
        folder = edited(saved, tmp_path / name, text=(saved / "config.json").read_text())
        (folder / "model.safetensors").write_bytes(data)
        for load in (vmm.from_pretrained, vmm.create_model):
            refused(f"^checkpoint {folder}/model.safetensors {needle}", load, folder)
    (tmp_path / "empty.pth").write_bytes(b"")
    refused(rf"^checkpoint {tmp_path}/empty\.pth is empty \(0 bytes\); download or save it again$",
            vmm.create_model, "videomamba_tiny", pretrained=tmp_path / "empty.pth", **CLASSIFIER)


def test_from_pretrained_of_a_weights_file_says_how_to_load_it(tmp_path):
    """vmm.from_pretrained("videomamba_t16_k400_f16_res224.pth") (transformers' habit) said only that the file
    "is not a vmm model folder (needs config.json and model.safetensors)"."""
    path = tmp_path / "tiny.pth"
    torch.save(vmm.create_model("videomamba_tiny", **CLASSIFIER).state_dict(), path)
    refused(rf"^{re.escape(str(path))} is a weights file, not a model folder; load it with vmm\.create_model\(NAME, "
            rf"pretrained='{re.escape(str(path))}'\), where NAME is the registered model it was made for",
            vmm.from_pretrained, path)
    assert vmm.create_model("videomamba_tiny", pretrained=path, **CLASSIFIER).pretrained_source == str(path)


def test_add_model_config_dir_expands_home_and_refuses_what_is_no_folder(tmp_path, monkeypatch):
    """add_model_config_dir("~/configs") kept the "~" and a mistyped folder was taken: every config in it was then
    an "unknown model", with nothing to say why."""
    from vmm.models import registry
    monkeypatch.setattr(registry, "_CONFIG_DIRS", list(registry._CONFIG_DIRS))
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "configs").mkdir()
    spec = {"architecture": "videomamba_tiny", "model": {"num_classes": 7}}
    (tmp_path / "configs" / "review_home_tiny.json").write_text(json.dumps(spec))
    registry.add_model_config_dir("~/configs")
    assert vmm.create_model("review_home_tiny", depth=1, num_frames=2, img_size=32).cfg.num_classes == 7
    for bad in (tmp_path / "confgs", tmp_path / "configs" / "review_home_tiny.json", None):
        refused(rf"^add_model_config_dir: {re.escape(str(bad))} is not a folder; pass the folder that holds your",
                registry.add_model_config_dir, bad)


@pytest.mark.parametrize("key", ["dtype", "torch_dtype"])
def test_a_dtype_option_points_to_precision(key):
    """transformers' torch_dtype= (or dtype=) was an unknown model option with "did you mean 'pool_type'?"."""
    with pytest.raises(VmmError, match=r"did you mean precision=torch\.bfloat16 \(an argument of create_model"):
        vmm.create_model("videomamba_tiny", depth=1, img_size=32, num_frames=2, **{key: torch.bfloat16})
