"""CPU timing of vmm's reference selective scan at VideoMamba-Ti and -M layer shapes, against the naive
per-token loop (mamba-ssm's ``selective_scan_ref`` algorithm) in the same process.

One call is one (layer, direction) of one 8x224x224 clip: batch 1, L = 1569, N = 16, E = 384 (Ti) or 1152 (M),
with D, the z gate, delta_bias and softplus, fp32. Targets (issue 2): <= 15 ms (Ti) and <= 50 ms (M) per call
on a 2-core CPU, so that the whole encoder fits 1.5 s / 6 s.

    PYTHONPATH=. python benchmarks/scan_cpu.py                 # 2 threads, writes benchmarks/results/scan_cpu.json
    PYTHONPATH=. python benchmarks/scan_cpu.py --threads 1 --rounds 5 --out /tmp/scan_cpu.json

Timings are the minimum over interleaved rounds (fast and naive alternate), since the development machines are
shared and a minimum is the least disturbed reading; the median and the load average are recorded too. On a
machine that other jobs keep busy, OpenMP's spinning barriers make every multi-threaded op wait for a descheduled
thread; ``OMP_WAIT_POLICY=PASSIVE`` avoids most of that (see docs/kernels.md).
"""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import cpu_name, output_path, parser, positive_int, run, write_result
from vmm.ops import selective_scan_ref

SHAPES = {"videomamba_tiny": dict(E=384, depth=24, target_ms=15.0),
          "videomamba_middle": dict(E=1152, depth=32, target_ms=50.0)}
L, N = 1569, 16


def naive_per_token_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, reverse=False):
    """The official reference algorithm: materialise exp(delta A) and delta B u as (B, E, L, N), then loop over
    positions with one small einsum each."""
    dtype = u.dtype
    u, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    dA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A.float()))
    dBu = torch.einsum("bdl,bnl,bdl->bdln", delta, B.float(), u)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = [None] * u.shape[2]
    for t in (range(u.shape[2] - 1, -1, -1) if reverse else range(u.shape[2])):
        h = dA[:, :, t] * h + dBu[:, :, t]
        ys[t] = torch.einsum("bdn,bn->bd", h, C[:, :, t].float())
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype)


def layer_inputs(E: int, seed: int = 0) -> dict:
    """Magnitudes like a trained layer: A = -exp(A_log) with A_log = log(1..N), small dt bias, softplus steps."""
    g = torch.Generator().manual_seed(seed)
    return dict(u=torch.randn(1, E, L, generator=g), delta=torch.randn(1, E, L, generator=g) * 0.5 - 1.0,
                A=-torch.arange(1, N + 1, dtype=torch.float32).repeat(E, 1),
                B=torch.randn(1, N, L, generator=g), C=torch.randn(1, N, L, generator=g),
                D=torch.ones(E), z=torch.randn(1, E, L, generator=g), delta_bias=torch.randn(E, generator=g) * 0.1,
                delta_softplus=True)




def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def bench_shape(name: str, rounds: int, naive_every: int) -> dict:
    spec = SHAPES[name]
    kw = layer_inputs(spec["E"])
    fast = {False: [], True: []}
    naive = []
    with torch.no_grad():
        for reverse in (False, True):
            selective_scan_ref(**kw, reverse=reverse)  # warm-up
        want = naive_per_token_scan(**kw)
        err = ((selective_scan_ref(**kw) - want).abs().max() / want.abs().max()).item()
        for r in range(rounds):
            for reverse in (False, True):
                fast[reverse].append(timed(lambda: selective_scan_ref(**kw, reverse=reverse)))
            if r % naive_every == 0:
                naive.append(timed(lambda: naive_per_token_scan(**kw)))
    return summary(name, fast, naive, err)


def summary(name: str, fast: dict, naive: list, err: float) -> dict:
    """The row of one shape from its timings (ms): ``fast`` maps reverse (bool) to the reference scan's, ``naive``
    holds the forward naive loop's. Every layer runs both directions, so the target and the encoder total take
    both, and the speedup compares forward with forward: the faster direction alone flattered all three."""
    spec = SHAPES[name]
    fwd, rev = min(fast[False]), min(fast[True])
    return {"model": name, "channels": spec["E"], "length": L, "state": N, "batch": 1,
            "ms_per_call_forward": round(fwd, 2), "ms_per_call_reverse": round(rev, 2),
            "median_ms_forward": round(statistics.median(fast[False]), 2),
            "median_ms_reverse": round(statistics.median(fast[True]), 2),
            "naive_ms_per_call": round(min(naive), 1), "naive_median_ms": round(statistics.median(naive), 1),
            "naive_calls": len(naive), "speedup_vs_naive": round(min(naive) / fwd, 1),
            "target_ms": spec["target_ms"], "meets_target": max(fwd, rev) <= spec["target_ms"],
            "encoder_scan_ms": round((fwd + rev) * spec["depth"], 1), "scan_calls_per_clip": 2 * spec["depth"],
            "max_rel_err_vs_naive": float(f"{err:.2e}")}


def main() -> None:
    ap = parser(__file__, __doc__)
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--rounds", type=positive_int, default=15)
    ap.add_argument("--naive-every", type=positive_int, default=5, help="time the slow baseline every Nth round")
    ap.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "scan_cpu.json"))
    args = ap.parse_args()
    args.out = output_path(ap, args.out)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    rows = []
    for name in args.models:
        row = bench_shape(name, args.rounds, args.naive_every)
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M"), "load_average_1min": [load_before, os.getloadavg()[0]],
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "nice": os.nice(0),
              "timing": "min over interleaved rounds, ms per call, fp32, no grad", "rows": rows}
    write_result(args.out, json.dumps(result, indent=2) + "\n")
    print(f"\n{result['cpu']}, {result['threads']} threads, torch {result['torch']}, "
          f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"{'model':<19}{'fwd ms':>8}{'rev ms':>8}{'target':>8}{'naive ms':>10}{'speedup':>9}{'x calls ms':>12}")
    for r in rows:
        print(f"{r['model']:<19}{r['ms_per_call_forward']:>8.2f}{r['ms_per_call_reverse']:>8.2f}"
              f"{r['target_ms']:>8.0f}{r['naive_ms_per_call']:>10.1f}{r['speedup_vs_naive']:>8.1f}x"
              f"{r['encoder_scan_ms']:>12.0f}")


if __name__ == "__main__":
    run(main)
