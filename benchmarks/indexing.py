"""Indexing and search speed: end-to-end clips/s with the decode/encode split, search latency at 10k-1M vectors.

(a) ``build_library`` over generated videos (24 of 10 s at 320x240, 25 fps: one 10 s clip each)
    with ``--model`` (default ``vmm_nano``; ``vmm.embedder.VideoTextEncoder``, bf16 on a GPU, fp32 on CPU) and with
    ``ColorHistogramEncoder`` as the cheap baseline, in the same process. Decoding runs in worker
    processes and overlaps encoding in this one, so both busy times are reported beside the
    wall time: encode = wall time inside ``encode_clips``; decode = CPU time of the decoder
    processes (user + sys, from ``getrusage(RUSAGE_CHILDREN)``). A decode-only pass (no model)
    in this process is the decoding baseline. The three run in turn, ``--repeats`` rounds (3); each row is
    the round of median clips/s, with every round's clips/s beside it.
(b) Search latency, p50/p99 in ms, one query and a batch of 32 (k=10), over 10k, 100k and 1M
    random unit vectors of dim 512 in ``index.store.VectorStore``: exact Flat everywhere, and
    what ``"auto"`` picks (Flat below 1M, ``IVF4096,Flat`` at 1M, default nprobe). IVF recall@10
    against Flat is reported for random queries (no cluster structure: the worst case for IVF)
    and for near-duplicate queries (a library vector plus noise, cosine about 0.9).
(c) The serial part of a distributed run: rank 0 merging staged files into the catalog.

    python benchmarks/indexing.py            # about 5 minutes on 2 busy cores
    python benchmarks/indexing.py --quick    # 8 videos, 10k/100k vectors, a smaller merge
    # GPU host: the official-size model over 64 videos of 30 s (5 clips each), search on 16 cores
    python benchmarks/indexing.py --model videomamba_m16_25m --videos 64 --video-seconds 30 --batch-size 32
Writes benchmarks/results/indexing_cpu.json (indexing_gpu.json when a GPU embeds) or --out.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import faiss  # noqa: E402
import torch  # noqa: E402

import vmm  # noqa: E402
from common import cpu_name, output_path, parser, positive_int, run, write_result  # noqa: E402
from index.catalog import FileResult, LibraryManifest  # noqa: E402
from index.decode import DecodeOptions, decode_video  # noqa: E402
from index.distributed import DistributedSummary, _manifest_key, _merge, _StagingArea  # noqa: E402
from index.encoder import ColorHistogramEncoder  # noqa: E402
from index.ingest import build_library, default_workers, usable_cpus  # noqa: E402
from index.library import LibraryWriter, _sync  # noqa: E402
from index.store import VectorStore, auto_nlist, default_nprobe, resolve_factory  # noqa: E402
from vmm.embedder import VideoTextEncoder  # noqa: E402


# -- hardware ---------------------------------------------------------------------------------------------


def hardware() -> dict:
    info = {"cpu": cpu_name(), "logical_cores": os.cpu_count(), "load_average_at_start": os.getloadavg(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__, "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(),
            "python": platform.python_version()}
    return info


# -- (a) indexing -----------------------------------------------------------------------------------------
def write_videos(folder: Path, count: int, seconds: float, width: int = 320, height: int = 240, fps: int = 25):
    """H.264 videos with a moving colour gradient and a moving square: real motion, realistic decode cost.

    One process a core: a video's frames depend only on its number, however many processes write."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(folder / f"video{v:03d}.mp4", v, seconds, width, height, fps) for v in range(count)]
    processes = min(len(jobs), usable_cpus())
    if processes <= 1:
        for job in jobs:
            _write_video(*job)
        return
    import multiprocessing
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.starmap(_write_video, jobs, chunksize=1)


def _write_video(path: Path, v: int, seconds: float, width: int, height: int, fps: int) -> None:
    import av  # only to write the test videos: a GPU host may have decord alone (--video-dir)
    ys, xs = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast"}
        hue = np.array([(v * 53) % 256, (v * 97) % 256, (v * 151) % 256], np.float32)
        for i in range(int(seconds * fps)):
            frame = np.empty((height, width, 3), np.uint8)
            shift = (xs + 3 * i) % width / width
            frame[...] = (hue * shift[..., None] + 40 * (ys[..., None] / height)).astype(np.uint8)
            x = int((width - 40) * (i / (seconds * fps)))
            frame[100:140, x:x + 40] = 255 - hue.astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


