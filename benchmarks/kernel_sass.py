"""Instructions per scan step of the fused kernels, from a local sm_90 compile: no GPU needed.

The scan loops are bound by issue slots, the MUFU pipe and latency, so the SASS count of a loop body (and
its MUFU count) is the quickest check of a change before spending GPU time. Compiles ``_bimamba_fwd_kernel``
and ``_bimamba_bwd_kernel`` for sm_90 with the library's settings (Triton's bundled ptxas), disassembles them
with the bundled ``nvdisasm``, finds the loops (backward branches) and prints each body's instruction count
with its most frequent opcodes, plus the registers and stack per thread::

    python benchmarks/kernel_sass.py            # both scan kernels and the windowed conv kernels
    python benchmarks/kernel_sass.py --kernel fwd --tile 2 --maxnreg 96
"""
from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from common import non_negative_int, parser, positive_int, run  # noqa: E402
from vmm.ops import triton_bimamba as tb  # noqa: E402
from vmm.ops import triton_conv as tc  # noqa: E402

NV_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
BF16_ARGS = {"uf_ptr", "ub_ptr", "dtf_ptr", "dtb_ptr", "z_ptr", "out_ptr", "g_ptr", "duf_ptr", "dub_ptr",
             "ddtf_ptr", "ddtb_ptr", "dz_ptr", "x_ptr", "of_ptr", "ob_ptr", "gf_ptr", "gb_ptr", "dx_ptr"}
# Integer arguments that are multiples of 16 at VideoMamba-M shapes, so Triton specialises them as such.
DIV16_ARGS = {"E", "s_ub", "s_zb", "s_bfb", "s_bfl", "s_bbb", "s_bbl", "s_ob", "s_ol", "s_od", "s_dzd", "s_xb",
              "s_xl", "s_gb", "s_gl", "s_db", "s_dl"}


def compile_sm90(kernel, constexprs: dict, options: dict):
    names = list(kernel.arg_names)
    signature, attrs = {}, {}
    for i, name in enumerate(names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*bf16" if name in BF16_ARGS else "*fp32"
        else:
            signature[name] = "i32"
        if (name.endswith("_ptr") or name in DIV16_ARGS) and name not in kernel.do_not_specialize:
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=kernel, signature=signature, attrs=attrs,
                    constexprs={(names.index(k),): v for k, v in constexprs.items()})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


def loop_bodies(sass: str) -> list[tuple[str, list[str]]]:
    """(label, instructions) of every loop: the code from a label to a branch back to it."""
    ins, label_at, loops = [], {}, []
    for line in sass.splitlines():
        s = line.strip()
        m = re.match(r"\.(L_x_\d+):", s)
        if m:
            label_at[m.group(1)] = len(ins)
            continue
        m = re.match(r"/\*[0-9a-f]{4,}\*/\s+(.*?)\s*;", s)
        if m:
            ins.append(m.group(1))
    for i, text in enumerate(ins):
        m = re.search(r"BRA\s+`\(\.(L_x_\d+)\)", text)
        if m and label_at.get(m.group(1), i + 1) < i:
            loops.append((m.group(1), ins[label_at[m.group(1)]: i + 1]))
    return loops


def report(name: str, compiled) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        sass = subprocess.run([str(NV_BIN / "nvdisasm"), "-c", str(cubin)], capture_output=True, text=True).stdout
        usage = subprocess.run([str(NV_BIN / "cuobjdump"), "--dump-resource-usage", str(cubin)],
                               capture_output=True, text=True).stdout
    regs = re.search(r"REG:(\d+)", usage)
    stack = re.search(r"STACK:(\d+)", usage)
    print(f"{name}: {regs.group(1) if regs else '?'} registers, stack {stack.group(1) if stack else '?'} bytes")
    for label, body in loop_bodies(sass):
        ops = collections.Counter((t.split()[1] if t.startswith("@") else t.split()[0]).split(".")[0] for t in body)
        top = ", ".join(f"{op} {n}" for op, n in ops.most_common(10))
        print(f"  loop {label}: {len(body)} instructions ({top})")
    # Values each loop carries from one iteration to the next (Triton IR). Triton carries a name only if the
    # loop body gives it a new value, which the interpreter cannot check: a register window whose slots start
    # as one tensor loses its shifts (the first windowed conv backward did).
    loops = re.findall(r"iter_args\((.*?)\) ->", compiled.asm["ttir"])
    carried = [len(re.findall(r"%[\w.]+ = ", args)) for args in loops]
    print(f"  loops carry {carried} values")


