"""Session 7: the gated out projection (fused) against the gated-sum pass + cuBLAS out_proj, same process."""
import statistics, sys, torch, triton
import torch.nn.functional as F
import vmm.ops.triton_out_proj as op
from vmm.ops.triton_bimamba import _gated_sum_kernel

def bench(fn, reps=20):
    for _ in range(3): fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(True), torch.cuda.Event(True)
        a.record(); fn(); b.record(); torch.cuda.synchronize(); ts.append(a.elapsed_time(b))
    return statistics.median(ts)

print(torch.cuda.get_device_name(0), triton.__version__)
BEST = {}
configs = [(64,32,8,3),(64,64,8,2),(64,32,8,2),(64,32,8,4),(64,64,8,3),(64,16,8,4),(128,32,16,2),(32,64,4,3)]
for (B,L,E,D) in [(64,1569,1152,576),(64,1569,768,384),(64,1569,384,192)]:
    g = torch.Generator(device="cuda").manual_seed(0)
    y2 = torch.randn(2,B,L,E, device="cuda", dtype=torch.bfloat16, generator=g)
    xz = torch.randn(B,L,2*E, device="cuda", dtype=torch.bfloat16, generator=g)
    z = xz[..., E:]
    w = (torch.randn(D,E, device="cuda", generator=g) / E**0.5).bfloat16()
    total = torch.empty(B,L,E, device="cuda", dtype=torch.bfloat16)
    def gsum():
        _gated_sum_kernel[(triton.cdiv(L,16), triton.cdiv(E,256), B)](y2, z, total, L, E, y2.stride(0), z.stride(0), z.stride(1),
            BLOCK_L=16, BLOCK_E=256, INTERP=False, num_warps=4)
    def base():
        gsum(); return F.linear(total, w)
    ref = base().float()
    tb = bench(base); tg = bench(gsum); tl_ = bench(lambda: F.linear(total, w))
    print(f"\nB={B} L={L} E={E} D={D}: gated sum + cuBLAS {tb:.3f} ms (gated sum {tg:.3f}, linear {tl_:.3f})")
    res = []
    for cfg in configs:
        op.BLOCK_M, op.BLOCK_K, op.WARPS, op.STAGES = cfg
        try:
            out = op.gated_out_proj(y2, z, w)
            err = float((out.float()-ref).abs().max() / ref.abs().max())
            t = bench(lambda: op.gated_out_proj(y2, z, w))
            k = list(op._gated_out_proj_kernel.device_caches[0][0].values())[-1] if hasattr(op._gated_out_proj_kernel, "device_caches") else None
            regs = getattr(k, "n_regs", "?"); spills = getattr(k, "n_spills", "?")
            res.append((t, cfg))
            print(f"  fused {cfg}: {t:.3f} ms  ratio {tb/t:.2f}  err {err:.1e}  regs {regs} spills {spills}", flush=True)
        except Exception as e:
            print(f"  fused {cfg}: failed {type(e).__name__}: {str(e)[:200]}", flush=True)
    if res:
        best = min(res)[1]; op.BLOCK_M, op.BLOCK_K, op.WARPS, op.STAGES = best
        ab = [(bench(base), bench(lambda: op.gated_out_proj(y2, z, w))) for _ in range(3)]
        print(f"  ABAB best {best}: " + ", ".join(f"{a:.3f}/{b:.3f}" for a, b in ab))
        BEST[(E, D)] = best


# -- whole encoder, fused out_proj on/off, ABAB, same process ------------------------------------------------
sys.path.insert(0, "benchmarks")
from encoder_speed import vmm_model, encoder_throughput
from vmm.ops import triton_bimamba as tb
cfg = BEST.get((1152, 576), (64, 32, 8, 3))
op.BLOCK_M, op.BLOCK_K, op.WARPS, op.STAGES = cfg
print("\nencoder with out_proj config", cfg)
for size, T in (("m", 8), ("m", 16), ("s", 8), ("m", 64)):
    model = vmm_model(size, T).cuda().eval()
    video = torch.randn(4, 3, T, 224, 224, device="cuda")
    outs = {}
    for fused in (True, False):
        tb.FUSED_OUT_PROJ = fused
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            outs[fused] = model(video).float()
    err = float((outs[True] - outs[False]).norm() / outs[False].norm())
    rows = []
    for rep in range(2):
        for fused in (False, True):
            tb.FUSED_OUT_PROJ = fused
            r = encoder_throughput(model, 64, T, 5.0)
            rows.append((fused, r["clips_per_s"], r["peak_mem_gib"]))
    print(f"VideoMamba-{size.upper()} {T}f B=64: " + ", ".join(f"{'fused' if f else 'separate'} {c:.1f} ({m:.1f} GiB)" for f, c, m in rows) + f"; feature rel diff {err:.1e}", flush=True)
    model = None; torch.cuda.empty_cache()
tb.FUSED_OUT_PROJ = True
