"""NVDEC through PyAV, second probe: YUV-level equality with software decoding, frames kept on the GPU through
DLPack, and threads of one process instead of processes."""
import os
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks"))


def write(path, seconds, width, height, fps=25, v=3):
    from pathlib import Path
    from benchmarks.indexing import _write_video
    _write_video(Path(path), v, seconds, width, height, fps)


def planes_sw(path, n=40):
    import av
    out = []
    with av.open(path) as c:
        for i, f in enumerate(c.decode(c.streams.video[0])):
            y = f.to_ndarray(format="yuv420p")  # (H*3/2, W)
            out.append(y)
            if i + 1 >= n:
                break
    return out


def planes_hw(path, n=40):
    import av
    from av.codec.hwaccel import HWAccel
    out, fmts = [], set()
    with av.open(path, hwaccel=HWAccel("cuda", device="0", allow_software_fallback=False)) as c:
        for i, f in enumerate(c.decode(c.streams.video[0])):
            fmts.add(f.format.name)
            out.append(f.to_ndarray(format="yuv420p"))
            if i + 1 >= n:
                break
    return out, fmts


OWNED = True


def owned_decode(path, shared=None, keep_every=0):
    import av
    import torch
    from av.codec.hwaccel import HWAccel
    acc = shared or HWAccel("cuda", device="0", allow_software_fallback=False, is_hw_owned=OWNED)
    n, info = 0, None
    with av.open(path, hwaccel=acc) as c:
        for f in c.decode(c.streams.video[0]):
            if info is None:
                try:
                    t = [torch.from_dlpack(p.__dlpack__()) for p in f.planes]
                    info = [(tuple(x.shape), str(x.dtype), str(x.device)) for x in t]
                except Exception as e:
                    info = f"{type(e).__name__}: {e}"
            n += 1
    return n, info


def main():
    import av
    import torch
    from multiprocessing import get_context
    vids = {"240p": ("/tmp/p240.mp4", 30, 320, 240), "1080p": ("/tmp/p1080.mp4", 10, 1920, 1080)}
    with get_context("spawn").Pool(2) as pool:
        pool.starmap(write, list(vids.values()))
    torch.zeros(1, device="cuda")
    for name, (path, *_r) in vids.items():
        sw = planes_sw(path)
        hw, fmts = planes_hw(path)
        eq = [bool(np.array_equal(a, b)) for a, b in zip(sw, hw)]
        ydiff = [int(np.abs(a[:a.shape[0] * 2 // 3].astype(int) - b[:b.shape[0] * 2 // 3].astype(int)).max()) for a, b in zip(sw, hw)]
        # same frame shifted? compare hw i with sw j
        shift = None
        for d in range(-3, 4):
            if all(np.array_equal(sw[i], hw[i + d]) for i in range(5, 30) if 0 <= i + d < len(hw)):
                shift = d
        print(f"{name}: hw formats {fmts}; yuv420p equal {sum(eq)}/{len(eq)}; Y max diff {max(ydiff)}; exact at shift {shift}", flush=True)
        global OWNED
        try:
            n, info = owned_decode(path)
            print(f"{name}: owned frames {n}, planes via capsule: {info}", flush=True)
        except Exception as e:
            import traceback
            print(f"{name}: owned decode failed: {type(e).__name__}: {e}; {traceback.format_exc().splitlines()[-3:]}", flush=True)
            OWNED = False
            print(f"{name}: timing threads with frames downloaded instead (is_hw_owned=False)", flush=True)
        for threads in (1, 4, 8):
            reps = 4 if name == "240p" else 2
            counts = []

            def job():
                for _ in range(reps):
                    counts.append(owned_decode(path)[0])
            job_threads = [threading.Thread(target=job) for _ in range(threads)]
            t = time.perf_counter()
            for th in job_threads:
                th.start()
            for th in job_threads:
                th.join()
            dt = time.perf_counter() - t
            print(f"{name}: {'owned' if OWNED else 'downloaded'}, {threads} threads: {sum(counts) / dt:.0f} frames/s ({sum(counts)} in {dt:.2f} s)", flush=True)
        # software, same threads, for the same process's baseline
        for threads in (1, 8):
            counts = []

            def sjob():
                for _ in range(2):
                    with av.open(path) as c:
                        s = c.streams.video[0]
                        s.codec_context.thread_count = 1
                        counts.append(sum(1 for _ in c.decode(s)))
            ts = [threading.Thread(target=sjob) for _ in range(threads)]
            t = time.perf_counter()
            for th in ts:
                th.start()
            for th in ts:
                th.join()
            dt = time.perf_counter() - t
            print(f"{name}: software, {threads} threads: {sum(counts) / dt:.0f} frames/s", flush=True)


if __name__ == "__main__":
    main()
