"""The Python API refuses misuse with one-line VmmErrors and accepts what is unambiguous: create_model with
pretrained=, config validation in both factories, tokenizer and model inputs, ``from index import discover``."""
import random
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vmm
from tests.tiny_model import TINY
from tests.videos import write_solid
from vmm._cuda_graph import RefuseHostSync
from vmm.embedder import VideoTextEncoder
from vmm.errors import VmmError

REPO = Path(__file__).resolve().parents[1]
CLASSIFIER = dict(depth=1, num_frames=2, img_size=32, num_classes=5)


def refused(needle, fn, *args, **kwargs):
    with pytest.raises(VmmError, match=needle) as e:
        fn(*args, **kwargs)
    assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def mm():
    torch.manual_seed(0)
    return vmm.create_model("videomamba_m16_mm", **TINY).eval()


@pytest.fixture(scope="module")
def tok():
    return vmm.get_tokenizer("vmm_nano")


def test_create_model_takes_pretrained_like_create_model_and_transforms(tmp_path):
    src = vmm.create_model("videomamba_tiny", **CLASSIFIER)
    torch.save({"model": src.state_dict()}, tmp_path / "tiny.pth")
    x = torch.randn(1, 3, 2, 32, 32)
    model = vmm.create_model("videomamba_tiny", **CLASSIFIER, pretrained=tmp_path / "tiny.pth").eval()
    with torch.no_grad():
        assert torch.equal(model(x), src.eval()(x))
    assert model.pretrained_source == str(tmp_path / "tiny.pth")
    vmm.save_pretrained(src, tmp_path / "folder")
    for loaded in (vmm.create_model("videomamba_tiny", **CLASSIFIER, pretrained=tmp_path / "folder"),
                   vmm.create_model(tmp_path / "folder")):
        with torch.no_grad():
            assert torch.equal(loaded.eval()(x), src(x))
    refused("does not exist", vmm.create_model, "videomamba_tiny", pretrained=tmp_path / "missing.pth")
    refused("names no default pretrained file", vmm.create_model, "videomamba_tiny", pretrained=True)


def test_a_model_folder_records_where_its_weights_came_from(tmp_path):
    """A folder's config named only the model, so one of random weights saved as videomamba_m16_25m could not be
    told from the released checkpoint's: config.json now says where the weights came from, through every load."""
    import json

    from vmm.models.persistence import read_config
    src = vmm.create_model("videomamba_tiny", **CLASSIFIER)
    vmm.save_pretrained(src, tmp_path / "random")
    assert read_config(tmp_path / "random")["weights_from"] == {"source": "random"}
    torch.save(src.state_dict(), tmp_path / "k400.pth")
    vmm.save_pretrained(vmm.create_model("videomamba_tiny", pretrained=tmp_path / "k400.pth", **CLASSIFIER),
                        tmp_path / "saved")
    from_file = {"source": "checkpoint", "file": "k400.pth"}  # the name only: no local path in a shared folder
    assert read_config(tmp_path / "saved")["weights_from"] == from_file
    # a folder loaded as the model, or as another model's weights (its config as saved, or with an override that
    # builds a new model), and saved again, keeps it
    for i, again in enumerate((vmm.from_pretrained(tmp_path / "saved"), vmm.create_model(tmp_path / "saved"),
                               vmm.create_model("videomamba_tiny", pretrained=tmp_path / "saved", **CLASSIFIER),
                               vmm.create_model("videomamba_tiny", pretrained=tmp_path / "saved", **CLASSIFIER,
                                                drop_path_rate=0.1))):
        assert read_config(vmm.save_pretrained(again, tmp_path / f"again{i}"))["weights_from"] == from_file
    # a folder of an older vmm, which did not record it, still loads, and does not claim a source
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    del config["weights_from"]
    (tmp_path / "saved" / "config.json").write_text(json.dumps(config))
    old = vmm.from_pretrained(tmp_path / "saved")
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), src.state_dict().values()))
    assert read_config(vmm.save_pretrained(old, tmp_path / "resaved"))["weights_from"] == {"source": "unknown"}
    # weights loaded over them later are what the model holds: a file by its name, a state dict of unknown source
    vmm.load_checkpoint(old, tmp_path / "k400.pth")
    assert read_config(vmm.save_pretrained(old, tmp_path / "reloaded"))["weights_from"] == from_file
    vmm.load_checkpoint(src, src.state_dict())
    assert read_config(vmm.save_pretrained(src, tmp_path / "from_dict"))["weights_from"] == {"source": "unknown"}