def _tile(text: str) -> int:
    value = non_negative_int(text)
    if value & (value - 1):  # the kernel's tl.arange over a tile: a Triton CompilationError traceback before
        raise argparse.ArgumentTypeError(f"{text!r} is not 0 (one step at a time) or a power of two")
    return value


def main(argv=None) -> None:
    p = parser(__file__, __doc__)
    p.add_argument("--kernel", choices=["fwd", "bwd", "conv", "all"], default="all")
    p.add_argument("--tile", type=_tile, default=tb.FWD_TILE, help="forward steps per tile (FWD_TILE)")
    p.add_argument("--maxnreg", type=non_negative_int, default=tb.FWD_MAXNREG,
                   help="forward register cap (FWD_MAXNREG; 0: none)")
    p.add_argument("--pfbc", type=non_negative_int, default=tb.FWD_PREFETCH_BC,
                   help="forward B/C L1 prefetch (FWD_PREFETCH_BC)")
    p.add_argument("--ck", type=positive_int, default=tb.BWD_CK, help="backward checkpoint interval (BWD_CK)")
    args = p.parse_args(argv)
    if args.kernel in ("fwd", "all"):
        fwd = compile_sm90(tb._bimamba_fwd_kernel,
                           {"N": 16, "BLOCK_E": tb.FWD_BLOCK_E, "TILE": args.tile, "SAVE": False, "CK": args.ck,
                            "GATE": tb.FWD_GATE_IN_SCAN, "PF": tb.FWD_PREFETCH, "PFBC": args.pfbc,
                            "INTERP": False},
                           # 0 is no cap, as the library launches it (ptxas refused a cap of 0)
                           {"num_warps": tb.FWD_WARPS, **({"maxnreg": args.maxnreg} if args.maxnreg else {})})
        report(f"_bimamba_fwd_kernel (tile {args.tile}: a loop body is {args.tile} steps of one direction)", fwd)
    if args.kernel in ("bwd", "all"):
        bwd = compile_sm90(tb._bimamba_bwd_kernel,
                           {"N": 16, "CK": args.ck, "BLOCK_E": tb.BWD_BLOCK_E, "SHFL": tb._bwd_shfl(16),
                            "PF": tb.BWD_PREFETCH, "INTERP": False},
                           {"num_warps": tb.BWD_WARPS, **({"maxnreg": tb.BWD_MAXNREG} if tb.BWD_MAXNREG else {})})
        report("_bimamba_bwd_kernel (per direction: the recompute step, the adjoint step, the chunk loop)", bwd)
    if args.kernel in ("conv", "all"):
        fast = {"HAS_BIAS": True, "FAST": True}
        cf = compile_sm90(tc._conv_bidir_rows_kernel, {**fast, "ROWS": tc.CONV_ROWS, "BLOCK_E": tc.CONV_ROWS_BLOCK_E},
                          {"num_warps": tc.CONV_ROWS_WARPS})
        report(f"_conv_bidir_rows_kernel (a loop body is one row of {tc.CONV_ROWS_BLOCK_E} channels)", cf)
        cb = compile_sm90(tc._conv_bidir_bwd_rows_kernel,
                          {**fast, "HAS_DX": True, "ROWS": tc.CONV_BWD_ROWS, "BLOCK_E": tc.CONV_BWD_BLOCK_E},
                          {"num_warps": tc.CONV_BWD_WARPS})
        report(f"_conv_bidir_bwd_rows_kernel (a loop body is one row of {tc.CONV_BWD_BLOCK_E} channels)", cb)


if __name__ == "__main__":
    run(main)
