"""Training throughput (samples/s) of the pretraining step, on 1 and N processes (scaling efficiency).

Measures exactly the step of ``vmm.train`` (``vmm.training.loop.micro_step``: CLIP teacher + attention mask
for stage 1, forward of every loss, backward, AdamW update, DDP all-reduce under ``accelerate launch``) on
synthetic in-memory batches, so decoding speed does not enter the number. Each (model, stage, processes)
runs in its own launched job; results and the device name go to one JSON file. With several processes it also
times the steps as ``vmm.train``'s loop feeds them (the processes agree, before each micro-batch, that none has a
data error), ABAB against the plain steps: ``agreed_step_ms`` and ``agreement_cost``.

    # GPU: VideoMamba-M and vmm_nano, stage 1 (masked + CLIP teacher) and 2, on 1 and 2 GPUs
    python benchmarks/train_throughput.py --models videomamba_m16 vmm_nano --stages 1 2 --processes 1 2 \
        --batch-size 32 --out benchmarks/results/train_throughput_gpu.json
    # CPU smoke variant (what runs on a laptop; docs/training.md has the recorded CPU run)
    python benchmarks/train_throughput.py --cpu --models vmm_nano --stages 2 --processes 1 --batch-size 2 \
        --steps 3 --warmup 1 --out /tmp/train_throughput_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import cpu_name, non_negative_int, output_path, parser as make_parser, positive_int, run, write_result

REPO = Path(__file__).resolve().parents[1]

MODELS = {
    # Official VideoMamba-M + BERT-base (random init: throughput does not depend on the values).
    "videomamba_m16": dict(name="videomamba_m16_mm", text={"init_from": None}, freeze=[]),
    # vmm_nano as in configs/pretrain/vmm_nano_synthetic.yaml (frozen MiniLM embeddings + layers 0-3).
    "vmm_nano": dict(name="vmm_nano", text={"init_from": None},
                     freeze=["text_encoder.embeddings", "text_encoder.encoder.layer.0-3"]),
}


def device_name(cpu: bool) -> str:
    import torch
    if not cpu and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU: {cpu_name()} ({os.cpu_count()} logical cores)"


def worker(args) -> None:
    """Runs inside one launched job: build, warm up, time ``--steps`` optimizer steps."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed
    import vmm
    from vmm.training.config import LossSection
    from vmm.training.loop import micro_step
    from vmm.training.objective import PretrainObjective
    from vmm.training.optim import build_optimizer, freeze
    from vmm.training.teacher import ClipTeacher

    spec = MODELS[args.model]
    stage1 = args.stage == 1
    loss = LossSection(uta=1.0 if stage1 else 0.0)
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=args.precision, kwargs_handlers=[
        DistributedDataParallelKwargs(find_unused_parameters=not stage1)])
    set_seed(0)
    model = vmm.create_model(spec["name"], text={**spec["text"], "mlm_head": True},
                             vision={"grad_checkpointing": args.grad_checkpointing})
    freeze(model, spec["freeze"])
    vcfg = model.cfg.vision
    teacher = None
    if stage1:  # ViT-B/16 at the student's resolution, random weights
        teacher = ClipTeacher("ViT-B-16", vcfg.img_size, None, True).to(accelerator.device)
        if accelerator.mixed_precision == "bf16":
            teacher.to(torch.bfloat16)
    objective = PretrainObjective(model, loss, 103, (0, 101, 102))
    optimizer = build_optimizer(objective, 1e-5, 0.05, (0.9, 0.999), 1e-8)
    objective, optimizer = accelerator.prepare(objective, optimizer)
    set_seed(0, device_specific=True)
    B, L = args.batch_size, model.cfg.max_text_len
    g = torch.Generator().manual_seed(accelerator.process_index)
    lengths = torch.randint(6, L, (B,), generator=g)
    ids = torch.randint(1000, 29000, (B, L), generator=g)
    att = (torch.arange(L)[None] < lengths[:, None]).long()
    ids = ids * att
    ids[:, 0] = 101
    ids[torch.arange(B), lengths - 1] = 102
    batch = {"video": torch.randn(B, 3, vcfg.num_frames, vcfg.img_size, vcfg.img_size, generator=g),
             "input_ids": ids, "attention_mask": att,
             "sample_id": torch.arange(B) + accelerator.process_index * B}
    batch = {k: v.to(accelerator.device) for k, v in batch.items()}

    def sync():
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize()
    for _ in range(args.warmup):
        micro_step(accelerator, objective, optimizer, batch, loss, teacher)
    sync()
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def timed(batches) -> tuple[float, dict]:
        sync()
        start = time.perf_counter()
        for b in batches:
            out, _ = micro_step(accelerator, objective, optimizer, b, loss, teacher)
        sync()
        return time.perf_counter() - start, out
    elapsed, out = timed(batch for _ in range(args.steps))
    final_loss = float(out["loss"].detach())
    # vmm.train's loop also has its processes agree, before each micro-batch, that none has a data error (one
    # integer all-reduce and a host sync): timed here against the plain steps, ABAB, for its cost.
    agreed = None
    if accelerator.num_processes > 1:
        from vmm.training.loop import _agreed_batches
        rounds = [timed(_agreed_batches((batch for _ in range(args.steps)), accelerator))[0],
                  timed(batch for _ in range(args.steps))[0],
                  timed(_agreed_batches((batch for _ in range(args.steps)), accelerator))[0]]
        plain, agreed = min(elapsed, rounds[1]), min(rounds[0], rounds[2])
    peak = torch.cuda.max_memory_allocated() / 2**30 if accelerator.device.type == "cuda" else None
    world = accelerator.num_processes
    if accelerator.is_main_process:
        result = {"model": args.model, "stage": args.stage, "processes": world, "batch_per_process": B,
                  "frames": vcfg.num_frames, "img_size": vcfg.img_size, "precision": accelerator.mixed_precision,
                  "steps": args.steps, "seconds": elapsed, "samples_per_s": B * world * args.steps / elapsed,
                  "step_ms": 1000 * elapsed / args.steps, "peak_gib_per_process": peak, "loss": final_loss,
                  "device": device_name(args.cpu), "grad_checkpointing": args.grad_checkpointing}
        if agreed is not None:
            result["agreed_step_ms"] = 1000 * agreed / args.steps
            result["agreement_cost"] = agreed / plain - 1  # of the step time, best of two rounds each
        Path(args.result).write_text(json.dumps(result))