def test_weights_loaded_over_a_vmm_train_export_are_not_called_trained(tmp_path):
    """The step count of a vmm train export (model_meta) outranked a checkpoint loaded over its weights later, so
    those were saved, and evaluated, as "trained N steps by vmm train"."""
    from vmm.models.persistence import read_config
    from vmm.training.loop import TRAINED_STEPS
    src = vmm.create_model("videomamba_tiny", **CLASSIFIER)
    src.model_meta = {**src.model_meta, TRAINED_STEPS: 100}  # as export_final writes final/
    vmm.save_pretrained(src, tmp_path / "final")
    torch.save(vmm.create_model("videomamba_tiny", **CLASSIFIER).state_dict(), tmp_path / "k400.pth")
    for checkpoint, expected in ((tmp_path / "k400.pth", {"source": "checkpoint", "file": "k400.pth"}),
                                 (src.state_dict(), {"source": "unknown"})):
        model = vmm.from_pretrained(tmp_path / "final")
        assert read_config(vmm.save_pretrained(model, tmp_path / "as_is"))["weights_from"] == {
            "source": "vmm train", "steps": 100}
        vmm.load_checkpoint(model, checkpoint)
        saved = read_config(vmm.save_pretrained(model, tmp_path / "replaced"))
        assert saved["weights_from"] == expected and TRAINED_STEPS not in saved["model_meta"]


def test_a_folder_built_into_another_model_keeps_its_source_when_the_folder_changes(tmp_path, monkeypatch):
    """A folder loaded into a model of other options (create_model(name, pretrained=FOLDER, drop_path_rate=...))
    was read for its source only when the model was saved: by then a relative path pointed elsewhere (a file
    named like the folder was recorded), and a later export into the folder lent its step count."""
    from vmm.models.persistence import read_config
    from vmm.training.loop import TRAINED_STEPS
    monkeypatch.chdir(tmp_path)
    src = vmm.create_model("videomamba_tiny", **CLASSIFIER)
    src.model_meta = {**src.model_meta, TRAINED_STEPS: 100}
    vmm.save_pretrained(src, "final")
    model = vmm.create_model("videomamba_tiny", pretrained="final", drop_path_rate=0.1, **CLASSIFIER)
    src.model_meta = {**src.model_meta, TRAINED_STEPS: 900}  # the run continued and exported again
    vmm.save_pretrained(src, "final")
    assert read_config(vmm.save_pretrained(model, tmp_path / "a"))["weights_from"] == {"source": "vmm train",
                                                                                         "steps": 100}
    monkeypatch.chdir(tmp_path / "a")  # "final" is no longer this folder
    assert read_config(vmm.save_pretrained(model, tmp_path / "b"))["weights_from"] == {"source": "vmm train",
                                                                                         "steps": 100}


@pytest.mark.parametrize("name, overrides, needle", [
    ("videomamba_tiny", dict(num_frames=0), "num_frames=0: num_frames must be a whole number from 1 to 1024"),
    ("videomamba_tiny", dict(num_frames=5000), "num_frames=5000: num_frames must be a whole number from 1 to"),
    ("videomamba_tiny", dict(depth=0), "depth=0: depth must be a whole number >= 1"),
    ("videomamba_tiny", dict(depth=-1), "depth=-1: depth must be a whole number >= 1"),
    ("videomamba_tiny", dict(depth=2.0), "depth=2.0: depth must be a whole number"),
    ("videomamba_tiny", dict(depth="2"), "depth='2': depth must be a whole number"),
    ("videomamba_tiny", dict(drop_path_rate="0.1"), "drop_path_rate='0.1': drop_path_rate must be a number >= 0"),
    ("videomamba_tiny", dict(embed_dim=0), "embed_dim=0: embed_dim must be a whole number >= 1"),
    ("videomamba_tiny", dict(img_size=8), "img_size=8 is smaller than patch_size=16; pass img_size >= 16"),
    # The patchify conv dropped the border pixels and the tubelet conv the last frames, without a word.
    ("videomamba_tiny", dict(img_size=40), "img_size=40 is not a multiple of patch_size=16; pass img_size=32 or 48"),
    ("videomamba_tiny", dict(num_frames=5, tubelet_size=2),
     "num_frames=5 is not a multiple of tubelet_size=2; pass num_frames=4 or 6"),
    ("videomamba_m16_mm", dict(vision=dict(img_size=230)), "vision img_size=230 is not a multiple of patch_size=16"),
    ("videomamba_tiny", dict(scan_backend="foo"), "scan_backend='foo' is not a scan backend; pass one of mamba_ssm, "
     "reference, triton or leave it unset"),
    ("videomamba_m16_mm", dict(vision=3), "vision=3: vision takes a dict of vision options"),
    ("videomamba_m16_mm", dict(vision=dict(depth=0)), "vision depth=0: depth must be a whole number >= 1"),
    ("videomamba_m16_mm", {**TINY, "text": {**TINY["text"], "num_attention_heads": 5}},
     "text num_attention_heads=5 does not divide hidden_size=64; pass a head count that divides it \\(e.g. 4\\)"),
    ("videomamba_m16_mm", {**TINY, "max_text_len": 40}, "max_text_len=40 is more than the text tower's 32 positions"),
])
def test_both_factories_refuse_a_bad_config_before_building(name, overrides, needle):
    for factory in (vmm.create_model, vmm.create_model_and_transforms):
        refused(needle, factory, name, **overrides)


def test_numpy_numbers_are_stored_as_plain_numbers(tmp_path):
    model = vmm.create_model("videomamba_tiny", **{**CLASSIFIER, "depth": np.int64(1), "drop_path_rate": np.float32(0)})
    assert type(model.cfg.depth) is int and type(model.cfg.drop_path_rate) is float
    vmm.save_pretrained(model, tmp_path / "saved")  # config.json: JSON cannot write numpy numbers
    assert vmm.from_pretrained(tmp_path / "saved").cfg.depth == 1


