"""Training data: annotation lists, tar shards, decoding, the seeded epoch plan, corrupt samples."""
from __future__ import annotations

import io
import json
import os
import random
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import vmm
from vmm.errors import VmmError
from vmm.training.data import (Collate, EpochPlan, PretrainDataset, load_annotation_corpus, load_tar_corpus,
                               rand_segment_indices)
from vmm.transforms import TrainTransform

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from vmm.data.synthetic import generate_corpus
    root = tmp_path_factory.mktemp("data")
    generate_corpus(root, num_videos=10, seed=1, size=32, seconds=1.0, workers=1)
    return root


def test_rand_sampling_one_frame_per_segment():
    rng = random.Random(0)
    for vlen, n in [(80, 8), (16, 8), (17, 8), (1000, 4)]:
        idx = rand_segment_indices(vlen, n, rng)
        edges = np.linspace(0, vlen, n + 1).astype(int)
        # the official ranges end one frame early: a segment's last frame is never drawn
        assert all(edges[i] <= idx[i] < edges[i + 1] - 1 for i in range(n))
    assert rand_segment_indices(16, 8, rng) == list(range(0, 16, 2))  # segments of 2 frames: their first
    assert rand_segment_indices(3, 8, rng) == [0, 1, 2, 2, 2, 2, 2, 2]  # short video: last index repeated
    draws = {tuple(rand_segment_indices(80, 8, random.Random(s))) for s in range(20)}
    assert len(draws) > 15
    assert not any(i % 10 == 9 for d in draws for i in d)


def test_rand_sampling_falls_back_to_distinct_sorted_frames():
    # the official code's fallback when a segment has fewer than 2 frames: N distinct frames of the whole video
    for vlen in (8, 9, 12, 15):
        seen = set()
        for s in range(30):
            idx = rand_segment_indices(vlen, 8, random.Random(s))
            assert idx == sorted(set(idx)) and len(idx) == 8 and 0 <= idx[0] and idx[-1] < vlen
            seen.add(tuple(idx))
        assert len(seen) > 1 or vlen == 8


def test_annotation_dataset_decodes_deterministic_clips(corpus):
    c = load_annotation_corpus(str(corpus / "train.json"), str(corpus))
    ds = PretrainDataset([c], 4, TrainTransform(32), seed=5)
    a, b, other_epoch = ds[(0, 0, 3)], ds[(0, 0, 3)], ds[(1, 0, 3)]
    assert a["video"].shape == (3, 4, 32, 32) and a["kind"] == "video" and a["failed"] == []
    assert torch.equal(a["video"], b["video"])  # the key decides frames, crop and flip
    assert not torch.equal(a["video"], other_epoch["video"])
    assert a["caption"] == json.loads((corpus / "train.json").read_text())[3]["caption"]


def test_corrupt_sample_is_replaced_and_counted(corpus, tmp_path):
    entries = json.loads((corpus / "train.json").read_text())
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    for e in entries:
        e["video"] = str(corpus / e["video"])
    entries.insert(0, {"video": str(tmp_path / "broken.mp4"), "caption": "broken"})
    (tmp_path / "anno.json").write_text(json.dumps(entries))
    c = load_annotation_corpus(str(tmp_path / "anno.json"), "/")
    sample = PretrainDataset([c], 4, TrainTransform(32), seed=0)[(0, 0, 0)]
    assert len(sample["failed"]) == 1 and "broken.mp4" in sample["failed"][0]
    assert sample["caption"] != "broken" and sample["video"].shape == (3, 4, 32, 32)
    only_broken = tmp_path / "only.json"
    only_broken.write_text(json.dumps(entries[:1]))
    with pytest.raises(VmmError, match="3 corrupt samples in a row"):
        PretrainDataset([load_annotation_corpus(str(only_broken), "/")], 4, TrainTransform(32), 0,
                        max_retries=2)[(0, 0, 0)]