def launch(args, model: str, stage: int, processes: int, result: Path) -> dict:
    """One job: plain python for 1 process, ``accelerate launch`` (torchrun + DDP) for more."""
    common = [str(Path(__file__).resolve()), "--worker", "--model", model, "--stage", str(stage),
              "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
              "--precision", args.precision, "--result", str(result)]
    common += ["--cpu"] if args.cpu else []
    common += ["--grad-checkpointing"] if args.grad_checkpointing else []
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    from vmm.training.launch import reserved_port
    with reserved_port() as held:
        if processes == 1:
            cmd = [sys.executable] + common
        else:
            # The module, not the `accelerate` script beside the interpreter: pip install --user and system Pythons
            # put scripts elsewhere, and every multi-process run ended in a FileNotFoundError traceback.
            # A port of its own: on the default 29500 a second job on the host (a training run, another benchmark)
            # either took the port or, starting later, could reach this job's rendezvous store. Not "0": accelerate
            # before 1.7 (the project allows 0.30) passed it on to torchrun, and every job hung without a word.
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--main_process_port", str(held.getsockname()[1]),
                   "--mixed_precision", args.precision, "--dynamo_backend", "no"] + common
        run = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if run.returncode != 0 or not result.is_file():
        lines = (run.stderr or run.stdout).strip().splitlines()
        # The launcher's last line is often only its own summary, the job's error further up: the whole output is
        # kept in a file the row names.
        fd, log = tempfile.mkstemp(prefix=f"train_throughput_{model}_stage{stage}_{processes}p_", suffix=".log")
        with os.fdopen(fd, "w") as f:
            f.write(f"$ {' '.join(cmd)}\nexit status {run.returncode}\n--- stdout\n{run.stdout}--- stderr\n{run.stderr}")
        error = (lines[-1] if lines else f"exit status {run.returncode}, no output")[:300]
        return {"model": model, "stage": stage, "processes": processes, "error": f"{error} (whole output: {log})"}
    return json.loads(result.read_text())