def test_from_index_import_discover_is_the_function_whatever_was_imported_first(tmp_path):
    write_solid(str(tmp_path / "red.mp4"), (255, 0, 0), seconds=0.5)
    for first in ("", "import index.library; ", "import index.discovery; ", "import index; index.discover; "):
        code = (f"{first}from index import discover; import index; "
                f"assert index.discover is discover; "
                f"print(len(discover([{str(tmp_path)!r}]).candidates))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
        assert out.returncode == 0 and out.stdout.strip() == "1", (first, out.stderr[-400:])


def test_tokenizer_inputs(tok):
    assert torch.equal(tok("a dog", max_length=8)[0], tok(["a dog"], max_length=8)[0])
    ids, mask = tok([], max_length=8)
    assert ids.shape == mask.shape == (0, 8) and ids.dtype == torch.long
    refused(r"texts\[1\] is None \(NoneType\), not a string", tok, ["a dog", None])
    refused("texts must be a string or a list of strings, got int", tok, 3)
    for bad in (-1, 0, 1, 2.5):
        refused(f"max_length={bad}: must be a whole number >= 2", tok, ["a dog"], max_length=bad)
    refused("max_length=0: must be a whole number >= 2", vmm.get_tokenizer, "vmm_nano", max_length=0)


def test_encode_texts_takes_one_string_as_one_text(mm, tok):
    enc = VideoTextEncoder(mm, device="cpu", tokenizer=tok)
    np.testing.assert_array_equal(enc.encode_texts("a dog"), enc.encode_texts(["a dog"]))
    assert enc.encode_texts([]).shape == (0, 16)
    refused("max_text_len=64 is more than the text tower's 32 positions; pass max_text_len <= 32",
            VideoTextEncoder, mm, device="cpu", tokenizer=tok, max_text_len=64)


def test_batch_size_must_be_a_whole_number_of_at_least_one(mm, tok):
    """batch_size=0 failed inside range() at the first encode_clips, and a negative one returned no vectors."""
    for bad in (0, -1, 2.5, "8", True, None):
        refused(rf"^batch_size must be a whole number >= 1, got {re.escape(repr(bad))}; e.g. batch_size=8$",
                VideoTextEncoder, mm, device="cpu", tokenizer=tok, batch_size=bad)
    enc = VideoTextEncoder(mm, device="cpu", tokenizer=tok, batch_size=np.int64(2))
    assert enc.batch_size == 2 and type(enc.batch_size) is int
    assert enc.encode_clips([np.zeros((enc.num_frames, 12, 10, 3), np.uint8)] * 3).shape == (3, 16)


def test_video_batch_equals_each_clip_through_the_transform(mm, tok, monkeypatch):
    """Clips of one shape are copied and resized together (in chunks); the result must equal each clip's own
    transform, whatever the mix of shapes, the order, the container type or the chunk size."""
    enc = VideoTextEncoder(mm, device="cpu", tokenizer=tok)
    rng = np.random.default_rng(0)
    t = enc.num_frames
    clips = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in
             [(t, 40, 48, 3), (t, 17, 9, 3), (t, 40, 48, 3), (t, 32, 32, 3), (t, 40, 48, 3), (t, 17, 9, 3)]]
    clips[3] = torch.from_numpy(clips[3])  # a tensor clip goes with the arrays
    clips[4] = np.asfortranarray(clips[4])  # not C-contiguous
    expected = torch.stack([enc.transform(torch.as_tensor(np.ascontiguousarray(c))) for c in clips])
    for chunk_bytes in (1 << 28, 2 * t * 40 * 48 * 3, 1):  # whole groups, two clips at a time, one at a time
        monkeypatch.setattr("vmm.embedder._PREP_CHUNK_BYTES", chunk_bytes)
        assert torch.equal(enc._video_batch(clips), expected)
    np.testing.assert_allclose(enc.encode_clips(clips), np.concatenate([enc.encode_clips([c]) for c in clips]),
                               rtol=1e-5, atol=1e-6)
    refused(r"^clip 1 has shape \(2, 8, 8\), not \(frames, height, width, 3\)", enc.encode_clips,
            [clips[0], np.zeros((2, 8, 8), np.uint8)])

def test_video_batch_takes_what_the_per_clip_preparation_took(mm, tok):
    """A clip of 0 frames or 0 pixels is named before the chunk arithmetic (and the resize) sees it."""
    enc = VideoTextEncoder(mm, device="cpu", tokenizer=tok)
    t = enc.num_frames
    refused(r"^clip 0 of shape \(0, 12, 10, 3\) is empty", enc.encode_clips, [np.zeros((0, 12, 10, 3), np.uint8)])
    refused(rf"^clip 0 of shape \({t}, 12, 0, 3\) is empty", enc.encode_clips, [np.zeros((t, 12, 0, 3), np.uint8)])


