"""The offline demo (the README's main job): a synthetic video library, indexed, searched and evaluated.

Everything runs locally on a CPU in a few minutes: generate a procedural corpus with captions (a seed the shipped
model never saw), ``vmm index`` all of it with the shipped ``vmm_nano`` checkpoint, run text queries whose right
answers are known, and
``vmm eval`` the held-out split (all of it, and its order-sensitive subset, where a model that ignores frame order
cannot tell the two videos of a pair apart).
"""
from __future__ import annotations

import json
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from vmm.errors import VmmError, is_whole_number

SHIPPED_NANO = Path(__file__).resolve().parent / "weights" / "vmm_nano"
# Left in --out by the first run: later runs replace corpus/ and index into library/ there, which they may only do
# to folders the demo made (a user's own corpus or library under those names was replaced or mixed with the demo's).
DEMO_MARKER = ".vmm-demo"
# flock-ed by the demo writing --out, for its whole run; never deleted (see _DemoLock). Not in corpus/ or library/,
# so no folder check (the demo's or the corpus generator's) takes it for a file the demo did not write.
LOCK_FILE = ".vmm-demo.lock"
TRAIN_COMMAND = "accelerate launch -m vmm.train --config configs/pretrain/vmm_nano_synthetic.yaml"


@dataclass
class DemoConfig:
    out_dir: Path = Path("demo_output")
    model: Optional[str] = None  # None -> the shipped vmm_nano checkpoint
    num_videos: int = 300
    seed: int = 1234  # not the training corpus seed: the demo's videos were never seen in training
    queries: int = 4
    k: int = 5
    rerank: int = 10  # ITM re-ranking of the top clips, the official second stage
    workers: Optional[int] = None
    batch_size: int = 16
    device: Optional[str] = None


def _say(msg: str) -> None:
    print(msg, flush=True)


def run_demo(cfg: DemoConfig) -> dict:
    from vmm.data.synthetic.corpus import MAX_VIDEOS
    from vmm.factory import resolve_device

    # Each message names the command-line option and the DemoConfig field, as either may have set it.
    # One video is all training split: nothing would be searched or evaluated.
    # is_whole_number, as for the fields below: a NumPy count (np.int64(300)) was refused as out of range.
    if not is_whole_number(cfg.num_videos) or not 2 <= cfg.num_videos <= MAX_VIDEOS:
        raise VmmError(f"--videos {cfg.num_videos} (num_videos={cfg.num_videos!r}): the demo needs at least 2 videos "
                       f"(one is held out to search for and evaluate) and at most {MAX_VIDEOS}; pass e.g. --videos 300")
    if not is_whole_number(cfg.queries) or cfg.queries < 0:
        raise VmmError(f"--queries {cfg.queries} (queries={cfg.queries!r}): pass 0 or more example searches")
    # The rest were only checked where they are used: k and rerank after the corpus was generated and indexed.
    for option, name, least in (("--seed", "seed", 0), (None, "k", 1), (None, "rerank", 0),
                                ("--workers", "workers", 0)):
        value = getattr(cfg, name)
        if not (value is None and name == "workers") and not (is_whole_number(value) and value >= least):
            given = f"{option} {value} ({name}={value!r})" if option else f"{name}={value!r}"
            raise VmmError(f"{given}: pass a whole number of {least} or more")
    # Path("") is ".": an empty out_dir wrote the demo into the working folder (the command refuses an empty --out).
    if cfg.out_dir is None or not str(cfg.out_dir).strip():
        raise VmmError(f"--out {cfg.out_dir!r} (out_dir={cfg.out_dir!r}) is empty; pass a folder for the demo's "
                       "output (e.g. --out demo_output)")
    # A "~" the shell left alone (--out=~/demo, a quoted "~/my demo") is the home folder, as in the other commands:
    # the demo was written into a folder named "~" in the working folder.
    out = Path(os.path.expanduser(cfg.out_dir))
    if out.exists() and not out.is_dir():
        raise VmmError(f"--out {cfg.out_dir} (out_dir) is a file; pass a folder (new or existing) for the demo's "
                       "output")
    if cfg.device is not None:
        resolve_device(cfg.device)  # before the corpus is generated, which takes a while
    # A str for load_encoder and model.json: a pathlib.Path failed there with a TypeError. An empty one (--model
    # "$MODEL", unset) goes to load_encoder, which names it, as vmm index and vmm search do: the shipped model ran.
    model = os.path.expanduser(os.fspath(cfg.model)) if cfg.model is not None else str(SHIPPED_NANO)
    if Path(model).is_file():  # load_encoder's message asks for a --checkpoint, which the demo does not take
        raise VmmError(f"--model {model} (model=) is a weights file, not a model name or folder, and the demo takes no "
                       f"--checkpoint; save it as a model folder once, vmm.create_model(NAME, pretrained="
                       f"{model!r}).save_pretrained(DIR) for the NAME it was trained as, and pass --model DIR")
    if model.strip() and os.sep not in model and not Path(model).exists():
        _check_model_name(model)
    if cfg.model is None and not SHIPPED_NANO.is_dir():
        raise VmmError(f"the shipped vmm_nano checkpoint is missing at {SHIPPED_NANO}; train it with `{TRAIN_COMMAND}` "
                       "or pass --model DIR")
    out = out.resolve()
    # The library's own check of its path (a name that is not UTF-8 is refused): it came after the corpus was written.
    from index.library import library_folder
    library_folder(out / "library")
    _check_demo_folder(out, cfg.out_dir)
    # Taken just before the first write (in _run_locked), so that a refused run leaves the folder as it was, and
    # held to the end: a second demo into the folder is refused then, before it writes anything.
    locks: list = []
    try:
        return _run_locked(cfg, out, model, locks)
    finally:
        for lock in locks:
            lock.release()


