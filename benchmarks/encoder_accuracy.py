"""bf16 accuracy of the GPU encoder paths, same weights: VideoMamba-M CLS features against the fp32 reference
backend (the pure-PyTorch scan, the port that reproduces the official golden fixtures).

    python benchmarks/encoder_accuracy.py --out benchmarks/results      # about 30 s on an H100/H200

Rows: our fused path in fp32 and in bf16 autocast (the SiLU gate after the add of both directions, the
default, and inside each direction's scan, the official order), the official-style path (mamba-ssm's
selective scan, causal-conv1d when installed) in fp32 and bf16 with the same weights, and the reference
backend under bf16 autocast. Writes ``encoder_accuracy.json`` and ``encoder_accuracy.md`` to ``--out``.
Needs a CUDA GPU and, for the official-style rows, mamba-ssm's ``selective_scan_cuda``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import encoder_speed as es  # noqa: E402
from common import cpu_name, output_path, parser, positive_int, run, write_result  # noqa: E402
import vmm  # noqa: E402
from vmm.ops import triton_bimamba  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def main(argv=None) -> None:
    p = parser(__file__, __doc__)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--frames", type=positive_int, default=8)
    p.add_argument("--batch", type=positive_int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.out = output_path(p, args.out, folder=True)
    if not torch.cuda.is_available():
        # a usage error as the other scripts' (one `error:` line, status 2), not a bare line and status 1
        p.error("encoder_accuracy.py needs a CUDA GPU (torch.cuda.is_available() is False on this host)")
    torch.manual_seed(args.seed)
    model = vmm.create_model("videomamba_middle", num_frames=args.frames, num_classes=0).cuda().eval()
    video = torch.randn(args.batch, 3, args.frames, 224, 224, device="cuda")

    default_gate = triton_bimamba.FWD_GATE_IN_SCAN

    def run(m, bf16: bool, backend=None, gate_in_scan=default_gate) -> torch.Tensor:
        if hasattr(m, "set_scan_backend"):
            m.set_scan_backend(backend)
        triton_bimamba.FWD_GATE_IN_SCAN = gate_in_scan
        try:
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                return m(video).float()
        finally:
            triton_bimamba.FWD_GATE_IN_SCAN = default_gate

    ref = run(model, False, "reference")
    rows = {
        "fused, fp32": run(model, False),
        "fused, bf16 (gate after the add: default)": run(model, True, None, False),
        "fused, bf16 (gate in each scan: official order)": run(model, True, None, True),
        "reference backend, bf16 autocast": run(model, True, "reference"),
    }
    if es.selective_scan_cuda is not None:
        official = es.OfficialVideoMamba(576, 32, args.frames).cuda().eval()
        official.load_state_dict(es.official_state_dict(model.state_dict()))
        rows["official-style (mamba-ssm), fp32"] = run(official, False)
        rows["official-style (mamba-ssm), bf16"] = run(official, True)
    errors = {name: rel(v, ref) for name, v in rows.items()}
    res = {"gpu": torch.cuda.get_device_name(), "cpu": cpu_name(), "torch": torch.__version__, "frames": args.frames,
           "batch": args.batch, "causal_conv1d": es.causal_conv1d_fn is not None,
           "rel_error_vs_fp32_reference": errors}
    if "official-style (mamba-ssm), bf16" in rows:
        off = rows["official-style (mamba-ssm), bf16"]
        res["fused_bf16_vs_official_bf16"] = {name: rel(rows[name], off) for name in list(rows)[1:3]}
    lines = [f"# Encoder accuracy on {res['gpu']}", "",
             f"VideoMamba-M CLS features, {args.frames} x 224 x 224, batch {args.batch}, random weights (seed "
             f"{args.seed}); relative error (L2) against the fp32 reference backend, same weights.", "",
             "| path | relative error |", "|---|---|"]
    lines += [f"| {name} | {e:.2e} |" for name, e in errors.items()]
    for name, e in res.get("fused_bf16_vs_official_bf16", {}).items():
        lines.append(f"| {name} vs official-style bf16 | {e:.2e} |")
    print("\n".join(lines))  # first: a write error below says the numbers are printed above
    write_result(args.out / "encoder_accuracy.json", json.dumps(res, indent=1))
    write_result(args.out / "encoder_accuracy.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    run(main)
