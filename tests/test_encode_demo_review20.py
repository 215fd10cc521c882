"""Review 20 of `vmm encode`, the embedding API and the demo: every registered model encodes, an empty call keeps
its documented shapes, and a demo stopped during indexing leaves a library `vmm search` opens."""
import json
import os

import numpy as np
import pytest
import torch

import vmm
from tests.tiny_model import TINY
from vmm.cli import main
from vmm.embedder import VideoTextEncoder


def test_encode_takes_a_vision_encoder_and_prints_its_pooled_vectors(tmp_path, capsys):
    """videomamba_tiny_vision and its kin have neither encode_video nor forward_features: an AttributeError
    traceback."""
    folder = tmp_path / "tiny vision"
    vmm.save_pretrained(vmm.create_model("videomamba_tiny_vision", depth=1, img_size=32, num_frames=2), folder)
    assert main(["encode", "--model", str(folder), "--threads", "1"]) == 0
    out = capsys.readouterr().out  # keep_temporal (the config's default): one pooled vector per frame
    assert out.startswith(f"model {folder}: input (1, 3, 2, 32, 32) -> embedding (1, 2, 192) in "), out


def test_encode_clips_of_no_clips_gives_empty_tokens_as_encode_texts_gives_empty_hidden_states():
    torch.manual_seed(0)
    enc = VideoTextEncoder(vmm.create_model("videomamba_m16_mm", **TINY), device="cpu")
    vecs, tokens = enc.encode_clips([], return_tokens=True)  # was: ValueError from torch.cat
    _, one = enc.encode_clips([np.zeros((enc.num_frames, 40, 40, 3), np.uint8)], return_tokens=True)
    assert vecs.shape == (0, enc.dim) and vecs.dtype == np.float32
    assert tokens.shape == (0, *one.shape[1:]) and tokens.dtype == one.dtype
    hidden = enc.encode_texts([], return_hidden=True)[1]
    assert hidden.shape[0] == 0



@pytest.mark.cuda
def test_no_clips_on_the_gpu_through_the_fused_kernels():
    """The empty forward of encode_clips([], return_tokens=True) on CUDA runs the Triton kernels with a batch of 0
    (grids of no programs): under the encoder's bf16 autocast, and in fp32 through the model itself."""
    torch.manual_seed(0)
    model = vmm.create_model("videomamba_m16_mm", **TINY).eval()
    enc = VideoTextEncoder(model, device="cuda")
    vecs, tokens = enc.encode_clips([], return_tokens=True)
    _, one = enc.encode_clips([np.zeros((enc.num_frames, 40, 40, 3), np.uint8)], return_tokens=True)
    assert vecs.shape == (0, enc.dim) and tokens.shape == (0, *one.shape[1:])
    with torch.no_grad():
        emb = model.encode_video(torch.zeros(0, 3, enc.num_frames, enc.img_size, enc.img_size, device="cuda"))
    assert emb.shape == (0, enc.dim)

def test_a_demo_stopped_after_indexing_committed_leaves_a_library_vmm_search_opens(tmp_path, monkeypatch, capsys):
    """model.json was written after indexing: a demo stopped midway left committed clips that `vmm search` refused
    ("records no model") until the demo was run to its end."""
    import index.ingest
    from vmm.demo import SHIPPED_NANO, DemoConfig, run_demo
    real = index.ingest.build_library

    def stopped_after_indexing(*args, **kwargs):  # Ctrl-C once the clips are committed
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(index.ingest, "build_library", stopped_after_indexing)
    out = tmp_path / "my demo"
    with pytest.raises(KeyboardInterrupt):
        run_demo(DemoConfig(out_dir=out, num_videos=2, queries=0, workers=0, device="cpu"))
    assert json.loads((out / "library" / "model.json").read_text())["model"] == str(SHIPPED_NANO)
    capsys.readouterr()
    assert main(["search", str(out / "library"), "a red circle", "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["path"].startswith(str(out / "corpus" / "videos"))


def test_a_demo_folder_name_a_library_cannot_take_is_refused_before_the_corpus_is_written(tmp_path, capsys):
    """A name that is not UTF-8 (Latin-1 bytes in a UTF-8 locale) was refused by indexing, after the corpus was
    generated into it."""
    out = tmp_path / os.fsdecode(b"d\xe9mo")
    assert main(["demo", "--out", str(out), "--videos", "2", "--workers", "0", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.startswith(r"error: the library path " + str(tmp_path) + r"/d\xe9mo/library is "
                                              "not valid UTF-8")
    assert list(tmp_path.iterdir()) == []