class TimedEncoder:
    """Wraps an encoder and adds up the wall time spent in encode_clips."""

    def __init__(self, encoder):
        self.encoder = encoder
        self.seconds = 0.0
        for name in ("name", "weights_hash", "dim", "num_frames", "preprocessing"):
            setattr(self, name, getattr(encoder, name))
        self.device = getattr(encoder, "device", "cpu")  # build_library's default worker count reads it

    def encode_clips(self, clips):
        started = time.perf_counter()
        out = self.encoder.encode_clips(clips)
        self.seconds += time.perf_counter() - started
        return out


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def decode_only(videos: list[Path], num_frames: int, threads: int) -> dict:
    options = DecodeOptions(num_frames=num_frames, threads=threads)
    started = time.perf_counter()
    clips = sum(len(decode_video(str(path), options)[1]) for path in videos)
    seconds = time.perf_counter() - started
    return {"clips": clips, "frames": num_frames, "seconds": round(seconds, 3),
            "clips_per_s": round(clips / seconds, 2), "decoder_threads": threads}


def index_once(label: str, encoder, videos: list[Path], workdir: Path, workers: int, batch_size: int) -> dict:
    timed = TimedEncoder(encoder)
    library = workdir / f"lib-{label}"
    shutil.rmtree(library, ignore_errors=True)
    children_before = children_cpu_seconds()
    started = time.perf_counter()
    # The files decode_only timed, not their folder: a --video-dir with subfolders or other video types had more
    # files indexed than decoded alone, and the ratio against decoding compared different inputs.
    summary = build_library([str(path) for path in videos], str(library), timed, workers=workers,
                            batch_size=batch_size, progress=False)
    wall = time.perf_counter() - started
    decode_cpu = children_cpu_seconds() - children_before  # workers are reaped when the pool closes
    assert summary.failed == 0, summary.failures
    return {"encoder": label, "files": summary.indexed, "clips": summary.clips, "wall_s": round(wall, 3),
            "clips_per_s": round(summary.clips / wall, 2), "encode_busy_s": round(timed.seconds, 3),
            "encode_clips_per_s": round(summary.clips / timed.seconds, 2) if timed.seconds else None,
            "decode_workers": workers, "decode_cpu_s": round(decode_cpu, 3),
            "encode_share_of_wall": round(timed.seconds / wall, 3)}