def main(argv=None) -> int:
    parser = make_parser(__file__, __doc__)
    parser.add_argument("--models", nargs="+", default=["videomamba_m16", "vmm_nano"], choices=sorted(MODELS))
    parser.add_argument("--stages", nargs="+", type=int, default=[1, 2], choices=[1, 2],
                        help="1: masked with the CLIP teacher (UTA); 2: unmasked")
    # Checked here: a bad count or precision failed inside each launched job, one "failed:" line per job.
    parser.add_argument("--processes", nargs="+", type=positive_int, default=[1, 2])
    parser.add_argument("--batch-size", type=positive_int, default=32, help="per process")
    parser.add_argument("--steps", type=positive_int, default=20)
    parser.add_argument("--warmup", type=non_negative_int, default=5)
    parser.add_argument("--precision", default=None, choices=["no", "fp16", "bf16"],
                        help="bf16 (GPU default) or no (CPU default)")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--cpu", action="store_true", help="run on CPU (gloo) even if CUDA is present")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--stage", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.out and not args.worker:
        args.out = output_path(parser, args.out)
    import torch
    args.cpu = args.cpu or not torch.cuda.is_available()
    args.precision = args.precision or ("no" if args.cpu else "bf16")
    if args.worker:
        worker(args)
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            for stage in args.stages:
                for n in args.processes:
                    row = launch(args, model, stage, n, Path(tmp) / f"{model}_{stage}_{n}.json")
                    rows.append(row)
                    shown = (f"{row['samples_per_s']:.2f} samples/s ({row['step_ms']:.0f} ms/step)"
                             if "error" not in row else f"failed: {row['error']}")
                    if "agreement_cost" in row:
                        shown += (f"; with the loop's per-micro-batch agreement {row['agreed_step_ms']:.0f} ms/step "
                                  f"({100 * row['agreement_cost']:+.1f}%)")
                    print(f"{model:15s} stage {stage}  {n} process(es)  batch {args.batch_size}/process: {shown}",
                          flush=True)
    for row in rows:  # scaling efficiency against the 1-process run of the same model and stage
        one = next((r for r in rows if r.get("model") == row["model"] and r.get("stage") == row["stage"]
                    and r.get("processes") == 1 and "error" not in r), None)
        if one and "error" not in row:
            row["scaling_efficiency"] = row["samples_per_s"] / (row["processes"] * one["samples_per_s"])
    report = {"device": device_name(args.cpu), "cpu": cpu_name(), "torch": torch.__version__,
              "cuda_devices": torch.cuda.device_count() if not args.cpu else 0,
              "settings": {"batch_per_process": args.batch_size, "steps": args.steps, "warmup": args.warmup,
                           "precision": args.precision}, "results": rows}
    print(f"device: {report['device']}" + ("" if args.cpu else f"; CPU: {report['cpu']}"))
    for row in rows:
        if "scaling_efficiency" in row and row["processes"] > 1:
            print(f"{row['model']} stage {row['stage']}: scaling efficiency on {row['processes']} processes "
                  f"{100 * row['scaling_efficiency']:.0f}%")
    if args.out:
        write_result(args.out, json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    run(main)