def test_encode_text_inputs(mm, tok):
    ids, mask = tok(["a dog"], max_length=8)
    with torch.no_grad():
        expected = mm.encode_text(ids, mask)
        torch.testing.assert_close(mm.encode_text(ids.to(torch.int16), mask), expected, rtol=0, atol=0)
    refused("needs the input_ids and attention_mask tensors", mm.encode_text, ids, None)
    refused(r"input_ids \(1, 8\) and attention_mask \(1, 7\) must both be", mm.encode_text, ids, mask[:, :7])
    refused("input_ids are torch.float32", mm.encode_text, ids.float(), mask)
    refused("input_ids have 64 tokens but the text tower has 32 positions; tokenize with max_length <= 32",
            mm.encode_text, *tok(["a dog"], max_length=64))


def test_video_inputs():
    model = vmm.create_model("videomamba_tiny", **CLASSIFIER).eval()
    x = torch.rand(1, 3, 2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x.double()), model(x))
    refused("video input must be a torch.Tensor .* got ndarray; convert it with torch.from_numpy", model, x.numpy())
    refused("video input is torch.uint8; the model takes float frames normalised",
            model, (x * 255).to(torch.uint8))
    refused("video input has 4 channels but the model takes 3", model, torch.rand(1, 4, 2, 32, 32))
    refused("input is 1 patches per frame", model, torch.rand(1, 3, 2, 16, 16))


def test_multimodal_video_inputs_and_similarity(mm):
    video = torch.rand(2, 3, 4, 32, 32)
    with torch.no_grad():
        frames = mm.encode_video(video, per_frame=True)
        torch.testing.assert_close(mm.encode_video(video.double(), per_frame=True), frames)
    refused("video input must be a torch.Tensor", mm.encode_video, video.numpy())
    refused("video input is torch.uint8", mm.encode_video, video.to(torch.uint8))
    text = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    assert mm.similarity(frames, text).shape == (2, 3)
    refused(r"similarity takes video embeddings .* got \(2, 4, 16\) and \(3, 8\)", mm.similarity, frames, text[:, :8])
    refused(r"got \(2, 16\) and \(16,\)", mm.similarity, frames[:, 0], text[0])


def test_cuda_graph_is_off_on_the_cpu(mm, tok):
    """``cuda_graph`` asks for a graph only where there is CUDA: on the CPU every batch runs eagerly, unchanged."""
    clips = [np.random.default_rng(k).integers(0, 256, (4, 20, 24, 3), dtype=np.uint8) for k in range(4)]
    enc = VideoTextEncoder(mm, device="cpu", tokenizer=tok, batch_size=2)
    assert enc.cuda_graph is False
    for _ in range(3):
        np.testing.assert_array_equal(enc.encode_clips(clips),
                                      VideoTextEncoder(mm, device="cpu", tokenizer=tok, batch_size=2,
                                                       cuda_graph=False).encode_clips(clips))
    assert enc._graph is None