def bench_indexing(args, workdir: Path) -> dict:
    started = time.perf_counter()
    if args.video_dir:  # videos written by an earlier run (``--write-videos``), e.g. on a host without PyAV
        media = Path(args.video_dir)
    else:
        media = workdir / "media"
        write_videos(media, args.videos, args.video_seconds, *args.video_size)
    videos = sorted(media.glob("*.mp4"))
    setup_s = time.perf_counter() - started

    # Random weights: speed does not depend on them. Any registered multimodal model (vmm_nano by default;
    # videomamba_m16_25m is the official size, 8 x 224 px) or a save_pretrained folder.
    model = vmm.from_pretrained(args.model) if Path(args.model).is_dir() else vmm.create_model(args.model)
    encoder = VideoTextEncoder(model, batch_size=args.batch_size)
    # The baselines decode the model's frame count: a 16-frame model was compared with 8-frame decoding.
    baseline = ColorHistogramEncoder(num_frames=encoder.num_frames)
    warm = [np.zeros((encoder.num_frames, 240, 320, 3), np.uint8)] * args.batch_size
    for _ in range(2):  # first-call costs (kernel selection, allocator; the CUDA graph's capture on the second
        encoder.encode_clips(warm)  # full batch) are not indexing speed
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()

    # each encoder's own default (vmm index's): more decoders when the model runs on a GPU
    baseline_workers, model_workers = (default_workers(e) if args.workers is None else args.workers
                                       for e in (baseline, encoder))
    threads = max(1, usable_cpus() // baseline_workers)  # what build_library gives each decoder
    # Rounds of all three in turn: one pass each was the whole number, taken at different moments of a shared
    # machine's load (two runs differed by up to 5x), and no spread showed it.
    rounds = [{"decode_only": decode_only(videos, encoder.num_frames, threads),
               "color_histogram": index_once("color-histogram", baseline, videos, workdir, baseline_workers,
                                             args.batch_size),
               "model": index_once(args.model, encoder, videos, workdir, model_workers, args.batch_size)}
              for _ in range(args.repeats)]
    rows = {key: median_round([r[key] for r in rounds]) for key in rounds[0]}
    rows["model"].update(device=str(encoder.device), precision="bf16 autocast" if encoder.device.type == "cuda"
                         else "fp32", img_size=encoder.img_size, frames=encoder.num_frames)
    video = (f"{args.video_seconds:g} s, {args.video_size[0]}x{args.video_size[1]}, 25 fps, H.264" if not args.video_dir
             else f"from {args.video_dir} (written by --write-videos)")
    return {"videos": len(videos), "video": video, "window_s": 10.0, "stride_s": 5.0,
            "batch_size": args.batch_size, "repeats": args.repeats, "video_writing_s": round(setup_s, 1), **rows}


def median_round(runs: list[dict]) -> dict:
    """The run of median clips/s (of an even count, the slower middle one), with every run's clips/s."""
    ordered = sorted(runs, key=lambda r: r["clips_per_s"])
    return {**ordered[(len(ordered) - 1) // 2], "clips_per_s_runs": [r["clips_per_s"] for r in runs]}


# -- (b) search latency -----------------------------------------------------------------------------------
def unit_vectors(n: int, dim: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:start + len(block)] = block
    return out


def latencies(store: VectorStore, queries: np.ndarray, single_reps: int, batch_reps: int, threads: int,
              k: int = 10) -> dict:
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        return _latencies(store, queries, single_reps, batch_reps, k) | {"faiss_threads": threads}
    finally:
        faiss.omp_set_num_threads(before)


def _latencies(store: VectorStore, queries: np.ndarray, single_reps: int, batch_reps: int, k: int) -> dict:
    store.search(queries[:1], k)  # warm-up (page in, thread pool)
    single = []
    for i in range(single_reps):
        q = queries[i % len(queries)][None]
        started = time.perf_counter()
        store.search(q, k)
        single.append(time.perf_counter() - started)
    batch = []
    for _ in range(batch_reps):
        started = time.perf_counter()
        store.search(queries[:32], k)
        batch.append(time.perf_counter() - started)

    def ms(values, q):
        return round(float(np.percentile(values, q)) * 1000, 3)

    return {"single_p50_ms": ms(single, 50), "single_p99_ms": ms(single, 99), "single_reps": single_reps,
            "batch32_p50_ms": ms(batch, 50), "batch32_p99_ms": ms(batch, 99), "batch32_reps": batch_reps}


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist())]))


