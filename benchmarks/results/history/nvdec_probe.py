"""Probe NVDEC through PyAV's HWAccel on the device: does it work, are frames equal to software, how fast."""
import json
import multiprocessing as mp
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks"))
OUT = os.environ.get("OUT", "/tmp/out")


def write(path, seconds, width, height, fps=25, v=3):
    from benchmarks.indexing import _write_video
    from pathlib import Path
    _write_video(Path(path), v, seconds, width, height, fps)


def decode(path, hw, every=10, owned=False, keep=()):
    import av
    from av.codec.hwaccel import HWAccel
    kwargs = {"hwaccel": HWAccel("cuda", device="0", allow_software_fallback=False, is_hw_owned=owned)} if hw else {}
    t0, c0 = time.perf_counter(), time.process_time()
    kept, fmt, n = {}, None, 0
    with av.open(path, metadata_errors="ignore", **kwargs) as container:
        stream = container.streams.best("video")
        stream.codec_context.thread_count = 1
        for i, frame in enumerate(container.decode(stream)):
            if fmt is None:
                fmt = (frame.format.name, stream.codec_context.is_hwaccel if hasattr(stream.codec_context, "is_hwaccel") else None)
                if owned:
                    import torch
                    planes = [torch.from_dlpack(p) for p in frame.planes]
                    fmt = fmt + (tuple((tuple(p.shape), str(p.dtype), str(p.device)) for p in planes),)
            if not owned and (i % every == 0 or i in keep):
                kept[i] = frame.to_ndarray(format="rgb24")
            n += 1
    return n, time.perf_counter() - t0, time.process_time() - c0, fmt, kept


def worker(args):
    path, hw, reps = args
    frames = 0
    for _ in range(reps):
        frames += decode(path, hw, every=30)[0]
    return frames


def main():
    import av
    from av.codec.hwaccel import hwdevices_available
    os.makedirs(OUT, exist_ok=True)
    print("hwdevices", hwdevices_available(), flush=True)
    vids = {"240p30s": ("/tmp/v240.mp4", 30, 320, 240), "720p10s": ("/tmp/v720.mp4", 10, 1280, 720),
            "1080p10s": ("/tmp/v1080.mp4", 10, 1920, 1080)}
    t = time.perf_counter()
    with mp.get_context("spawn").Pool(3) as pool:
        pool.starmap(write, [v for v in vids.values()])
    print(f"wrote videos in {time.perf_counter() - t:.1f} s", flush=True)
    results = {}
    for name, (path, *_rest) in vids.items():
        sw = decode(path, False)
        try:
            decode(path, True)  # warm: CUDA context
            hw = decode(path, True)
        except Exception as error:
            print(name, "hw failed:", type(error).__name__, error, flush=True)
            results[name] = {"error": str(error)}
            continue
        diffs = [int(np.abs(sw[4][i].astype(int) - hw[4][i].astype(int)).max()) for i in sw[4]]
        equal = float(np.mean([np.array_equal(sw[4][i], hw[4][i]) for i in sw[4]]))
        try:
            owned = decode(path, True, owned=True)
            owned_info = (owned[0], round(owned[1], 3), owned[3])
        except Exception as error:
            owned_info = f"{type(error).__name__}: {error}"
        row = {"frames": sw[0], "sw_wall": round(sw[1], 3), "sw_cpu": round(sw[2], 3), "hw_frames": hw[0],
               "hw_wall": round(hw[1], 3), "hw_cpu": round(hw[2], 3), "hw_fmt": hw[3], "sw_fmt": sw[3],
               "max_abs_diff": max(diffs), "frac_equal": equal, "owned": owned_info}
        results[name] = row
        print(name, json.dumps(row, default=str), flush=True)
    # aggregate throughput, many processes
    for name in ("240p30s", "1080p10s"):
        path = vids[name][0]
        for hw in (False, True):
            for procs in (1, 8, 15):
                reps = 2 if name == "240p30s" else 1
                try:
                    with mp.get_context("spawn").Pool(procs) as pool:
                        pool.map(worker, [(path, hw, 1)] * procs)  # warm: imports, contexts
                        t = time.perf_counter()
                        frames = sum(pool.map(worker, [(path, hw, reps)] * procs))
                except Exception as error:
                    print(name, hw, procs, "failed", error, flush=True)
                    continue
                dt = time.perf_counter() - t
                key = f"{name} {'hw' if hw else 'sw'} x{procs}"
                results[key] = round(frames / dt, 1)
                print(f"{key}: {frames / dt:.0f} frames/s ({frames} frames, {dt:.2f} s)", flush=True)
    with open(os.path.join(OUT, "nvdec_probe.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()
