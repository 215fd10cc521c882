"""Session 12 (run on the GPU host from the repository root with OUT set): the eager and the CUDA-graph forward of
VideoMamba-M, alone and beside 15 processes sending clips to a reader thread (GIL contention, CPU load, pipe size)."""
import fcntl, json, multiprocessing.connection as mpc, os, queue, subprocess, sys, threading, time
import numpy as np, torch
sys.path.insert(0, os.getcwd())
import vmm
from vmm.embedder import VideoTextEncoder

F_SETPIPE_SZ = 1031
FEEDER = r'''
import sys, time, pickle, numpy as np, multiprocessing.connection as mpc
fd, rate, burn = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "1"
c = mpc.Connection(fd, readable=False)
clip = np.random.default_rng(0).integers(0, 255, (8, 240, 320, 3), dtype=np.uint8)
next_t = time.monotonic()
while True:
    if rate > 0:
        c.send(("clip", 0, clip))
    next_t += 1 / rate if rate > 0 else 0.05
    while burn and time.monotonic() < next_t:  # a decoder's CPU use between sends
        sum(range(2000))
    if not burn:
        time.sleep(max(0, next_t - time.monotonic()))
'''

def feeders(n, rate, burn, pipe_size):
    procs, conns = [], []
    for _ in range(n):
        r, w = os.pipe()
        if pipe_size:
            fcntl.fcntl(w, F_SETPIPE_SZ, pipe_size)
        p = subprocess.Popen([sys.executable, "-c", FEEDER, str(w), str(rate), "1" if burn else "0"], pass_fds=(w,))
        os.close(w)
        procs.append(p); conns.append(mpc.Connection(r, writable=False))
    return procs, conns

def reader(conns, q, stop):
    while not stop.is_set():
        for c in mpc.wait(conns, timeout=0.1):
            try:
                msg = c.recv()
            except (EOFError, OSError):
                return
            try:
                q.put(msg, timeout=0.5)
            except queue.Full:
                pass

torch.manual_seed(0)
enc = VideoTextEncoder(vmm.create_model(os.environ.get("MODEL", "videomamba_m16_25m")), batch_size=32)
rng = np.random.default_rng(0)
clips = [rng.integers(0, 255, (8, 240, 320, 3), dtype=np.uint8) for _ in range(32)]
for _ in range(3):
    enc.encode_clips(clips)
x = enc._video_batch(clips)
torch.cuda.synchronize()

def eager():
    with torch.inference_mode(), enc._autocast():
        return enc.model.encode_video(x).float().cpu()

static_x = x.clone()
side = torch.cuda.Stream(); side.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(side), torch.inference_mode():
    for _ in range(3):
        with torch.autocast("cuda", torch.bfloat16, cache_enabled=False):
            enc.model.encode_video(static_x)
torch.cuda.current_stream().wait_stream(side)
graph = torch.cuda.CUDAGraph()
t = time.perf_counter()
with torch.inference_mode():
    with torch.cuda.graph(graph):
        with torch.autocast("cuda", torch.bfloat16, cache_enabled=False):
            static_out = enc.model.encode_video(static_x)
torch.cuda.synchronize()
capture_s = time.perf_counter() - t

def replay():
    static_x.copy_(x); graph.replay(); return static_out.float().cpu()

a, b = eager(), replay()
print("graph capture", round(capture_s, 3), "s; max |eager - graph|", float((a - b).abs().max()), flush=True)

def time_it(fn, n=20, drain=None):
    ts = []
    for _ in range(n):
        if drain:
            drain()
        s = time.perf_counter(); fn(); ts.append(time.perf_counter() - s)
    return round(float(np.median(ts)) * 1000, 1)

def gpu_ms(fn, n=20):
    fn(); torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(n):
        fn()
    e1.record(); torch.cuda.synchronize()
    return round(e0.elapsed_time(e1) / n, 1)

def launch_ms(n=10):  # CPU time to issue one eager forward, without waiting for the GPU
    ts = []
    for _ in range(n):
        torch.cuda.synchronize()
        with torch.inference_mode(), enc._autocast():
            s = time.perf_counter(); enc.model.encode_video(x); ts.append(time.perf_counter() - s)
    torch.cuda.synchronize()
    return round(float(np.median(ts)) * 1000, 1)

print(json.dumps(dict(eager_issue_ms=launch_ms(), eager_wall_ms=time_it(eager), graph_wall_ms=time_it(replay))), flush=True)
rows = []
def case(label, n=0, rate=0.0, burn=False, pipe_size=0, with_reader=False):
    procs, conns = feeders(n, rate, burn, pipe_size) if n else ([], [])
    q, stop = queue.Queue(maxsize=64), threading.Event()
    th = None
    if with_reader:
        th = threading.Thread(target=reader, args=(conns, q, stop), daemon=True); th.start()
    def drain():
        got = 0
        while got < 32:
            try:
                q.get(timeout=0.2); got += 1
            except queue.Empty:
                break
    time.sleep(1.0)
    d = drain if with_reader else None
    r = dict(case=label, eager_ms=time_it(eager, drain=d), graph_ms=time_it(replay, drain=d),
             encode_clips_ms=time_it(lambda: enc.encode_clips(clips), drain=d))
    stop.set()
    for p in procs:
        p.kill(); p.wait()
    if th: th.join()
    rows.append(r); print(json.dumps(r), flush=True)

case("alone")
case("15 feeders 20 clips/s each (burning CPU between sends), reader thread", n=15, rate=20, burn=True, with_reader=True)
case("15 feeders 20 clips/s each, no burn, reader thread", n=15, rate=20, burn=False, with_reader=True)
case("alone again")
json.dump(rows, open(os.path.join(os.environ["OUT"], "graph_contention.json"), "w"), indent=1)
