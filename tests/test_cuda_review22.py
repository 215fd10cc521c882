"""Review 22 of the code paths only a GPU runs: the compiled kernels at layer sizes other than VideoMamba's, the
encoder's GPU when given as "cuda" and its CUDA graph after a scan backend switch, gradient checkpointing through
the fused kernels, and training steps in fp16 (grad scaler) and bf16. Marked ``cuda``: skipped without a GPU."""
from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest
import torch

import vmm
from tests.tiny_model import TINY
from vmm.embedder import VideoTextEncoder


@pytest.fixture(scope="module")
def tok():
    return vmm.get_tokenizer("vmm_nano")


def _clips(n, seed, t=4):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (t, 36, 44, 3), dtype=np.uint8) for _ in range(n)]


def _rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.cuda
@pytest.mark.parametrize("d_state,d_conv", [(8, 4), (32, 4), (16, 3)])
def test_the_compiled_layer_at_other_state_and_conv_sizes_matches_the_reference(d_state, d_conv):
    """The compiled kernels ran only at d_state 16 and 4 conv taps (VideoMamba's): other power-of-two d_states take
    the backward's plain dB/dC sums instead of the shuffle reduce-scatter (compiled nowhere else; the interpreter
    runs d_state 4), and 3 taps the padded windowed conv inside the whole layer. fp32, forward and every gradient
    against the float64 reference."""
    from tests.test_triton_bimamba import check_against_reference, make_layer
    xz, wf, wb = make_layer(2, 72, 101, N=d_state, device="cuda", seed=d_state + d_conv)
    if d_conv != 4:
        g = torch.Generator().manual_seed(d_conv)
        wf, wb = (w._replace(conv_weight=(torch.randn(72, 1, d_conv, generator=g) * 0.5).cuda().requires_grad_())
                  for w in (wf, wb))
    check_against_reference(xz, wf, wb, tol=1e-5)


@pytest.mark.cuda
def test_an_encoder_given_cuda_records_the_gpu_it_runs_on(tok):
    """device="cuda" is the GPU current when the encoder is made: it keeps that GPU's index (another thread has
    another current GPU; see the two-GPU test below)."""
    enc = VideoTextEncoder(vmm.create_model("videomamba_m16_mm", **TINY), device="cuda", tokenizer=tok)
    assert enc.device == torch.device("cuda", torch.cuda.current_device())
    assert next(enc.model.parameters()).device == enc.device
    assert enc.encode_clips(_clips(2, 0)).shape == (2, enc.dim)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_an_encoder_given_cuda_on_the_second_gpu_encodes_from_another_thread(tok):
    """torch.cuda.set_device(1), then an encoder (or VideoLibrary.open) with device="cuda", used from a server's
    worker thread, whose current GPU is cuda:0: its clips and texts went to cuda:0 while the model sat on cuda:1
    ("Expected all tensors to be on the same device")."""
    torch.manual_seed(0)
    model = vmm.create_model("videomamba_m16_mm", **TINY).eval()
    first = VideoTextEncoder(model, device="cuda:0", tokenizer=tok, batch_size=4, cuda_graph=False)
    batches = [_clips(4, seed) for seed in range(3)]
    expected = ([first.encode_clips(clips) for clips in batches], first.encode_texts(["a red square"]))
    torch.cuda.set_device(1)
    try:
        enc = VideoTextEncoder(model, device="cuda", tokenizer=tok, batch_size=4)
    finally:
        torch.cuda.set_device(0)
    got, errors = [], []

    def serve():
        try:
            got.append(([enc.encode_clips(clips) for clips in batches], enc.encode_texts(["a red square"])))
        except Exception as error:  # noqa: BLE001 - shown by the assertion below
            errors.append(error)
    worker = threading.Thread(target=serve)
    worker.start()
    worker.join()
    assert not errors, errors
    assert enc.device == torch.device("cuda", 1)
    for vectors, want in zip(got[0][0], expected[0]):  # eager, capture, replay
        np.testing.assert_allclose(vectors, want, atol=1e-5)
    np.testing.assert_allclose(got[0][1], expected[1], atol=1e-5)


def test_a_scan_backend_switch_is_a_new_graph_key(tok, monkeypatch):
    """The capture's bookkeeping, on the CPU (the capture emulated by an eager forward that counts its replays): a
    switch of the layers' scan backend drops the graph captured before it, as a replaced weight does."""
    import vmm.embedder as embedder
    replays = []

    class Emulated:
        def __init__(self, model, example, autocast):
            self.model = model

        def __call__(self, x):
            replays.append(len(x))
            return self.model.encode_video(x).float().cpu()

    monkeypatch.setattr(embedder, "GraphedVideoForward", Emulated)
    torch.manual_seed(0)
    model = vmm.create_model("videomamba_m16_mm", **TINY).eval()
    enc = VideoTextEncoder(model, device="cpu", tokenizer=tok, batch_size=2)
    enc._use_graph = True  # as on CUDA
    clips = _clips(2, 0)
    for _ in range(3):  # eager, capture, replay
        enc.encode_clips(clips)
    assert replays == [2, 2]
    model.vision_encoder.set_scan_backend("reference")
    enc.encode_clips(clips)
    assert replays == [2, 2] and enc._graph is None