def _check_model_name(name: str) -> None:
    """Refuse a --model name the demo cannot run, naming those it can. load_encoder's own messages listed every
    registered model (classifiers too) and asked for a --checkpoint, which the demo does not take, and a classifier
    name had its weights downloaded before it was refused as no video-text model."""
    import vmm
    from vmm.factory import _is_multimodal, released_video_text_models
    usable = released_video_text_models()
    if name in usable:
        return
    what = (f"unknown model {name!r}" if name not in vmm.list_models() else
            f"model {name} is not a video-text model" if not _is_multimodal(name) else
            f"model {name} has no released weights")
    raise VmmError(f"{what}; pass as --model (model=) a save_pretrained / vmm train folder, or one of "
                   f"{', '.join(usable)}")


def _fetch_weights(name: str) -> None:
    """Find (or download) a model name's released weights, as load_encoder would next. Not found offline, its
    message said to pass --checkpoint, which the demo does not take."""
    from vmm.factory import HF_PREFIX, default_pretrained, resolve_pretrained
    source = default_pretrained(name)
    if not source.startswith(HF_PREFIX):  # a shipped checkpoint, in the repository
        return
    file = source.rsplit("/", 1)[-1]
    resolve_pretrained(source, fix=f"save it as a model folder once, vmm.create_model({name!r}, pretrained="
                                   f"'/path/to/{file}').save_pretrained(DIR), and pass --model DIR (model=DIR); or "
                                   "leave --model out for the shipped vmm_nano")