def test_corrupt_samples_in_a_row_in_a_decoding_worker_are_one_line(tmp_path):
    """With decoding workers (the recipes' default) the error came back wrapped in the worker's traceback, and
    python -m vmm.train printed that traceback after 'error:'."""
    from vmm.training.data import EpochPlan, batches, make_loader
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    (tmp_path / "anno.json").write_text(json.dumps([{"video": "broken.mp4", "caption": "broken"}] * 2))
    dataset = PretrainDataset([load_annotation_corpus(str(tmp_path / "anno.json"), str(tmp_path))], 4,
                              TrainTransform(32), 0, max_retries=2)
    plan = EpochPlan([2], [1.0], batch_size=2, world=1, seed=0)
    loader = make_loader(dataset, plan, 0, 0, collate=list, num_workers=1)
    with pytest.raises(VmmError) as raised:
        next(iter(batches(loader)))
    assert str(raised.value).startswith("3 corrupt samples in a row in corpus anno (last: ")
    assert "\n" not in str(raised.value) and "Traceback" not in str(raised.value)


def test_decoding_workers_are_capped_at_the_usable_cpus_with_the_same_batches(corpus, monkeypatch):
    """The released recipes' data.num_workers 12 on a 2-core machine started 12 decoders (and PyTorch's warning
    about them); the batches are the same whatever the count, each sample drawing from its own seed."""
    import warnings

    import index.ingest
    from vmm.training.data import EpochPlan, batches, make_loader
    dataset = PretrainDataset([load_annotation_corpus(str(corpus / "train.json"), str(corpus))], 2,
                              TrainTransform(32), 0)
    plan = EpochPlan([4], [1.0], batch_size=2, world=1, seed=0)
    monkeypatch.setattr(index.ingest, "usable_cpus", lambda: 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "This DataLoader will create 12 worker processes in total..."
        loader = make_loader(dataset, plan, 0, 0, collate=list, num_workers=12)
        assert loader.num_workers == 2
        capped = [[s["video"] for s in batch] for batch in batches(loader)]
    alone = [[s["video"] for s in batch] for batch in batches(make_loader(dataset, plan, 0, 0, list, num_workers=0))]
    assert len(capped) == len(alone) == 2
    assert all(torch.equal(a, b) for x, y in zip(capped, alone) for a, b in zip(x, y))


def test_a_missing_decord_is_named_at_start_up(corpus, monkeypatch):
    """Without decord every sample failed to decode, and the run stopped on "21 corrupt samples in a row"."""
    from types import SimpleNamespace

    from vmm.training.data import load_corpora
    source = SimpleNamespace(anno=str(corpus / "train.json"), root=str(corpus), weight=1.0, name=None)
    assert load_corpora([source])[0].kind == "video"
    monkeypatch.setitem(sys.modules, "decord", None)  # import decord -> ImportError
    with pytest.raises(VmmError, match=r"^data.train\[0\] holds videos, which training decodes with decord, but "
                                       r"it cannot be imported \(.*\); install it \(pip install decord\)$"):
        load_corpora([source])


def _write_shard(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_tar_shards_read_by_offset(corpus, tmp_path):
    entries = json.loads((corpus / "train.json").read_text())
    videos = [(corpus / e["video"]).read_bytes() for e in entries[:3]]
    _write_shard(tmp_path / "part-000.tar", {"a/clip0.mp4": videos[0], "a/clip0.txt": b"first caption\n",
                                             "a/clip1.mp4": videos[1],
                                             "a/clip1.json": json.dumps({"caption": ["x one", "x two"]}).encode(),
                                             "a/orphan.mp4": videos[2]})  # no caption: skipped
    _write_shard(tmp_path / "part-001.tar", {"clip2.mp4": videos[2], "clip2.txt": b"third"})
    c = load_tar_corpus(str(tmp_path / "part-{000..001}.tar"))
    assert len(c) == 3 and c.kind == "video" and c.captions == [["first caption"], ["x one", "x two"], ["third"]]
    ds = PretrainDataset([c], 4, TrainTransform(32), seed=0, caption_sampling="all")
    assert ds.num_units(0) == 4
    samples = [ds[(0, 0, u)] for u in range(4)]
    assert [s["sample_id"] for s in samples] == [0, 1, 1, 2] and all(not s["failed"] for s in samples)
    direct = load_annotation_corpus(str(corpus / "train.json"), str(corpus))
    same = PretrainDataset([direct], 4, TrainTransform(32), seed=0)[(0, 0, 0)]["video"]
    tar_video = PretrainDataset([c], 4, TrainTransform(32), seed=0)[(0, 0, 0)]["video"]
    assert torch.equal(same, tar_video)  # same bytes, same key: same pixels
    with pytest.raises(VmmError, match="part-9.tar not found"):
        load_tar_corpus(str(tmp_path / "part-9.tar"))


def test_image_corpus_gives_one_frame(tmp_path):
    from PIL import Image
    Image.fromarray(np.full((40, 50, 3), 200, np.uint8)).save(tmp_path / "im.jpg")
    (tmp_path / "img.json").write_text(json.dumps([{"image": "im.jpg", "caption": "a grey picture"}]))
    c = load_annotation_corpus(str(tmp_path / "img.json"), str(tmp_path))
    sample = PretrainDataset([c], 8, TrainTransform(32), seed=0)[(0, 0, 0)]
    assert c.kind == "image" and sample["video"].shape == (3, 1, 32, 32)
    batch = Collate(vmm.get_tokenizer("vmm_nano"), 8)([sample, sample])
    assert batch["video"].shape == (2, 3, 1, 32, 32) and batch["input_ids"].shape == (2, 8)


def test_epoch_plan_shards_one_corpus_per_step_across_ranks():
    plan = EpochPlan([10, 7], [1.0, 2.0], batch_size=2, world=2, seed=3, grad_accum=1)
    # corpus 0: 10 // 4 = 2 global batches; corpus 1: 14 // 4 = 3 -> 5 steps per epoch
    assert plan.steps_per_epoch == 5
    g = plan.global_batches(0)
    assert len(g) == 5 and all(len({c for _, c, _ in b}) == 1 for b in g)
    r0, r1 = plan.rank_batches(0, 0), plan.rank_batches(0, 1)
    for a, b, full in zip(r0, r1, g):
        assert a + b == full and not set(a) & set(b)
    units0 = [u for b in g if b[0][1] == 0 for _, _, u in b]
    assert len(set(units0)) == len(units0) == 8  # no repeats within an epoch at weight 1
    assert g == plan.global_batches(0) and g != plan.global_batches(1)
    assert sum(1 for b in g if b[0][1] == 1) == 3  # weight 2 doubles corpus 1
    assert EpochPlan([10, 7], [1.0, 2.0], 2, 2, 3, grad_accum=2).batches_per_epoch == 4
    with pytest.raises(VmmError, match="fewer than 32 for one optimizer step"):
        EpochPlan([10], [1.0], batch_size=8, world=4, seed=0)


def test_corpora_of_one_kind_share_batches_as_the_official_loader_concatenates_them():
    """Spec 3.5's 17M/25M recipes list several image corpora; the official loader concatenates the datasets of
    a media type, so an image batch mixes them. Videos never meet images, and weights still count."""
    from vmm.training.data import Corpus, training_plan
    corpora = [Corpus("webvid", "video", [["v"]] * 24), Corpus("cc3m", "image", [["a"]] * 40),
               Corpus("coco", "image", [["b"]] * 40, weight=0.5), Corpus("sbu", "image", [["c"]] * 20)]
    plan = training_plan(corpora, "random", batch_size=4, world=2, seed=7)
    assert plan.steps_per_epoch == 24 // 8 + (40 + 20 + 20) // 8
    for epoch in range(3):
        batches = plan.global_batches(epoch)
        assert len(batches) == plan.steps_per_epoch and batches == plan.global_batches(epoch)
        kinds = [{corpora[c].kind for _, c, _ in b} for b in batches]
        assert all(len(k) == 1 for k in kinds) and kinds.count({"video"}) == 3
        image = [b for b in batches if corpora[b[0][1]].kind == "image"]
        assert sum(len({c for _, c, _ in b}) > 1 for b in image) >= 5  # most of the 10 image batches mix corpora
        seen = [(c, u) for b in image for _, c, u in b]
        assert len(set(seen)) == len(seen) == 80
        assert sum(c == 2 for c, _ in seen) == 20 and sum(c == 3 for c, _ in seen) == 20  # coco at weight 0.5
    # A kind with one corpus keeps the plan it had before pooling.
    single = training_plan(corpora[:2], "random", batch_size=4, world=2, seed=7)
    assert single.global_batches(1) == EpochPlan([24, 40], [1.0, 1.0], 4, 2, 7).global_batches(1)


def test_group_key_puts_each_group_in_one_batch_and_changes_nothing_else(tmp_path):
    import json
    from vmm.training import data as D
    from vmm.training.config import SourceConfig
    (tmp_path / "v.mp4").write_bytes(b"x")
    entries = [{"video": "v.mp4", "caption": f"c{i}", **({"pair_id": i // 2} if i < 24 else {})} for i in range(40)]
    (tmp_path / "a.json").write_text(json.dumps(entries))
    grouped = D.load_corpora([SourceConfig(anno=str(tmp_path / "a.json"), root=str(tmp_path), group_key="pair_id")])
    plain = D.load_corpora([SourceConfig(anno=str(tmp_path / "a.json"), root=str(tmp_path))])
    assert grouped[0].groups[:3] == [0, 0, 1] and grouped[0].groups[30] is None and plain[0].groups is None
    plan = D.EpochPlan([40], [1.0], batch_size=8, world=1, seed=3, unit_groups=D.unit_groups(grouped, "random"))
    for epoch in range(3):
        batches = plan.global_batches(epoch)
        assert sorted(u for b in batches for _, _, u in b) == list(range(40))
        where = {u: i for i, b in enumerate(batches) for _, _, u in b}
        together = sum(where[2 * p] == where[2 * p + 1] for p in range(12))
        assert together >= 9  # only a pair straddling a batch boundary can be split
    base = D.EpochPlan([40], [1.0], batch_size=8, world=1, seed=3)
    assert base.global_batches(0) == D.EpochPlan([40], [1.0], 8, 1, 3, unit_groups=[None]).global_batches(0)
    with pytest.raises(VmmError, match="no entry .* has the key 'nope'"):
        D.load_corpora([SourceConfig(anno=str(tmp_path / "a.json"), root=str(tmp_path), group_key="nope")])


def test_a_big_corpus_checks_a_seeded_sample_of_its_media(corpus, tmp_path, monkeypatch):
    """Past FULL_MEDIA_CHECK entries only MEDIA_SAMPLE of them are stat-ed: the same ones on every start."""
    from vmm.training import data as D
    monkeypatch.setattr(D, "FULL_MEDIA_CHECK", 300)
    monkeypatch.setattr(D, "MEDIA_SAMPLE", 100)
    real = json.loads((corpus / "train.json").read_text())[0]["video"]
    entries = [{"video": real if i % 5 else f"videos/gone_{i}.mp4", "caption": f"c{i}"} for i in range(1000)]
    (tmp_path / "big.json").write_text(json.dumps(entries))
    errors = []
    for _ in range(2):
        with pytest.raises(VmmError, match=r"of 100 media files sampled from the 1000 entries") as err:
            load_annotation_corpus(str(tmp_path / "big.json"), str(corpus))
        errors.append(str(err.value))
    assert errors[0] == errors[1]
    missing = int(re.search(r"(\d+) of 100", errors[0]).group(1))
    assert 8 <= missing <= 35  # a fifth of the entries are gone
    allowed = load_annotation_corpus(str(tmp_path / "big.json"), str(corpus), max_missing=0.5)
    assert len(allowed) == 1000 and allowed.missing_note.startswith(f"warning: data.train[0]: {missing} of 100")
    monkeypatch.setattr(D, "FULL_MEDIA_CHECK", 1000)
    with pytest.raises(VmmError, match="200 of 1000 media files listed in"):
        load_annotation_corpus(str(tmp_path / "big.json"), str(corpus))



CTRL_C_SCRIPT = """
import os, signal, sys, threading, time, traceback
import vmm
from vmm.training.data import (Collate, EpochPlan, PretrainDataset, batches, load_annotation_corpus,
                               make_loader)
from vmm.transforms import TrainTransform

class Slow(PretrainDataset):
    def __getitem__(self, key):
        time.sleep(0.3)
        return super().__getitem__(key)

corpus = load_annotation_corpus(sys.argv[1], sys.argv[2])
plan = EpochPlan([len(corpus)], [1.0], batch_size=2, world=1, seed=0)
dataset = Slow([corpus], 4, TrainTransform(32), seed=0)
loader = lambda: make_loader(dataset, plan, 0, 0, Collate(vmm.get_tokenizer("vmm_nano"), 16), num_workers=2)

# 1. A terminal's Ctrl-C reaches every process of the group; this one has had its share, the workers go on,
# even when it is pressed twice.
taken = batches(loader())
first = next(taken)
signal.signal(signal.SIGINT, signal.SIG_IGN)
for _ in range(2):
    os.killpg(0, signal.SIGINT)
    time.sleep(0.2)
print(1 + sum(1 for _ in taken), "batches of", plan.batches_per_epoch, flush=True)
signal.signal(signal.SIGINT, signal.default_int_handler)

# 2. Ctrl-C while the first batch is on its way (0.6 s of decoding): taken whole, then delivered.
threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
try:
    next(batches(loader()))
except KeyboardInterrupt as e:
    print("interrupted in", traceback.extract_tb(e.__traceback__)[-1].name, flush=True)

# 3. Ctrl-C seen while the workers fork, inside an at-fork callback.
def press_once():
    if not pressed:
        pressed.append(True)
        os.kill(os.getpid(), signal.SIGINT)
pressed = []
os.register_at_fork(before=press_once)
try:
    next(batches(loader()))
except KeyboardInterrupt:
    print("interrupted at the start")
"""


def test_ctrl_c_reaches_the_main_process_whole(corpus):
    """Workers used to die of the Ctrl-C (the run then ended on 'DataLoader worker exited unexpectedly'); one
    seen while they forked was printed as 'Exception ignored' and lost."""
    run = subprocess.run([sys.executable, "-c", CTRL_C_SCRIPT, str(corpus / "train.json"), str(corpus)], cwd=REPO,
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)),
                         start_new_session=True, timeout=120)
    assert run.stderr == "" and run.returncode == 0, run.stderr[-3000:]
    assert run.stdout == "4 batches of 4\ninterrupted in ctrl_c_held\ninterrupted at the start\n"


def test_a_missing_video_fails_without_the_decoders_own_stderr_line(tmp_path, capfd):
    """A file data.max_missing let through is replaced like a corrupt one; decord used to print its C++
    "ERROR opening ..." line to stderr every time the file was drawn, beside vmm's own warning."""
    from vmm.training.data import read_video_frames
    with pytest.raises(FileNotFoundError):
        read_video_frames(str(tmp_path / "gone.mp4"), 4, random.Random(0))
    assert "ERROR opening" not in capfd.readouterr().err


@pytest.mark.parametrize("name, codec, fmt, fps, bframes, gop, options", [
    ("dvd.mpg", "mpeg2video", None, 25, None, None, None),  # decord: every frame came out as the first
    ("camcorder.m2ts", "libx264", "mpegts", 25, None, None, {"x264-params": "keyint=6:bframes=3"}),  # shifted
    ("xvid.avi", "mpeg4", None, 10, 2, 6, None),  # open GOPs, and B-frames without presentation times
    ("closed-gop.mp4", "libx264", None, 10, None, None, {"x264-params": "keyint=6:bframes=3"}),  # decord, right
])
def test_training_draws_the_frames_it_samples_from_files_decord_miscounts(tmp_path, name, codec, fmt, fps, bframes,
                                                                            gop, options):
    """Training decoded every file with decord, which returns other frames than asked for (no error) from MPEG
    program/transport streams, open GOPs and AVI B-frames: a DVD rip trained on its first frame only. Such files
    are decoded by PyAV now; the others still by decord, as the official loader does."""
    from tests.test_index_decode import _write_counter_stream
    from vmm.training.data import rand_segment_indices, read_video_frames
    path = _write_counter_stream(str(tmp_path / name), codec, fmt, fps, bframes, gop, options)
    for seed in range(3):
        frames = read_video_frames(path, 8, random.Random(seed))
        shown = np.round(frames.astype(float).mean(axis=(1, 2, 3)) / 6).astype(int).tolist()
        assert frames.shape == (8, 48, 64, 3) and frames.dtype == np.uint8
        assert shown == rand_segment_indices(40, 8, random.Random(seed)), (name, seed)


@pytest.mark.parametrize("width", [48, 72, 64])
def test_widths_decord_cannot_copy_out_are_read_by_pyav_with_the_same_draw(tmp_path, width):
    """decord 0.6 fails on frames 48 or 72 px wide ("Check failed: from_size == to_size"): every draw of such a
    video was skipped as corrupt, so a corpus of them did not train at all. PyAV reads them, drawing the same
    frames; a width decord reads is still decoded by decord."""
    from vmm.data.synthetic import write_video
    from vmm.training.data import _read_frames_in_order, read_video_frames
    frames = np.stack([np.full((32, width, 3), 6 * i, np.uint8) for i in range(20)])
    path = str(tmp_path / f"{width}.mp4")
    write_video(frames, path, fps=10)
    for seed in range(3):
        got = read_video_frames(path, 4, random.Random(seed))
        assert got.shape == (4, 32, width, 3)
        assert np.array_equal(got, _read_frames_in_order(path, 4, random.Random(seed)))


def test_annotation_list_with_a_byte_order_mark_loads_and_other_encodings_are_named(tmp_path):
    """Notepad and PowerShell save UTF-8 with a byte-order mark, which was refused as 'not valid JSON'."""
    (tmp_path / "a.mp4").write_bytes(b"x")
    anno = tmp_path / "anno.json"
    anno.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"video": "a.mp4", "caption": "caf\u00e9"}]).encode())
    assert load_annotation_corpus(str(anno), str(tmp_path)).captions == [["caf\u00e9"]]
    anno.write_bytes(json.dumps([{"video": "a.mp4", "caption": "caf\u00e9"}], ensure_ascii=False).encode("latin-1"))
    with pytest.raises(VmmError, match=r"^data.train\[0\].anno: .*anno.json is not UTF-8 text \(.*\); save it as "
                                       r"UTF-8$"):
        load_annotation_corpus(str(anno), str(tmp_path))


