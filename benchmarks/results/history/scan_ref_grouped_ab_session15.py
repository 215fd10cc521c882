# Session 15: the reference scan before (36fe76f^, /tmp/ss_old.py from `git show 36fe76f^:vmm/ops/selective_scan.py`) and after
# grouped B/C support, interleaved in one process, min of 10 rounds each, fp32, 2 threads, no grad.
import importlib.util, sys, time, torch
sys.path.insert(0, "/work/main")
torch.set_num_threads(2)
import importlib; new = importlib.import_module("vmm.ops.selective_scan")
spec = importlib.util.spec_from_file_location("vmm.ops.selective_scan_old", "/tmp/ss_old.py")
old = importlib.util.module_from_spec(spec); sys.modules[spec.name] = old; spec.loader.exec_module(old)
g = torch.Generator().manual_seed(0)
for E in (384, 1152):
    L, N = 1569, 16
    u, dt, z = (torch.randn(1, E, L, generator=g) for _ in range(3))
    A = -torch.rand(E, N, generator=g) - 0.5
    B, C = torch.randn(1, N, L, generator=g), torch.randn(1, N, L, generator=g)
    D, bias = torch.ones(E), torch.zeros(E)
    kw = dict(D=D, z=z, delta_bias=bias, delta_softplus=True)
    res = {"old": [], "new": []}
    with torch.no_grad():
        for r in range(20):
            for name, mod in (("old", old), ("new", new)) if r % 2 else (("new", new), ("old", old)):
                t = time.perf_counter(); y = mod.selective_scan_ref(u, dt, A, B, C, **kw); res[name].append(time.perf_counter() - t)
        yo, yn = old.selective_scan_ref(u, dt, A, B, C, **kw), new.selective_scan_ref(u, dt, A, B, C, **kw)
    mo, mn = min(res["old"]) * 1e3, min(res["new"]) * 1e3
    print(f"E={E}: old {mo:.2f} ms, new {mn:.2f} ms, new/old {mn/mo:.3f}, max diff {(yo-yn).abs().max().item():.1e}")