def _run_locked(cfg: DemoConfig, out: Path, model: str, locks: list) -> dict:
    from index.ingest import build_library
    from retrieval.evaluate import EvalConfig, evaluate
    from retrieval.library import VideoLibrary, _write_model_file, load_encoder
    from vmm.data.synthetic import generate_corpus
    from vmm.factory import released_video_text_models

    t0 = time.perf_counter()
    # Loaded first, so a model that does not load (or a bad batch_size) is refused before anything is written.
    if not Path(model).exists() and model in released_video_text_models():  # a name, not a folder named like one
        _fetch_weights(model)
    encoder = load_encoder(model, None, cfg.device, batch_size=cfg.batch_size)
    _check_library_model(out / "library", encoder, cfg.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        locks.append(_DemoLock(out, cfg.out_dir))
        _check_demo_folder(out, cfg.out_dir)  # again: what a demo that ran since the first check may have left
        (out / DEMO_MARKER).write_text("written by vmm demo: later runs replace corpus/ and update library/ here\n")
    except OSError as e:
        raise VmmError(f"--out {cfg.out_dir} (out_dir): cannot write there ({e.strerror or e}); pass a folder you can "
                       "write to") from None

    _say(f"[1/4] generating {cfg.num_videos} captioned synthetic videos (seed {cfg.seed}) in {out / 'corpus'}")
    info = generate_corpus(out / "corpus", num_videos=cfg.num_videos, seed=cfg.seed, overwrite=True,
                           workers=cfg.workers)
    test = json.loads((info.out_dir / "test.json").read_text())
    _say(f"      {info.num_videos} videos, splits {info.split_sizes}, {info.num_order_pairs} order-sensitive pairs "
         f"({info.seconds_taken:.1f} s)")

    lib_dir = out / "library"
    _say(f"[2/4] vmm index {_arg(info.out_dir / 'videos')} --library {_arg(lib_dir)} --model {_arg(model)}")
    # model.json before the first commit, as vmm index writes it: written after indexing, a demo stopped midway
    # left a library of clips that `vmm search` refused as recording no model.
    summary = build_library([str(info.out_dir / "videos")], str(lib_dir), encoder, workers=cfg.workers,
                            batch_size=cfg.batch_size, progress=False,
                            on_open=lambda folder: _write_model_file(folder, model, None, None))
    _say(f"      {summary.line()}")

    _say(f"[3/4] vmm search {_arg(lib_dir)} \"...\" -k {cfg.k} --rerank {cfg.rerank}   "
         f"(right answer = the video the caption was written for)")
    found = 0
    with VideoLibrary.open(lib_dir) as lib:
        clips = len(lib)  # summary.clips counts only this run's new clips: 0 on a rerun
        for item in test[: cfg.queries]:
            hits = lib.search(text=item["caption"], k=cfg.k, rerank=cfg.rerank)
            target = str(info.out_dir / item["video"])
            rank = next((h.rank for h in hits if h.path == target), None)
            found += rank is not None
            _say(f"      \"{item['caption']}\"")
            for h in hits:
                mark = "  <- right answer" if h.path == target else ""
                _say(f"        {h.rank}. {h.score:+.3f}  {Path(h.path).name}  {h.start:.1f}-{h.end:.1f} s{mark}")

    _say("[4/4] vmm eval msrvtt on the held-out split and on its order-sensitive subset")
    rows = {}
    for name, ann in (("test", "test.json"), ("order-sensitive", "test_order.json")):
        if not (info.out_dir / ann).is_file() or not json.loads((info.out_dir / ann).read_text()):
            continue
        result = evaluate(EvalConfig(dataset="msrvtt", annotations=info.out_dir / ann, videos=info.out_dir,
                                     model=model, rerank_k=16, batch_size=cfg.batch_size,
                                     workers=cfg.workers if cfg.workers is not None else 1,
                                     device=cfg.device or "auto"))
        rep = result.report
        rows[name] = rep
        for row in ("emb", "rerank"):
            t2v, v2t = rep[row]["t2v"], rep[row]["v2t"]
            _say(f"      {name:<16} {row:<7} text->video R@1 {t2v['R@1']:5.1f} R@5 {t2v['R@5']:5.1f} "
                 f"R@10 {t2v['R@10']:5.1f} | video->text R@1 {v2t['R@1']:5.1f} R@5 {v2t['R@5']:5.1f} "
                 f"R@10 {v2t['R@10']:5.1f}  ({t2v['count']} texts, {rep['num_videos']} videos)")
    total = time.perf_counter() - t0
    asked = min(cfg.queries, len(test))
    found_line = f"{found}/{asked} queries found their video in the top {cfg.k} of {clips} clips" if asked else \
        f"{clips} clips in the library"
    _say(f"done in {total:.0f} s: {found_line}. Search it yourself: vmm search {_arg(lib_dir)} "
         "\"a blue circle moves right\"")
    return {"seconds": total, "queries_in_top_k": found, "eval": rows, "library": str(lib_dir)}


class _DemoLock:
    """The demo's claim on ``--out`` (:mod:`vmm.folder_lock`, ``.vmm-demo.lock``), held for its whole run: a second
    demo into the same folder is refused at once, where it regenerated the corpus under the first one's indexing
    and then failed on the library's lock."""

    def __init__(self, out: Path, given):
        from vmm import folder_lock
        path = out / LOCK_FILE
        self.fd = None
        try:
            self.fd = folder_lock.claim(path)
        except folder_lock.LockHeld as e:
            raise VmmError(f"--out {given} (out_dir) is in use by a vmm demo that is still running ({e.holder}); "
                           "wait for it to end, stop it, or pass another --out folder") from None
        except folder_lock.LocksUnsupported as e:  # NFS without its lock service: unguarded beats refusing
            _say(f"warning: --out {given}: cannot lock {path} ({e}); nothing keeps a second demo from writing there "
                 "while this one runs")
        except OSError as e:
            raise VmmError(f"--out {given} (out_dir): cannot write the demo's lock file {path} ({e.strerror or e}); "
                           "pass a folder you can write to") from None

    def release(self) -> None:
        from vmm import folder_lock
        folder_lock.release(self.fd)
        self.fd = None


def _arg(path) -> str:
    """A path as the shell takes it, so the commands the demo prints run when pasted (a space split them)."""
    return shlex.quote(str(path))


def _check_library_model(library: Path, encoder, given) -> None:
    """A demo library of another model in --out is refused before the corpus is regenerated (indexing refused it
    only after that)."""
    from index.catalog import LibraryManifest
    from index.library import read_manifest_copy
    have = read_manifest_copy(str(library))
    if have is None:
        return  # no library yet (or a damaged copy of its manifest: indexing names that)
    problem = have.model_mismatch(LibraryManifest.for_encoder(encoder, window=10.0, stride=5.0, max_seconds=None))
    if problem:
        raise VmmError(f"--out {given} (out_dir) holds a demo library built with model {have.model_name}, not "
                       f"{encoder.name} ({problem}); pass a new --out folder for this model")


def _check_demo_folder(out: Path, given) -> None:
    if (out / DEMO_MARKER).is_file():
        return
    # An empty folder has nothing to lose.
    taken = [name for name in ("corpus", "library") if os.path.lexists(out / name)
             and (os.path.islink(out / name) or not (out / name).is_dir() or os.listdir(out / name))]
    if taken:
        raise VmmError(f"--out {given} (out_dir) already holds {taken[0]}/, and vmm demo did not make this folder (no "
                       f"{DEMO_MARKER} file): each run replaces corpus/ and indexes into library/ there; pass a new "
                       "or empty folder (an older vmm's demo output: delete it first)")