@pytest.mark.parametrize("caption", ["...", "?!", "-- / --", " \t", "\u3000", ["a dog", "(*)"]])
def test_a_caption_with_no_words_once_cleaned_is_refused(tmp_path, caption):
    """Only blank strings were refused; "..." passed and, cleaned, trained on [CLS] [SEP] like a blank one."""
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "anno.json").write_text(json.dumps([{"video": "a.mp4", "caption": "fine"},
                                                    {"video": "a.mp4", "caption": caption}]))
    with pytest.raises(VmmError, match=r"entry 1 of .*anno.json \(a.mp4\) has an empty caption \('.*', once "
                                       r"cleaned\); write one or remove the entry$"):
        load_annotation_corpus(str(tmp_path / "anno.json"), str(tmp_path))
    # Emoji, CJK and unicode quotes are words to the tokenizer (the official cleaning keeps them).
    (tmp_path / "anno.json").write_text(json.dumps([{"video": "a.mp4", "caption": c} for c in
                                                    ["\U0001f600", "\u732b", "\u201c\u201d", "<person>"]]))
    assert len(load_annotation_corpus(str(tmp_path / "anno.json"), str(tmp_path))) == 4


def test_tar_keys_without_media_or_a_caption_with_words_are_skipped_and_counted(corpus, tmp_path):
    """Blank captions in a .json list were trained on, and keys without a usable caption or media were dropped
    without a word."""
    video = (corpus / json.loads((corpus / "train.json").read_text())[0]["video"]).read_bytes()
    _write_shard(tmp_path / "s.tar", {"k.mp4": video, "k.txt": b"ok", "l.mp4": video,
                                      "l.json": json.dumps(["", "...", "fine"]).encode(),
                                      "m.mp4": video, "m.json": b'{"text": "not the caption key"}',
                                      "n.mp4": video, "n.txt": b" ?! \n", "o.txt": b"no media",
                                      "__meta__.cls": b"not a sample"})
    c = load_tar_corpus(str(tmp_path / "s.tar"))
    assert c.captions == [["ok"], ["fine"]]
    assert c.missing_note == (f"warning: data.train[0]: 3 of 5 samples in the shards are skipped: no media member, "
                              f"or no caption with words in key.txt|key.json (e.g. {tmp_path / 's.tar'}:m)")
    _write_shard(tmp_path / "t.tar", {"k.mp4": video, "k.txt": b"ok"})
    assert load_tar_corpus(str(tmp_path / "t.tar")).missing_note is None