def _cuda_clips(n, seed, t=4):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (t, 36, 44, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.cuda
def test_cuda_graph_replays_the_eager_forward_bit_for_bit(tok):
    """Full batches go through a CUDA graph from the second one on; every batch, full or partial, gives the eager
    forward's vectors exactly, and patch tokens (ITM) still come from the eager path."""
    torch.manual_seed(0)
    model = vmm.create_model("videomamba_m16_mm", **TINY).eval()
    graphed = VideoTextEncoder(model, device="cuda", tokenizer=tok, batch_size=4)
    eager = VideoTextEncoder(model, device="cuda", tokenizer=tok, batch_size=4, cuda_graph=False)
    for seed in range(4):
        clips = _cuda_clips(6 if seed == 3 else 4, seed)  # the last call: one full batch and a partial one
        np.testing.assert_array_equal(graphed.encode_clips(clips), eager.encode_clips(clips))
        assert (graphed._graph is None) == (seed == 0)  # one call of a shape is not worth a capture
    vectors, tokens = graphed.encode_clips(_cuda_clips(4, 9), return_tokens=True)
    np.testing.assert_array_equal(vectors, eager.encode_clips(_cuda_clips(4, 9)))
    assert tokens.shape[0] == 4


@pytest.mark.cuda
def test_cuda_graph_follows_the_weights(tok):
    """Weights changed in place are read by the next replay; a replaced parameter or buffer means a new capture,
    never a replay reading the old (freed) tensor."""
    torch.manual_seed(0)
    model = vmm.create_model("videomamba_m16_mm", **TINY).eval()
    graphed = VideoTextEncoder(model, device="cuda", tokenizer=tok, batch_size=4)
    eager = VideoTextEncoder(model, device="cuda", tokenizer=tok, batch_size=4, cuda_graph=False)
    clips = _cuda_clips(4, 0)
    for _ in range(2):
        graphed.encode_clips(clips)
    first = graphed._graph
    assert first is not None
    with torch.no_grad():
        model.vision_proj.weight.mul_(-1)
    np.testing.assert_array_equal(graphed.encode_clips(clips), eager.encode_clips(clips))
    assert graphed._graph is first
    model.vision_proj.weight = torch.nn.Parameter(model.vision_proj.weight.detach() * 3)
    for _ in range(3):
        np.testing.assert_array_equal(graphed.encode_clips(clips), eager.encode_clips(clips))
    assert graphed._graph is not None and graphed._graph is not first


@pytest.mark.cuda
def test_a_model_that_cannot_be_captured_stays_eager_and_leaves_cuda_usable(tok, capfd):
    """A forward that reads a value back to the host cannot be captured: it is refused before the capture (one
    line on stderr), encodes eagerly with the same vectors, and leaves the caller's stream and CUDA's random
    numbers as they were (a capture failing midway would have broken them for the whole process)."""
    torch.manual_seed(0)
    model = vmm.create_model("videomamba_m16_mm", **TINY).eval()
    eager = VideoTextEncoder(model, device="cuda", tokenizer=tok, batch_size=4, cuda_graph=False)
    clips = _cuda_clips(4, 0)
    expected = eager.encode_clips(clips)
    forward = model.encode_video

    def reads_back(x, **kwargs):
        assert float(x.abs().sum()) >= 0  # a host sync, as a data-dependent branch would make
        return forward(x, **kwargs)

    model.encode_video = reads_back
    graphed = VideoTextEncoder(model, device="cuda", tokenizer=tok, batch_size=4)
    for _ in range(3):
        np.testing.assert_array_equal(graphed.encode_clips(clips), expected)
    assert graphed.cuda_graph is False and graphed._graph is None
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vmm: CUDA graph capture failed (the forward calls ")
    assert err[0].endswith(", which makes the host wait for the GPU); encoding without it")
    assert torch.cuda.current_stream() == torch.cuda.default_stream()
    assert torch.randn(4, device="cuda").isfinite().all()


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_an_encoder_on_the_second_gpu_works_while_the_first_is_current(tok):
    """A rank that never called torch.cuda.set_device, or device="cuda:1": Triton launches on the current device,
    so the kernels must switch to the tensors' own; eager and graph give the vectors of the same model on cuda:0."""
    torch.manual_seed(0)
    model = vmm.create_model("videomamba_m16_mm", **TINY).eval()
    batches = [_cuda_clips(4, seed) for seed in range(4)]
    first = VideoTextEncoder(model, device="cuda:0", tokenizer=tok, batch_size=4, cuda_graph=False)
    expected = [first.encode_clips(clips) for clips in batches]
    torch.cuda.set_device(0)
    on_second = VideoTextEncoder(model, device="cuda:1", tokenizer=tok, batch_size=4)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="The CUDA Graph is empty")  # captured on another GPU's stream
        for clips, vectors in zip(batches, expected):  # eager, capture, then replays of new clips
            np.testing.assert_array_equal(on_second.encode_clips(clips), vectors)
    assert on_second._graph is not None and torch.cuda.current_device() == 0


class _MetaRefuseHostSync(RefuseHostSync):
    gpu = "meta"  # the "meta" device plays the GPU, so the check runs on a CPU machine


@pytest.mark.parametrize("label,op,refused", [
    ("a value read back", lambda g, c: g.sum().item(), True),
    ("a copy to the host", lambda g, c: g.to("cpu"), True),
    ("a copy from the host", lambda g, c: c.to("meta", torch.float16), True),
    ("a host tensor as a GPU tensor", lambda g, c: torch.as_tensor(c, device="meta"), True),
    ("torch.where(cond): a nonzero inside", lambda g, c: torch.where(g > 0), True),
    ("boolean indexing", lambda g, c: g[g > 0], True),
    ("a host scalar copied in", lambda g, c: g.clone().copy_(torch.tensor(1.0)), True),
    ("a 0-dim host operand", lambda g, c: g * torch.tensor(2.0), False),
    ("a copy on the GPU", lambda g, c: g.clone().copy_(g), False),
    ("a cast on the GPU", lambda g, c: g.to(torch.float16), False),
    ("linear and layer_norm", lambda g, c: F.layer_norm(F.linear(g.view(1, 4), g.view(1, 4)), (1,)), False),
])
def test_the_capture_check_refuses_what_makes_the_host_wait(label, op, refused):
    """The warm-up before a capture refuses the ops a CUDA graph cannot hold, also when they hide inside a composite
    op under inference mode (torch.where's nonzero), and lets the others through."""
    g, c = torch.randn(4, device="meta"), torch.randn(4)
    with torch.inference_mode():
        if refused:
            with pytest.raises(RuntimeError, match="makes the host wait for the GPU"), _MetaRefuseHostSync():
                op(g, c)
        else:
            with _MetaRefuseHostSync():
                op(g, c)


def test_the_capture_check_passes_the_shipped_forward(monkeypatch):
    """The VideoMamba video forward as it runs on a GPU (the fused Triton layers, kernel launches emulated) passes
    the warm-up check in both frame modes, so the shipped models get their CUDA graph."""
    pytest.importorskip("triton")
    import vmm.models.layers as layers
    import vmm.ops.bimamba as bimamba
    from vmm.ops import triton_bimamba, triton_conv, triton_norm

    class NoLaunch:  # kernel[grid](...) does nothing: meta tensors hold no data
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None

    monkeypatch.setattr(bimamba, "use_triton", lambda t, backend: True)
    monkeypatch.setattr(layers, "use_triton", lambda t, backend: True)
    for module in (triton_bimamba, triton_conv, triton_norm):
        for name in dir(module):
            if name.startswith("_") and name.endswith("_kernel"):
                monkeypatch.setattr(module, name, NoLaunch())
    for frame_mode in ("joint", "per_frame"):
        vision = dict(TINY["vision"], frame_mode=frame_mode)
        model = vmm.create_model("videomamba_m16_mm", **dict(TINY, vision=vision)).eval().to("meta")
        with torch.inference_mode(), _MetaRefuseHostSync():
            out = model.encode_video(torch.empty(2, 3, 4, 32, 32, device="meta"))
        assert out.shape == (2, TINY["embed_dim"])


def test_a_name_or_path_of_the_wrong_type_is_named():
    """create_model(3), get_tokenizer(None) and save_pretrained(model, 3) failed inside pathlib ("expected str,
    bytes or os.PathLike object"); vision_overrides_from_state_dict("x.pth") with "'str' object has no attribute
    'items'"."""
    from vmm.errors import CheckpointError, VmmError
    model = vmm.create_model("videomamba_tiny", **CLASSIFIER)
    for call, message in ((lambda: vmm.create_model(3), "model must be a registered model name or a model "
                                                          "folder's path, got 3; see vmm.list_models()"),
                          (lambda: vmm.get_tokenizer(None), "the tokenizer's model name must be"),
                          (lambda: vmm.save_pretrained(model, 3), "save_pretrained: directory must be a folder's "
                                                                  "path, got 3"),
                          (lambda: vmm.vision_overrides_from_state_dict("x.pth"),
                           "takes a state dict, not a path (x.pth); read the file first")):
        with pytest.raises(VmmError) as e:
            call()
        assert message in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="got int$"):
        vmm.vision_overrides_from_state_dict(3)


