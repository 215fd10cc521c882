"""Session 9: do micro-batches on separate CUDA streams overlap the MUFU-bound scan of one with the GEMMs and
memory-bound kernels of another? Same process, same model, ABAB. Run from the repository root on a CUDA machine
(``python3 benchmarks/results/history/stream_microbatches.py 8 16``); the log is stream_microbatches_h100.log.

The k=4 stream runs differ from the reference, most likely because autocast casts each fp32 weight on the first stream that uses
it and the other streams read the cached bf16 copy without waiting for the cast (a real implementation would
cast the weights before forking the streams); the k=2 runs happened to match bit for bit."""
import statistics
import sys
import time

import torch

sys.path.insert(0, ".")
import vmm  # noqa: E402
from vmm.ops import triton_bimamba as tb  # noqa: E402
from vmm.ops.bimamba import bimamba_inner_xz  # noqa: E402


def bench(fn, budget=1.5, reps_max=15):
    fn(); torch.cuda.synchronize()
    ts, t0 = [], time.perf_counter()
    while len(ts) < 3 or (time.perf_counter() - t0 < budget and len(ts) < reps_max):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); b.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def run_full(model, video):
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        return model(video)


def layer_pre(layer, hidden, residual):
    if residual is not None:
        hidden = layer.drop_path(hidden)
    normed, residual = layer.norm.add_forward(hidden, residual, backend=layer.mixer.scan_backend)
    return layer.mixer.in_proj(normed).transpose(1, 2), residual


def layer_mid(layer, xz):
    m = layer.mixer
    return bimamba_inner_xz(xz, m.direction_weights(False), m.direction_weights(True), backend=m.scan_backend)


def layer_post(layer, y):
    return layer.mixer.out_proj(y.transpose(1, 2))


STREAMS = {}


def run_streams(model, video, k, offset):
    """k micro-batches on k streams, kernels issued layer by layer; stream j>0 starts after stream j-1 has
    finished `offset` ('none', 'pre' = its first in_proj, 'scan' = its first scan, 'layer' = its first layer)."""
    cur = torch.cuda.current_stream()
    streams = STREAMS.setdefault(k, [torch.cuda.Stream() for _ in range(k)])
    chunks = video.chunk(k)
    outs = [None] * k
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for s in streams:
            s.wait_stream(cur)
        state = []
        for j in range(k):
            with torch.cuda.stream(streams[j]):
                state.append([model.embed(chunks[j]), None])
        start_ev = [None] * k
        for i, layer in enumerate(model.layers):
            for j in range(k):
                with torch.cuda.stream(streams[j]):
                    if i == 0 and j > 0 and offset != "none":
                        streams[j].wait_event(start_ev[j - 1])
                    h, r = state[j]
                    xz, r = layer_pre(layer, h, r)
                    if i == 0 and offset == "pre":
                        start_ev[j] = torch.cuda.Event(); start_ev[j].record()
                    y = layer_mid(layer, xz)
                    if i == 0 and offset == "scan":
                        start_ev[j] = torch.cuda.Event(); start_ev[j].record()
                    state[j] = [layer_post(layer, y), r]
                    if i == 0 and offset == "layer":
                        start_ev[j] = torch.cuda.Event(); start_ev[j].record()
        for j in range(k):
            with torch.cuda.stream(streams[j]):
                h, r = state[j]
                outs[j] = model.forward_head(model.final_norm(h[:, :1], r[:, :1])[:, 0])
        for s in streams:
            cur.wait_stream(s)
    return torch.cat(outs)


def run_seq_chunks(model, video, k):
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        return torch.cat([model(c) for c in video.chunk(k)])


def main():
    print(torch.cuda.get_device_name(), flush=True)
    frames = [int(a) for a in sys.argv[1:]] or [8, 16]
    for T in frames:
        B = 64
        model = vmm.create_model("videomamba_middle", num_frames=T, num_classes=0, scan_backend="triton").cuda().eval()
        video = torch.randn(B, 3, T, 224, 224, device="cuda", dtype=torch.bfloat16)
        ref = run_full(model, video).float()
        variants = {"full": lambda: run_full(model, video)}
        for k in (2, 4):
            variants[f"seq{k}"] = lambda k=k: run_seq_chunks(model, video, k)
            for off in ("none", "pre", "scan", "layer"):
                if k == 4 and off in ("pre", "layer"):
                    continue
                variants[f"str{k}_{off}"] = lambda k=k, off=off: run_streams(model, video, k, off)
        for name, fn in variants.items():
            out = fn().float()
            err = ((out - ref).abs().max() / ref.abs().max()).item()
            print(f"T={T} check {name}: max rel diff {err:.2e}", flush=True)
        res = {n: [] for n in variants}
        for rep in range(2):
            for name, fn in (variants.items() if rep == 0 else reversed(list(variants.items()))):
                res[name].append(bench(fn))
        base = statistics.median(res["full"])
        for name, ms in res.items():
            m = statistics.median(ms)
            print(f"T={T} B={B} {name:14s} {' '.join(f'{x:7.2f}' for x in ms)} ms  {B * 1000 / m:7.1f} clips/s  "
                  f"x{base / m:.3f}", flush=True)
        del model, video
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