def test_tar_captions_written_with_a_byte_order_mark_are_read(corpus, tmp_path):
    """Notepad's and PowerShell's UTF-8 starts with a BOM: json refused every .json caption, so every key was skipped
    ("hold no samples"), and a .txt caption began with an invisible U+FEFF."""
    video = (corpus / json.loads((corpus / "train.json").read_text())[0]["video"]).read_bytes()
    bom = "\ufeff".encode()
    _write_shard(tmp_path / "s.tar", {"k.mp4": video, "k.json": bom + json.dumps({"caption": "a red disc"}).encode(),
                                      "l.mp4": video, "l.txt": bom + "un café\r\n".encode()})
    c = load_tar_corpus(str(tmp_path / "s.tar"))
    assert c.captions == [["a red disc"], ["un café"]] and c.missing_note is None


def test_group_ids_that_are_json_lists_are_refused_in_one_line(tmp_path):
    """A list or object as group id reached the epoch plan, which raised "TypeError: unhashable type"."""
    from vmm.training.data import training_plan
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "a.json").write_text(json.dumps([{"video": "a.mp4", "caption": f"c{i}", "g": [i // 2]}
                                                 for i in range(8)]))
    with pytest.raises(VmmError, match=r"^data.train\[0\].group_key: entry 0 of .*a.json has g=\[0\]; a group id "
                                       r"must be a string or a number$"):
        training_plan([load_annotation_corpus(str(tmp_path / "a.json"), str(tmp_path), group_key="g")], "random",
                      2, 1, 0).global_batches(0)


def test_tar_videos_decord_cannot_copy_out_are_read_by_pyav_with_the_same_draw(tmp_path):
    """The PyAV fallback for widths decord 0.6 cannot copy out (48 px) took paths only: a tar corpus of such
    videos failed every draw and stopped on "corrupt samples in a row"."""
    from vmm.data.synthetic import write_video
    write_video(np.stack([np.full((32, 48, 3), 6 * i, np.uint8) for i in range(20)]), str(tmp_path / "v.mp4"), fps=10)
    _write_shard(tmp_path / "s.tar", {"k.mp4": (tmp_path / "v.mp4").read_bytes(), "k.txt": b"a clip"})
    (tmp_path / "anno.json").write_text(json.dumps([{"video": "v.mp4", "caption": "a clip"}]))
    from_tar = PretrainDataset([load_tar_corpus(str(tmp_path / "s.tar"))], 4, TrainTransform(32), 0, max_retries=0)
    from_file = PretrainDataset([load_annotation_corpus(str(tmp_path / "anno.json"), str(tmp_path))], 4,
                                TrainTransform(32), 0)
    for epoch in range(2):
        sample = from_tar[(epoch, 0, 0)]
        assert sample["failed"] == [] and torch.equal(sample["video"], from_file[(epoch, 0, 0)]["video"])


def test_an_audio_only_file_is_skipped_as_having_no_video_stream(tmp_path):
    # decord refuses it and PyAV took its missing video stream for one: the skip said "AttributeError: 'NoneType'
    # object has no attribute 'codec_context'".
    from index.decode import DecodeFailure
    from tests.videos import write_audio_only
    from vmm.training.data import read_video_frames
    path = write_audio_only(str(tmp_path / "song.mp4"))
    with pytest.raises(DecodeFailure, match="^no video stream in the container$"):
        read_video_frames(path, 4, random.Random(0))