@pytest.mark.cuda
def test_a_captured_graph_is_not_replayed_after_a_scan_backend_switch(tok, capfd):
    """set_scan_backend("reference") after the encoder captured its graph: the graph kept replaying the fused
    kernels, so the "reference" vectors were the fused ones bit for bit (a backend comparison found no
    difference). Now the switch is a new key: eager, with the eager encoder's vectors exactly."""
    torch.manual_seed(0)
    model = vmm.create_model("videomamba_m16_mm", **TINY).eval()
    graphed = VideoTextEncoder(model, device="cuda", tokenizer=tok, batch_size=4)
    eager = VideoTextEncoder(model, device="cuda", tokenizer=tok, batch_size=4, cuda_graph=False)
    clips = _clips(4, 0)
    fused = eager.encode_clips(clips)
    for _ in range(2):
        np.testing.assert_array_equal(graphed.encode_clips(clips), fused)
    assert graphed._graph is not None
    model.vision_encoder.set_scan_backend("reference")
    reference = eager.encode_clips(clips)
    assert not np.array_equal(reference, fused)  # the two paths round differently in bf16
    for _ in range(3):  # a new shape key, then a capture the reference scan refuses (it reads values back)
        np.testing.assert_array_equal(graphed.encode_clips(clips), reference)
    model.vision_encoder.set_scan_backend(None)
    np.testing.assert_array_equal(graphed.encode_clips(clips), fused)
    capfd.readouterr()


@pytest.mark.cuda
def test_gradient_checkpointing_through_the_fused_kernels_gives_the_same_gradients():
    """grad_checkpointing on CUDA reruns each block's fused layer and add + RMSNorm in the backward (drop path on,
    its masks replayed from the saved RNG state): the output and every gradient as without it (fp32; the fused
    backward sums with atomics, so to rounding)."""
    torch.manual_seed(0)
    model = vmm.create_model("videomamba_tiny", depth=3, num_frames=2, img_size=32, num_classes=4,
                             drop_path_rate=0.2).cuda().train()
    video = torch.randn(2, 3, 2, 32, 32, device="cuda")
    results = []
    for checkpointing in (False, True):
        model.set_grad_checkpointing(checkpointing)
        model.zero_grad()
        torch.manual_seed(1)
        out = model(video)
        out.pow(2).sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (y, g), (y_ck, g_ck) = results
    assert _rel(y_ck, y) < 1e-6
    assert g.keys() == g_ck.keys() and len(g) > 30
    bad = {n: _rel(g_ck[n], g[n]) for n in g if not _rel(g_ck[n], g[n]) < 1e-4}
    assert not bad, bad


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.usefixtures("fresh_accelerate_state")
@pytest.mark.parametrize("precision,extra", [("fp16", []), ("bf16", ["train.weights_dtype=bfloat16"])])
def test_gpu_training_steps_in_half_precision(tmp_path, capsys, precision, extra):
    """The tiny recipe (every loss, the CLIP teacher) for two steps on the GPU: fp16 runs under accelerate's grad
    scaler through the fused kernels' backward, bf16 with bf16 weights and AdamW moments (the official stage 1);
    finite losses, and a final model that loads with finite weights."""
    from vmm.data.synthetic import generate_corpus
    from vmm.train import main
    generate_corpus(tmp_path, num_videos=6, seed=0, size=32, seconds=1.0, workers=1)
    out = tmp_path / "out"
    code = main(["--config", "configs/pretrain/tiny.yaml", "train.progress=False", "data.num_workers=0",
                 f"data.train=[{{'anno': '{tmp_path / 'train.json'}', 'root': '{tmp_path}'}}]",
                 f"train.output_dir={out}", "data.batch_size=3", "schedule.max_steps=2",
                 f"train.precision={precision}", *extra])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-3000:]
    assert "device cuda" in printed.out and f"precision {precision}" in printed.out, printed.out
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(math.isfinite(m[k]) for m in metrics for k in ("loss", "vtc", "vtm", "mlm", "uta")), metrics
    model = vmm.from_pretrained(out / "final")
    assert all(torch.isfinite(p).all() for p in model.parameters())