def test_one_clip_instead_of_a_list_is_named(mm, tok):
    """encode_clips(clip) iterated the clip's frames and said "frames must be (T, H, W, 3), got (48, 64, 3)"."""
    from vmm.errors import VmmError
    enc = VideoTextEncoder(mm, tokenizer=tok, batch_size=2)
    clip = np.zeros((mm.cfg.vision.num_frames, 48, 64, 3), np.uint8)
    with pytest.raises(VmmError, match=r"takes a list of clips \(or an \(N, T, H, W, 3\) array\), got one clip of "
                                       rf"shape \({len(clip)}, 48, 64, 3\); pass \[clip\]$"):
        enc.encode_clips(clip)
    assert enc.encode_clips([clip]).shape == enc.encode_clips(clip[None]).shape == (1, enc.dim)


def test_get_tokenizer_refuses_a_name_that_is_no_model():
    """A misspelt name gave bert-base-uncased at 32 tokens, whatever the intended model's config says."""
    assert vmm.get_tokenizer("videomamba_tiny").max_length == 32  # an entrypoint without a JSON config
    refused(r"^unknown model 'videomamba_m16_25'; did you mean 'videomamba_m16_25m'\? pass a name from "
            r"vmm.list_models\(\) or a model folder$",
            vmm.get_tokenizer, "videomamba_m16_25")


def test_overrides_apply_to_a_trainable_only_export():
    """The shipped vmm_nano folder holds only the trained tensors: create_model(folder, ...) and
    from_pretrained(folder, ...) dropped every override (drop_path_rate stayed 0.1), and a shape-changing one was
    explained by a frozen key "missing from the file" instead of the key it changed."""
    folder = REPO / "vmm" / "weights" / "vmm_nano"
    base = vmm.from_pretrained(folder)
    for model in (vmm.create_model(folder, vision=dict(drop_path_rate=0.3)),
                  vmm.from_pretrained(folder, vision=dict(drop_path_rate=0.3))):
        assert model.cfg.vision.drop_path_rate == 0.3 and model.vision_encoder.drop_path.p == 0.3
        assert model.model_name == "vmm_nano" and model.pretrained_source == str(folder)
        assert all(torch.equal(a, b) for a, b in zip(base.state_dict().values(), model.state_dict().values()))
    refused(r"with embed_dim=128 \(vision_proj.weight has shape \(256, 192\) in the file but \(128, 192\) in the "
            r"model\); drop those overrides", vmm.create_model, folder, embed_dim=128)


def test_transforms_take_a_list_of_frames_or_pil_images():
    """A list of frames (PIL images, as open_clip users hold them, or arrays) failed with "'list' object has no
    attribute 'ndim'"; other types are named."""
    from PIL import Image
    from vmm.transforms import EvalTransform, TrainTransform
    frames = np.random.default_rng(0).integers(0, 256, (3, 20, 24, 3), dtype=np.uint8)
    images = [Image.fromarray(f) for f in frames]
    assert torch.equal(EvalTransform(16)(images), EvalTransform(16)(frames))
    assert torch.equal(EvalTransform(16)(list(frames)), EvalTransform(16)(frames))
    assert torch.equal(EvalTransform(16)([i.convert("RGBA") for i in images]), EvalTransform(16)(frames))
    train = TrainTransform(16)
    assert torch.equal(train(images, rng=random.Random(1)), train(frames, rng=random.Random(1)))
    with pytest.raises(ValueError, match=r"^frames are a file name \('clip.mp4'\), not decoded frames; decode the "):
        EvalTransform(16)("clip.mp4")
    with pytest.raises(ValueError, match=r"^frames are dict, not image data; give a \(frames, height, width, 3\) uint8 "):
        EvalTransform(16)({"frames": frames})


