"""CPU encoder benchmark: one 8x224x224 clip through VideoMamba-Ti and -M, fp32, on this machine's cores.

Targets (issue 2): Ti <= 1.5 s, M <= 6 s per clip on a 2-core CPU. The baseline, run in the same process, is
the same model with the scan replaced by the official reference's algorithm (materialise exp(delta A) for the
whole sequence, then a per-token Python loop: mamba-ssm's ``selective_scan_ref``), so the ratio isolates what
vmm's reference scan buys.

    python benchmarks/cpu_encoder.py                 # Ti and M, baseline for Ti
    python benchmarks/cpu_encoder.py --baseline videomamba_tiny videomamba_middle --repeats 3

Each model runs ``--repeats`` rounds of the reference scan (in turn with the naive loop for the ``--baseline``
models), after a warm-up of each; rows give the median with the min and max, and the file the load average. Writes
benchmarks/results/cpu_encoder.json, or --out.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import torch

import vmm
from common import cpu_name, output_path, parser, positive_int, run, write_result
from scan_cpu import naive_per_token_scan
from vmm.errors import VmmError
from vmm.ops.selective_scan import register_backend, unregister_backend

TARGETS_S = {"videomamba_tiny": 1.5, "videomamba_middle": 6.0}


def timings(model, x, backends: list[str], repeats: int) -> dict[str, list[float]]:
    """Seconds per clip of ``model`` with each scan backend: one warm-up each, then ``repeats`` rounds that run
    every backend once in turn. The baseline was one timing taken after all of the candidate's, so a load that
    changed meanwhile (the development machines are shared) went into the ratio, with no spread to show it."""
    times = {backend: [] for backend in backends}
    with torch.inference_mode():
        for backend in backends:
            model.set_scan_backend(backend)
            model(x)
        for _ in range(repeats):
            for backend in backends:
                model.set_scan_backend(backend)
                t0 = time.perf_counter()
                model(x)
                times[backend].append(time.perf_counter() - t0)
    return times


def spread(times: list[float]) -> dict:
    return {"median": round(statistics.median(times), 3), "min": round(min(times), 3), "max": round(max(times), 3)}


def main() -> None:
    ap = parser(__file__, __doc__)
    ap.add_argument("--models", nargs="+", default=["videomamba_tiny", "videomamba_middle"])
    ap.add_argument("--baseline", nargs="*", default=None,
                    help="models also timed with the naive scan [videomamba_tiny when timed]")
    ap.add_argument("--repeats", type=positive_int, default=3, help="timed rounds of each scan [3]")
    ap.add_argument("--threads", type=positive_int, default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu_encoder.json"))
    args = ap.parse_args()
    args.out = output_path(ap, args.out)
    # Checked before any timing: an unknown name was a traceback after the models before it had run, and a
    # --baseline name outside --models (the docstring's "tiny middle") silently timed no baseline.
    for name in args.models:
        if name not in vmm.list_models():
            ap.error(f"argument --models: unknown model {name!r}; e.g. videomamba_tiny or videomamba_middle")
    if args.baseline is None:
        args.baseline = [name for name in args.models if name == "videomamba_tiny"]
    for name in args.baseline:
        if name not in args.models:
            ap.error(f"argument --baseline: {name!r} is not one of --models ({' '.join(args.models)}); "
                     f"name the models to time with the naive scan as --models names them")
    # Built before any timing too: a registered text-video model (vmm_nano, videomamba_m16_25m) takes no
    # num_frames or img_size of its own, and was a traceback after the models before it had run.
    models = {}
    for name in args.models:
        try:
            models[name] = vmm.create_model(name, num_frames=8, img_size=224).eval()
        except VmmError as error:
            ap.error(f"argument --models: {name!r} cannot be built as a video encoder of 8x224x224 clips ({error}); "
                     f"name a video model, e.g. videomamba_tiny or videomamba_middle_vision")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 224, 224)
    register_backend("naive_loop", naive_per_token_scan, available=lambda t: True, priority=-100)
    load_before = os.getloadavg()[0]
    rows = []
    try:
        for name, model in models.items():
            times = timings(model, x, ["reference", "naive_loop"] if name in args.baseline else ["reference"],
                            args.repeats)
            fast = spread(times["reference"])
            target = TARGETS_S.get(name)
            row = {"model": name, "seconds": fast["median"], "seconds_min": fast["min"], "seconds_max": fast["max"],
                   "target_s": target,
                   "meets_target": None if target is None else fast["median"] <= target}  # no target is not one met
            if "naive_loop" in times:
                base = spread(times["naive_loop"])
                row.update(baseline_seconds=base["median"], baseline_seconds_min=base["min"],
                           baseline_seconds_max=base["max"],
                           speedup_vs_naive=round(statistics.median(times["naive_loop"])
                                                  / statistics.median(times["reference"]), 2))
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        unregister_backend("naive_loop")
    result = {"cpu": cpu_name(), "logical_cores": os.cpu_count(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "input": "1x3x8x224x224 fp32", "date": time.strftime("%Y-%m-%d %H:%M"),
              "load_average_1min": [load_before, os.getloadavg()[0]],
              "timing": f"median (min, max) of {args.repeats} interleaved rounds after one warm-up each, s per clip",
              "rows": rows}
    write_result(args.out, json.dumps(result, indent=2) + "\n")
    print(f"\n{result['cpu']} ({result['logical_cores']} logical cores), {result['threads']} threads, "
          f"torch {result['torch']}, load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"{'model':<20}{'s/clip':>8}{'min-max':>13}{'target':>8}{'naive s':>9}{'speedup':>9}")
    for r in rows:
        print(f"{r['model']:<20}{r['seconds']:>8.2f}{r['seconds_min']:>7.2f}-{r['seconds_max']:<5.2f}"
              f"{r['target_s'] or float('nan'):>8.1f}"
              f"{r.get('baseline_seconds', float('nan')):>9.2f}{r.get('speedup_vs_naive', float('nan')):>9.2f}")


if __name__ == "__main__":
    run(main)
