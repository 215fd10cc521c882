"""Session 19's two hot-path changes, each against its previous form in the same process, alternating rounds:
(1) PyAV reading 8 frames of one clip spanning a long file (window=inf): seeking to the keyframe before each frame
(_PyAVReader.read now) vs decoding in order from the start (_decode_in_order, the previous read);
(2) the exact subset search's scoring: float64 sums a block at a time (_float64_scores now) vs one float32 matrix
product (before). Run: python benchmarks/results/history/session19_seek_and_exact.py
"""
import math
import os
import statistics
import sys
import tempfile
import time

import av
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from common import cpu_name  # noqa: E402
from index.decode import ClipSpan, _PyAVReader, sample_middle_indices  # noqa: E402
from index.store import _float64_scores  # noqa: E402


def write_long(path, frames=3000, size=(320, 240), keyint=25):
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=25, options={"preset": "ultrafast",
                                                      "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0"})
        s.width, s.height, s.pix_fmt = *size, "yuv420p"
        rng = np.random.default_rng(0)
        base = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        for i in range(frames):
            for p in s.encode(av.VideoFrame.from_ndarray(np.roll(base, i, axis=1), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def time_it(fn, rounds=5):
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main():
    print(f"{cpu_name()}, {os.cpu_count()} logical cores, load "
          f"{os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M')}, av {av.__version__}, numpy {np.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "long.mp4")
        write_long(path)
        reader = _PyAVReader(path, threads=1)
        frames = tuple(sample_middle_indices(reader.num_frames, 8))
        span = [ClipSpan(0, 0.0, math.inf, frames)]
        seek = list(reader.read(span, 0))[0]
        order = np.stack([f for _, f in reader._decode_in_order(list(frames))])
        assert np.array_equal(seek, order)
        t_seek, t_order = [], []
        for _ in range(3):  # ABAB
            t_order += time_it(lambda: list(reader._decode_in_order(list(frames))), 1)
            t_seek += time_it(lambda: list(reader.read(span, 0)), 1)
        a, b = statistics.median(t_order), statistics.median(t_seek)
        print(f"(1) PyAV, 8 frames over {reader.num_frames} (320x240, keyframe every 25): in order {a:.3f} s "
              f"{[round(x, 3) for x in t_order]}, seeking {b:.3f} s {[round(x, 3) for x in t_seek]}: {a / b:.1f}x, "
              "identical frames")
    rng = np.random.default_rng(1)
    for n, q in ((20_000, 1), (20_000, 100)):
        vectors = rng.standard_normal((n, 512)).astype(np.float32)
        queries = rng.standard_normal((q, 512)).astype(np.float32)
        t32, t64 = [], []
        for _ in range(3):
            t32 += time_it(lambda: queries @ vectors.T, 3)
            t64 += time_it(lambda: _float64_scores(queries, vectors), 3)
        a, b = statistics.median(t32), statistics.median(t64)
        print(f"(2) exact scoring, {q} quer{'y' if q == 1 else 'ies'} x {n} vectors of 512: float32 {1000 * a:.2f} ms, "
              f"float64 blocks {1000 * b:.2f} ms: {b / a:.1f}x slower")


if __name__ == "__main__":
    main()