def bench_search(args) -> list[dict]:
    """Each index is timed with FAISS's default threads and with one thread: on a loaded machine OpenMP's
    barriers can cost more than the search itself."""
    dim, rows = 512, []
    default_threads = faiss.omp_get_max_threads()
    rng = np.random.default_rng(1)
    queries = unit_vectors(32, dim, seed=2)
    for n in args.sizes:
        reps = {10_000: (200, 40), 100_000: (100, 20)}.get(n, (20, 5))
        started = time.perf_counter()
        vectors = unit_vectors(n, dim, seed=3)
        near = vectors[rng.choice(n, 32, replace=False)] + rng.standard_normal((32, dim), dtype=np.float32) * 0.022
        near /= np.linalg.norm(near, axis=1, keepdims=True)  # cosine to its source about 0.9
        ids = np.arange(n, dtype=np.int64)
        flat = VectorStore.build(vectors, ids, "Flat")
        build_s = time.perf_counter() - started
        for threads in sorted({default_threads, 1}, reverse=True):
            if threads == 1 and n >= 1_000_000 and default_threads > 1:
                continue  # a 1M flat scan on one thread: slow and no news
            row = {"n": n, "dim": dim, "index": flat.factory,
                   "chosen_by_auto": resolve_factory("auto", n) == flat.factory, "build_s": round(build_s, 2),
                   **latencies(flat, queries, *reps, threads)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        if resolve_factory("auto", n) != flat.factory:
            truth_random = flat.search(queries, 10)[1]
            truth_near = flat.search(near, 10)[1]
            del flat
            nlist = auto_nlist(n)
            started = time.perf_counter()
            ivf = VectorStore.create(dim, resolve_factory("auto", n))
            sample = vectors[np.sort(rng.choice(n, min(n, args.ivf_train_per_list * nlist), replace=False))]
            ivf.train(sample)
            train_s = time.perf_counter() - started
            started = time.perf_counter()
            ivf.add(vectors, ids)
            add_s = time.perf_counter() - started
            quality = {
                "recall_at_10_random_queries": round(recall_at_k(ivf.search(queries, 10)[1], truth_random), 3),
                "recall_at_10_near_duplicate_queries": round(recall_at_k(ivf.search(near, 10)[1], truth_near), 3),
                "top1_near_duplicate_found": round(float(np.mean(ivf.search(near, 1)[1][:, 0] == truth_near[:, 0])),
                                                   3)}
            for threads in sorted({default_threads, 1}, reverse=True):
                row = {"n": n, "dim": dim, "index": ivf.factory, "chosen_by_auto": True,
                       "nprobe": default_nprobe(nlist), "train_vectors": len(sample), "train_s": round(train_s, 1),
                       "add_s": round(add_s, 1), **latencies(ivf, queries, *reps, threads), **quality}
                rows.append(row)
                print(json.dumps(row), flush=True)
            del ivf
        else:
            del flat
        del vectors
    return rows


# -- (c) the merge of a distributed run -------------------------------------------------------------------
def bench_merge(args, workdir: Path) -> dict:
    """Stage synthetic files of 5 clips (dim 512) as ranks do, then time rank 0's merge into the catalog."""
    dim, files, clips_per_file = 512, args.merge_files, 5
    library = workdir / "merge-lib"
    manifest = LibraryManifest("bench", "w0", dim, 8, "middle", {}, 10.0, 5.0, None)
    key = _manifest_key(manifest)
    LibraryWriter.open(str(library), manifest).close()  # an empty library, as rank 0 creates before staging
    rng = np.random.default_rng(4)
    run = "bench-run"
    shards = [[], []]
    for rank in range(2):
        staging = _StagingArea(str(library / ".staging" / run / f"rank-{rank:05d}"), key, dim)
        batch = []
        for i in range(rank, files, 2):
            vectors = unit_vectors(clips_per_file, dim, seed=int(rng.integers(1 << 30)))
            spans = [(5.0 * c, 5.0 * c + 10.0) for c in range(clips_per_file)]
            batch.append(FileResult(f"/videos/{i:06d}.mp4", 1000 + i, i, f"fp{i}", "ok", None, None, spans, vectors))
            shards[rank].append({"path": batch[-1].path, "size": 1000 + i, "mtime_ns": i})
            if len(batch) == 64:
                staging.commit(batch)
                batch = []
        staging.commit(batch)
    plan = {"run": run, "manifest": manifest.to_json(), "manifest_key": key, "shards": shards, "reuse": []}
    with LibraryWriter.open(str(library), manifest) as writer:
        summary = DistributedSummary(str(library))
        started = time.perf_counter()
        _merge(writer, plan, str(library / ".staging"), summary)
        merge_s = time.perf_counter() - started
        started = time.perf_counter()
        _sync(writer, 1_000_000)
        sync_s = time.perf_counter() - started
    assert summary.clips == files * clips_per_file
    return {"files": files, "clips": summary.clips, "dim": dim, "merge_s": round(merge_s, 3),
            "merge_clips_per_s": round(summary.clips / merge_s, 1), "faiss_refresh_s": round(sync_s, 3)}


# -- main -------------------------------------------------------------------------------------------------
def _size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    if not (width.isdigit() and height.isdigit()) or min(int(width), int(height) - 96) < 48 \
            or int(width) % 2 or int(height) % 2:  # even sides for yuv420p; room for the moving square
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT with even sides of at least 48x144")
    return int(width), int(height)


def _library_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 32:  # the 32 near-duplicate queries are 32 different library vectors: a ValueError traceback before
        raise argparse.ArgumentTypeError(f"{text!r} is not a library size of at least 32 vectors")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value >= 0.2:  # at 25 fps, a few frames; also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a length in seconds of at least 0.2")
    return value


def main() -> None:
    ap = parser(__file__, __doc__)
    ap.add_argument("--quick", action="store_true", help="8 videos, 10k/100k vectors, 2000 merged files")
    ap.add_argument("--videos", type=positive_int, default=None, help="videos to generate [24; quick: 8]")
    ap.add_argument("--video-seconds", type=_seconds, default=10.0)
    ap.add_argument("--video-size", type=_size, default=(320, 240), metavar="WxH",
                    help="size of the generated videos [320x240; 1920x1080 for HD libraries]")
    ap.add_argument("--batch-size", type=positive_int, default=16, help="clips per encoder batch [16]")
    ap.add_argument("--repeats", type=positive_int, default=3,
                    help="rounds of decoding alone, the colour histogram and the model, in turn; each row is the "
                         "median round [3]")
    # at least one: the decoders' CPU time is read from the child processes
    ap.add_argument("--workers", type=positive_int, default=None,
                    help="decoder processes [as vmm index: cores - 1, at most 8 for an encoder on the CPU, 32 on a GPU]")
    ap.add_argument("--sizes", type=_library_size, nargs="+", default=None, help="library sizes [10000 100000 1000000]")
    ap.add_argument("--ivf-train-per-list", type=positive_int, default=16,
                    help="IVF training vectors per list [16; the library itself uses 64, about 4x slower to train]")
    ap.add_argument("--merge-files", type=positive_int, default=None,
                    help="files staged for the merge [4000; quick: 2000]")
    ap.add_argument("--model", type=os.path.expanduser, default="vmm_nano",
                    help="model to embed with, random weights [vmm_nano; videomamba_m16_25m: official size]")
    ap.add_argument("--video-dir", type=os.path.expanduser, default=None,
                    help="index these .mp4 files instead of writing new ones")
    ap.add_argument("--write-videos", default=None, metavar="DIR",
                    help="only write the benchmark videos to DIR (for a host without PyAV) and exit")
    ap.add_argument("--skip", nargs="*", default=[], choices=["indexing", "search", "merge"])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    args.videos = args.videos or (8 if args.quick else 24)
    args.sizes = args.sizes or ([10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000])
    args.merge_files = args.merge_files or (2000 if args.quick else 4000)
    if {"indexing", "search", "merge"} <= set(args.skip):  # the run's empty result replaced the recorded one
        ap.error("argument --skip: nothing is left to run; skip at most two of indexing, search and merge")
    if args.write_videos:
        write_videos(output_path(ap, args.write_videos, "--write-videos", folder=True), args.videos,
                     args.video_seconds, *args.video_size)
        print(f"wrote {args.videos} videos to {args.write_videos}")
        return
    # Checked before any work: a missing folder was a traceback, and one without .mp4 files a run of 0 videos
    # written as a result; an unknown model a traceback after the videos were written.
    if args.video_dir and "indexing" not in args.skip and not sorted(Path(args.video_dir).glob("*.mp4")):
        found = "holds no .mp4 files" if Path(args.video_dir).is_dir() else "is not a folder"
        ap.error(f"argument --video-dir: {args.video_dir} {found}; write the videos first with "
                 f"--write-videos {args.video_dir}, or leave --video-dir out to write them in a temp folder")
    if "indexing" not in args.skip and not Path(args.model).is_dir() and args.model not in vmm.list_models():
        ap.error(f"argument --model: {args.model!r} is neither a registered model nor a save_pretrained folder; "
                 f"e.g. vmm_nano or videomamba_m16_25m")
    gpu = torch.cuda.is_available()
    # A quick run is a smoke test: it must not replace the recorded full run's file.
    recorded = Path(tempfile.gettempdir()) if args.quick else REPO / "benchmarks" / "results"
    out = output_path(ap, args.out or recorded / f"indexing_{'gpu' if gpu else 'cpu'}.json")

    result = {"hardware": hardware(), "date": time.strftime("%Y-%m-%d %H:%M"), "quick": args.quick}
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="vmm-bench-indexing-"))
    try:
        if "indexing" not in args.skip:
            result["indexing"] = bench_indexing(args, workdir)
            print(json.dumps(result["indexing"]), flush=True)
        if "merge" not in args.skip:
            result["merge"] = bench_merge(args, workdir)
            print(json.dumps(result["merge"]), flush=True)
        if "search" not in args.skip:
            result["search"] = bench_search(args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["ratios"] = ratios(result)
    result["total_s"] = round(time.perf_counter() - started, 1)
    write_result(out, json.dumps(result, indent=2) + "\n")
    report(result)
    print(f"\nwrote {out}")


def ratios(result: dict) -> dict:
    """Each measurement against its baseline of the same run: the model's end-to-end rate against the colour
    histogram's (the same pipeline with an almost free encoder) and against decoding alone (the rate a perfect
    encoder would leave), and each index's 32-query p50 latency as a speedup over exact Flat at the same size and
    FAISS threads."""
    out = {}
    if "indexing" in result:
        ix = result["indexing"]
        model = ix["model"]["clips_per_s"]
        out["indexing_model_vs_color_histogram"] = round(model / ix["color_histogram"]["clips_per_s"], 3)
        out["indexing_model_vs_decode_only"] = round(model / ix["decode_only"]["clips_per_s"], 3)
    # The exact rows by the factory VectorStore builds for "Flat" (IDMap2,Flat): a bare "Flat" matched no row, and
    # no IVF row had its speedup.
    flat = {(r["n"], r["faiss_threads"]): r["batch32_p50_ms"] for r in result.get("search", [])
            if r["index"] == resolve_factory("Flat", r["n"])}
    for r in result.get("search", []):
        if r["index"] != resolve_factory("Flat", r["n"]) and (r["n"], r["faiss_threads"]) in flat:
            out[_speedup_key(r)] = round(flat[r["n"], r["faiss_threads"]] / r["batch32_p50_ms"], 2)
    return out


def _speedup_key(row: dict) -> str:
    return f"search_{row['index']}_n{row['n']}_{row['faiss_threads']}threads_speedup_vs_flat"


def spread(row: dict) -> str:
    return "[" + ", ".join(f"{rate:.2f}" for rate in row["clips_per_s_runs"]) + "]"


def report(result: dict) -> None:
    hw = result["hardware"]
    print(f"\n{hw['cpu']} ({hw['logical_cores']} logical cores, load {hw['load_average_at_start'][0]:.1f} at start)"
          + (f", GPU {hw['gpu']}" if hw["gpu"] else ", no GPU") + f"; {result['date']}")
    if "indexing" in result:
        ix = result["indexing"]
        print(f"\nindexing {ix['videos']} videos ({ix['video']}), window 10 s / stride 5 s, batch {ix['batch_size']}; "
              f"the median of {ix['repeats']} rounds, clips/s of every round in brackets")
        d = ix["decode_only"]
        print(f"  decode only, this process, {d['decoder_threads']} threads: {d['clips_per_s']:.1f} clips/s "
              f"{spread(d)}")
        print(f"  {'encoder':<16}{'clips':>6}{'wall s':>8}{'clips/s':>9}{'encode s':>10}{'enc clips/s':>12}"
              f"{'decode cpu s':>13}{'workers':>8}")
        for key in ("color_histogram", "model"):
            r = ix[key]
            print(f"  {r['encoder']:<16}{r['clips']:>6}{r['wall_s']:>8.2f}{r['clips_per_s']:>9.2f}"
                  f"{r['encode_busy_s']:>10.2f}{r['encode_clips_per_s'] or math.nan:>12.2f}{r['decode_cpu_s']:>13.2f}"
                  f"{r['decode_workers']:>8}  {spread(r)}")
        m = ix["model"]
        print(f"  {m['encoder']} ({m['frames']} x {m['img_size']} px) ran on {m['device']} ({m['precision']})")
        r = result["ratios"]
        print(f"  ratios: {r['indexing_model_vs_color_histogram']:.2f}x the colour-histogram baseline's clips/s, "
              f"{r['indexing_model_vs_decode_only']:.2f}x the decode-only rate")
    if "merge" in result:
        m = result["merge"]
        print(f"\nmerge (rank 0, distributed run): {m['clips']} staged clips of dim {m['dim']} in {m['merge_s']:.2f} s "
              f"= {m['merge_clips_per_s']:.0f} clips/s; FAISS refresh {m['faiss_refresh_s']:.2f} s")
    if "search" in result:
        print("\nsearch latency in ms, k=10, dim 512, random unit vectors")
        print(f"  {'n':>9} {'index':<16}{'threads':>8}{'1q p50':>9}{'1q p99':>9}{'32q p50':>10}{'32q p99':>10}  notes")
        for r in result["search"]:
            notes = "auto's choice" if r["chosen_by_auto"] else ""
            speedup = result["ratios"].get(_speedup_key(r))
            if speedup is not None:
                notes += f"{'; ' if notes else ''}{speedup:.1f}x Flat (32q p50)"
            if "nprobe" in r:
                notes += (f"; nprobe {r['nprobe']}, recall@10 {r['recall_at_10_random_queries']:.2f} random / "
                          f"{r['recall_at_10_near_duplicate_queries']:.2f} near-duplicate queries")
            print(f"  {r['n']:>9} {r['index']:<16}{r['faiss_threads']:>8}{r['single_p50_ms']:>9.2f}"
                  f"{r['single_p99_ms']:>9.2f}{r['batch32_p50_ms']:>10.2f}{r['batch32_p99_ms']:>10.2f}  {notes}")
    print(f"\ntotal {result['total_s']:.0f} s")


if __name__ == "__main__":
    run(main)