def test_register_model_refuses_a_name_it_could_not_build():
    """A built-in's name registered before the built-ins were imported made every later list_models/create_model
    fail with "model 'videomamba_tiny' registered twice"; a JSON config's name was accepted and never built (the
    config won); a lambda registered as '<lambda>'."""
    code = ("import torch.nn as nn, vmm\n"
            "def videomamba_tiny(**overrides):\n"
            "    return nn.Identity()\n"
            "try:\n"
            "    vmm.register_model(videomamba_tiny)\n"
            "except ValueError as e:\n"
            "    print(e)\n"
            "print(type(vmm.create_model('videomamba_tiny', depth=1)).__name__, len(vmm.list_models()) > 10)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-600:]
    assert out.stdout.splitlines() == ["model 'videomamba_tiny' registered twice; give the function another name",
                                       "VideoMamba True"]

    def vmm_nano():
        return torch.nn.Identity()
    with pytest.raises(ValueError, match=r"^model 'vmm_nano' is the model config .*vmm_nano.json already; give the "
                                         r"function another name$"):
        vmm.register_model(vmm_nano)
    with pytest.raises(ValueError, match=r"^register_model takes a function defined with def"):
        vmm.register_model(lambda: torch.nn.Identity())
    assert "<lambda>" not in vmm.list_models()


def test_a_model_config_that_is_not_an_object_is_named(tmp_path, monkeypatch):
    """A JSON config whose "model" is a list failed with a TypeError from dict(); a top-level list with an
    AttributeError."""
    from vmm.models import registry
    monkeypatch.setattr(registry, "_CONFIG_DIRS", [tmp_path, *registry._CONFIG_DIRS])
    (tmp_path / "list_model.json").write_text('{"architecture": "videomamba_tiny", "model": [1, 2]}')
    (tmp_path / "list_config.json").write_text('[1, 2]')
    for name in ("list_model", "list_config"):
        for call in (vmm.create_model, vmm.get_tokenizer):
            refused(rf"^model config {tmp_path / name}.json must be a JSON object ", call, name)


def test_a_user_model_without_a_config_is_named_by_save_and_transforms(tmp_path, monkeypatch):
    """save_pretrained and create_model_and_transforms of a registered nn.Linear failed with "'Linear' object has
    no attribute 'cfg'"."""
    from vmm.models import registry
    def api_test_linear_probe(classes=3):
        return torch.nn.Linear(4, classes)
    # Registered into a copy of the registry: the probe must not stay a model of every later test.
    registry.list_models()  # the built-ins register on first use: into the copy, they would be gone after the test
    monkeypatch.setattr(registry, "_ENTRYPOINTS", dict(registry._ENTRYPOINTS))
    vmm.register_model(api_test_linear_probe)
    probe = vmm.create_model("api_test_linear_probe", classes=5)
    assert probe.out_features == 5
    refused("^model api_test_linear_probe has no dataclass cfg to write as config.json", vmm.save_pretrained,
            probe, tmp_path / "probe")
    refused("^model api_test_linear_probe has no cfg.img_size to size its transforms; use vmm.create_model",
            vmm.create_model_and_transforms, "api_test_linear_probe")
    refused(r"^pretrained must be a checkpoint file or model folder path, .* got 3$", vmm.create_model,
            "videomamba_tiny", pretrained=3, **CLASSIFIER)


def test_a_vision_option_given_at_the_top_of_a_multimodal_model_names_its_dict():
    """num_frames=16 works for a classifier; for a multimodal model it was "unknown model option(s) num_frames",
    with no word of vision=dict(...), where it goes."""
    with pytest.raises(VmmError, match=r"^img_size, num_frames are vision options of this model; pass "
                                       r"vision=dict\(img_size=160, num_frames=16\)$"):
        vmm.create_model("videomamba_m16_25m", num_frames=16, img_size=160)
    assert vmm.create_model("vmm_nano", vision=dict(num_frames=4)).cfg.vision.num_frames == 4


def test_models_build_on_the_meta_device_and_load_into_real_memory(tmp_path):
    """Building under torch.device("meta") (no memory until the weights come) failed on the drop-path schedule's
    .tolist() of a meta tensor."""
    torch.manual_seed(0)
    source = vmm.create_model("videomamba_tiny", depth=2, num_classes=5)
    with torch.device("meta"):
        model = vmm.create_model("videomamba_tiny", depth=2, num_classes=5)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    model = model.to_empty(device="cpu")
    vmm.load_checkpoint(model, source.state_dict())
    x = torch.randn(1, 3, 8, 224, 224)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), source.eval()(x))


