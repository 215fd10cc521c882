"""Compare two libraries built from the same videos: files, clip windows, vectors (cosine), one search."""
import sqlite3, sys, numpy as np
def load(lib):
    con = sqlite3.connect(f"file:{lib}/catalog.sqlite?mode=ro", uri=True)
    rows = con.execute("SELECT f.path, c.start_sec, c.end_sec, c.vector FROM clips c JOIN files f ON f.id = c.file_id "
                       "WHERE c.id NOT IN (SELECT clip_id FROM tombstones)").fetchall()
    files = con.execute("SELECT path, status FROM files").fetchall()
    return {(p, round(s, 6), round(e, 6)): np.frombuffer(v, dtype=np.float32) for p, s, e, v in rows}, sorted(files)
a, fa = load(sys.argv[1]); b, fb = load(sys.argv[2])
print(f"files: {len(fa)} vs {len(fb)}, same: {fa == fb}; clips: {len(a)} vs {len(b)}, same windows: {a.keys() == b.keys()}")
keys = sorted(a.keys() & b.keys())
cos = np.array([float(a[k] @ b[k] / (np.linalg.norm(a[k]) * np.linalg.norm(b[k]))) for k in keys])
print(f"cosine of each clip's two vectors: min {cos.min():.5f}, median {np.median(cos):.5f}")
A = np.stack([a[k] for k in keys]); B = np.stack([b[k] for k in keys])
A /= np.linalg.norm(A, axis=1, keepdims=True); B /= np.linalg.norm(B, axis=1, keepdims=True)
top_a = np.argsort(-(A @ A[:20].T), axis=0)[:5].T; top_b = np.argsort(-(B @ B[:20].T), axis=0)[:5].T
print(f"top-5 neighbours of 20 clips agree: {np.mean([len(set(x) & set(y)) / 5 for x, y in zip(top_a, top_b)]):.3f}")
