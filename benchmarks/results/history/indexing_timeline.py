"""Session 12 (run on the GPU host from the repository root with OUT set; MODEL, GRAPH, ALL_THREADS, STACK_S, DEPTH env vars):
where a GPU indexing run's wall time goes (timeline of the main thread, queue fill, CPU use)."""
import json, os, sys, threading, time
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, os.getcwd())
import vmm
import index.pool as pool_mod
from index.ingest import build_library, default_workers, usable_cpus
from vmm.embedder import VideoTextEncoder

media = sys.argv[1]; label = sys.argv[2]; out = Path(os.environ["OUT"]) / f"timeline_{label}.json"
workers = int(sys.argv[3]) if len(sys.argv) > 3 else None
torch.manual_seed(0)
enc = VideoTextEncoder(vmm.create_model(os.environ.get("MODEL", "videomamba_m16_25m")), batch_size=32, cuda_graph=os.environ.get("GRAPH", "1") == "1")
warm = [np.zeros((8, 240, 320, 3), np.uint8)] * 32
enc.encode_clips(warm)
t0 = [0.0]
encodes, gets, cpu = [], [], []

class Timed:
    def __init__(self, e):
        self.e = e
        for n in ("name", "weights_hash", "dim", "num_frames", "preprocessing", "device"):
            setattr(self, n, getattr(e, n))
    def encode_clips(self, clips):
        s = time.perf_counter(); v = self.e.encode_clips(clips); encodes.append((s - t0[0], time.perf_counter() - t0[0], len(clips))); return v

orig_get = pool_mod.DecodePool.get
def get(self, timeout=None):
    q = self._out.qsize(); s = time.perf_counter(); ev = orig_get(self, timeout); gets.append((s - t0[0], time.perf_counter() - s, q, ev is None)); return ev
pool_mod.DecodePool.get = get
marks = []
import index.ingest as ingest_mod
def wrap(owner, name, label):
    orig = getattr(owner, name)
    def f(*a, **k):
        marks.append((label + ">", round(time.time() - wall0, 3)))
        try:
            return orig(*a, **k)
        finally:
            marks.append((label + "<", round(time.time() - wall0, 3)))
    setattr(owner, name, f)
wrap(ingest_mod._Pipeline, "run", "run"); wrap(ingest_mod, "_sync", "sync"); wrap(pool_mod.DecodePool, "close", "close")
wrap(ingest_mod, "_start_run", "start_run"); wrap(pool_mod._Worker, "__init__", "spawn")

stop = threading.Event()
def sample():
    def read():
        f = open("/proc/stat").readline().split()[1:8]; v = list(map(int, f)); return sum(v), v[3] + v[4]
    tot, idle = read()
    while not stop.wait(0.25):
        t2, i2 = read(); cpu.append((time.perf_counter() - t0[0], (1 - (i2 - idle) / max(1, t2 - tot)) * os.cpu_count())); tot, idle = t2, i2
threading.Thread(target=sample, daemon=True).start()
import collections, traceback
stacks = collections.Counter()
main_id = threading.main_thread().ident
def stack_sampler():
    while not stop.wait(0.05):
        if time.perf_counter() - t0[0] > float(os.environ.get("STACK_S", "3")):
            continue
        for tid, fr in sys._current_frames().items():
            if tid == main_id or os.environ.get("ALL_THREADS"):
                st = traceback.extract_stack(fr)[-int(os.environ.get("DEPTH", "6")):]
                stacks[(tid == main_id, " <- ".join(f"{Path(f.filename).name}:{f.lineno}:{f.name}" for f in reversed(st)))] += 1
threading.Thread(target=stack_sampler, daemon=True).start()
lib = f"/tmp/lib_{label}"; os.system(f"rm -rf {lib}")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); os.system("rm -f /tmp/s12hook.log")
timed_enc = Timed(enc)
t0[0] = time.perf_counter(); wall0 = time.time(); globals()["wall0"] = wall0
s = build_library([media], lib, timed_enc, batch_size=32, workers=workers, progress=False, worker_hook="indexing_timeline_hook:first")
wall = time.perf_counter() - t0[0]; stop.set()
clips = s.clips
first, last = encodes[0][0], encodes[-1][1]
busy = sum(e - b for b, e, _ in encodes)
n = len(encodes); a, b = n // 10, n - n // 10
steady = sum(c for _, _, c in encodes[a:b]) / (encodes[b - 1][1] - encodes[a][0])
steady_busy = sum(e - s_ for s_, e, _ in encodes[a:b]) / (encodes[b - 1][1] - encodes[a][0])
qs = [q for t, _, q, _ in gets if encodes[a][0] <= t <= encodes[b - 1][1]]
waits = sum(d for t, d, _, _ in gets if encodes[a][0] <= t <= encodes[b - 1][1])
cpus = [c for t, c in cpu if encodes[a][0] <= t <= encodes[b - 1][1]]
res = dict(label=label, workers=workers or default_workers(enc), cpus=usable_cpus(), clips=clips, wall=round(wall, 3),
           clips_per_s=round(clips / wall, 1), first_encode_s=round(first, 3), last_encode_end_s=round(last, 3),
           after_last_encode_s=round(wall - last, 3), encode_busy_s=round(busy, 3), batches=n,
           steady_clips_per_s=round(steady, 1), steady_encode_share=round(steady_busy, 3),
           steady_get_wait_s=round(waits, 3), steady_window_s=round(encodes[b - 1][1] - encodes[a][0], 3),
           queue_at_get_mean=round(float(np.mean(qs)), 1) if qs else None,
           queue_empty_share=round(float(np.mean([q == 0 for q in qs])), 3) if qs else None,
           cores_busy_mean=round(float(np.mean(cpus)), 1) if cpus else None,
           batch_sizes=sorted(set(c for _, _, c in encodes)))
print(json.dumps(res))
hook = [l.split() for l in open("/tmp/s12hook.log")]
firsts = {}
for pid, t, _, _ in hook:
    firsts.setdefault(pid, float(t) - wall0)
print("worker first-file times (s after start):", sorted(round(v, 2) for v in firsts.values()))
starts = {}
for pid, t, st, _ in hook:
    starts.setdefault(pid, float(st) - wall0)
print("worker process start times:", sorted(round(v, 2) for v in starts.values()))
print("marks:", marks[:12], marks[-10:])
for (is_main, k), v in stacks.most_common(12):
    print(v, "main" if is_main else "other", k)
json.dump(dict(summary=res, encodes=encodes, cpu=cpu), open(out, "w"))
