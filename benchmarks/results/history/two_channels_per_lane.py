"""Session 8: two channels per lane in the forward scan (FWD_BLOCK_E=64, one warp) against one (32, one warp).
Run from the repository root on a CUDA machine; the log is two_channels_per_lane_h200.log."""
import statistics, sys, time, torch
sys.path.insert(0, "benchmarks")
from encoder_speed import bench, vmm_model, make_video
from vmm.ops import triton_bimamba as tb
print(torch.cuda.get_device_name(0), torch.__version__, flush=True)
DEF = (tb.FWD_BLOCK_E, tb.FWD_WARPS, tb.FWD_MAXNREG)
def setcfg(c):
    tb.FWD_BLOCK_E, tb.FWD_WARPS, tb.FWD_MAXNREG = c
g = torch.Generator(device="cuda").manual_seed(0)
def inputs(Bsz, L, E=1152, N=16, dt=torch.bfloat16, grad=False):
    r = lambda *s, scale=1.0: torch.randn(*s, device="cuda", generator=g) * scale
    xs = [r(Bsz, L, E).to(dt) for _ in range(5)] + [r(Bsz, L, N).to(dt) for _ in range(4)]
    A = -torch.exp(r(2, E, N, scale=0.5)); D = r(2, E); bias = r(2, E, scale=0.5) - 1.0
    xs += [A, D, bias]
    if grad:
        xs = [x.requires_grad_() for x in xs]
    return xs
# correctness: outputs and gradients of the new layouts against the default, fp32 and bf16, odd E and L
for dt in (torch.float32, torch.bfloat16):
    for (Bsz, L, E) in [(2, 1569, 1152), (3, 77, 200)]:
        xs = inputs(Bsz, L, E, dt=dt, grad=True)
        res = {}
        for c in [DEF, (64, 1, 168), (64, 1, 216), (128, 2, 216)]:
            setcfg(c)
            y = tb.bimamba_scan(*xs)
            gr = torch.autograd.grad(y.float().square().sum(), xs)
            res[c] = (y.float(), [x.float() for x in gr])
        setcfg(DEF)
        y0, g0 = res[DEF]
        for c, (y, gg) in res.items():
            ey = float((y - y0).abs().max() / y0.abs().max())
            eg = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) for a, b in zip(gg, g0))
            print(f"check {dt} B={Bsz} L={L} E={E} cfg={c}: out rel {ey:.1e} grads rel {eg:.1e}", flush=True)
CFGS = [DEF, (64, 1, 168), (64, 1, 184), (64, 1, 216), (64, 1, 255), (128, 2, 216), (64, 2, 168)]
with torch.no_grad():
    for (Bsz, L) in [(32, 1569), (64, 1569), (64, 3137), (16, 12545)]:
        xs = inputs(Bsz, L)
        t = {c: [] for c in CFGS}
        for order in (CFGS, CFGS[::-1], CFGS):
            for c in order:
                setcfg(c); t[c].append(bench(lambda: tb.bimamba_scan(*xs), warmup=3, min_reps=10, budget_s=1.0))
        setcfg(DEF)
        print(f"scan B={Bsz} L={L}: " + "; ".join(f"{c}: " + "/".join(f"{v:.3f}" for v in t[c]) for c in CFGS), flush=True)
        del xs; torch.cuda.empty_cache()
best = [DEF, (64, 1, 168), (64, 1, 216)]
for size, frames in [("m", 8), ("m", 16), ("m", 64), ("s", 8), ("ti", 16)]:
    B = 64
    model = vmm_model(size, frames).cuda().eval()
    video = make_video(B, frames)
    def fwd():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            return model(video)
    t = {c: [] for c in best}
    for order in (best, best[::-1]):
        for c in order:
            setcfg(c); t[c].append(B * 1000.0 / bench(fwd, warmup=1, min_reps=3, max_reps=10, budget_s=3.0))
    setcfg(DEF)
    print(f"encoder {size} {frames}f B={B} clips/s: " + "; ".join(f"{c}: " + "/".join(f"{v:.1f}" for v in t[c]) for c in best), flush=True)
    del model, video; torch.cuda.empty_cache()