def test_a_path_that_is_no_model_folder_says_what_it_is(tmp_path):
    """A folder or file given as the model read as an unknown model name, and the message listed every
    registered model instead of saying what the path is and what to pass."""
    model = vmm.create_model("videomamba_tiny", **CLASSIFIER)
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save(model.state_dict(), weights / "k400.pth")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    for name, needle in ((weights / "k400.pth", f"model {weights / 'k400.pth'} is a weights file, not a model name "
                                                f"or folder; pass a registered model name"),
                         (weights, f"is a folder but not a vmm model folder .*; to load {weights / 'k400.pth'}, "
                                   "pass a registered model name with it as pretrained="),
                         (tmp_path / "empty", "is a folder but not a vmm model folder \\(no config.json \\+ "
                                              "model.safetensors\\); pass a folder written by vmm.save_pretrained"),
                         (tmp_path / "half", "has config.json but no model.safetensors \\(an interrupted save\\?\\)"),
                         (str(tmp_path / "gone"), "model folder .*gone does not exist; pass a folder written by"),
                         ("hf-hub:OpenGVLab/VideoMamba/videomamba_t16_k400_f8_res224.pth",
                          "is a hub weights file, not a model name; pass a registered model name .* with "
                          "pretrained='hf-hub:OpenGVLab/VideoMamba/videomamba_t16_k400_f8_res224.pth'")):
        for factory in (vmm.create_model, vmm.create_model_and_transforms, vmm.get_tokenizer):
            with pytest.raises(VmmError, match=needle) as e:
                factory(name)
            assert "\n" not in str(e.value) and "available:" not in str(e.value)


def disk_full_at_the_second_file(monkeypatch) -> None:
    """The disk fills while the second file of a save is written (config.json, after the new weights)."""
    import os
    from vmm.models import persistence
    real_fsync, calls = os.fsync, []

    def fsync_then_disk_full(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_fsync(fd)
    monkeypatch.setattr(persistence.os, "fsync", fsync_then_disk_full)


def test_a_save_that_fails_midway_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    """save_pretrained replaced model.safetensors, then failed writing config.json (a full disk): the folder held
    the new weights beside the old config and no longer loaded, and the OSError came as a traceback."""
    torch.manual_seed(0)
    old = vmm.create_model("videomamba_tiny", **CLASSIFIER)
    folder = vmm.save_pretrained(old, tmp_path / "model")
    disk_full_at_the_second_file(monkeypatch)
    refused(f"^cannot write {folder / 'config.json'} \\(No space left on device\\); the folder keeps what it had",
            vmm.save_pretrained, vmm.create_model("videomamba_tiny", **{**CLASSIFIER, "depth": 2}), folder)
    monkeypatch.undo()
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]  # no temporary files
    again = vmm.create_model(folder)
    assert again.cfg == old.cfg
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), again.state_dict().values()))


SAVE_UNDER_A_FILE_SIZE_LIMIT = """
import resource, signal, sys, vmm
from vmm.errors import VmmError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
model = vmm.create_model("videomamba_tiny", depth=2, num_frames=2, img_size=32)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
try:
    vmm.save_pretrained(model, sys.argv[1])
except VmmError as e:
    print(e)
"""


def test_a_save_that_runs_out_of_space_in_safetensors_is_one_line(tmp_path):
    """safetensors' writer reports a failed write as SafetensorError, not OSError: a full disk gave its traceback
    and left the temporary file."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", SAVE_UNDER_A_FILE_SIZE_LIMIT, str(tmp_path / "model")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.startswith(f"cannot write {tmp_path / 'model' / 'model.safetensors'} (") and r.stdout.count(
        "\n") == 1 and "the folder keeps what it had" in r.stdout, r.stdout
    assert list((tmp_path / "model").iterdir()) == []  # no temporary file left


def test_a_trainable_only_export_that_fails_midway_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    """The training export wrote its two files one by one too: new tensors beside the old config."""
    from tests.tiny_model import TINY
    from vmm.training.export import save_trainable
    folder = save_trainable(vmm.create_model("videomamba_m16_mm", **TINY), tmp_path / "final", [])
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    disk_full_at_the_second_file(monkeypatch)
    refused(f"^cannot write {folder / 'config.json'} \\(No space left on device\\); the folder keeps what it had",
            save_trainable, vmm.create_model("videomamba_m16_mm", **{**TINY, "embed_dim": 24}), folder, [])
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU has no mamba_ssm kernel to refuse")
def test_an_unavailable_scan_backend_names_the_models_option():
    """create_model(scan_backend="mamba_ssm") on a CPU failed on the first clip with the install hint only: the way
    out, leaving the model's scan_backend unset, was not named."""
    model = vmm.create_model("videomamba_tiny", scan_backend="mamba_ssm", **CLASSIFIER).eval()
    refused(r"^selective_scan backend 'mamba_ssm' is unavailable for cpu torch\.float32 tensors: .*pip install "
            r".*; or leave it unset \(backend=None, or a model's scan_backend=None\) for the automatic choice$",
            model, torch.zeros(1, 3, 2, 32, 32))
