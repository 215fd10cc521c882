"""The procedural corpus: real encoded files whose captions match what the frames show.

One small corpus (40 clips, 64x64, 24 frames) is generated per test session and
checked from decoded pixels; determinism is checked against a second and a third
generation (another worker count, another seed).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import av
import decord
import numpy as np
import pytest

from tests.conftest import terminal_sigint
from vmm.data import synthetic as syn
from vmm.data.synthetic import captions, scene
from vmm.data.synthetic import corpus as corpus_module
from vmm.errors import VmmError

REPO = Path(__file__).resolve().parents[1]
# 40 clips: train 20, val 4, test 16 of which 14 form 7 pairs (one of each pair kind).
CORPUS = dict(num_videos=40, seed=0, splits=(0.5, 0.1, 0.4), size=64, fps=8, seconds=3.0, order_fraction=0.875)
JSON_FILES = ("train.json", "val.json", "test.json", "test_paragraph.json", "test_order.json", "meta.json")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    info = syn.generate_corpus(out, workers=1, **CORPUS)
    assert info.num_videos == 40 and info.num_frames == 24
    return out


@pytest.fixture(scope="module")
def meta(corpus) -> dict:
    return {v["video"]: v for v in json.loads((corpus / "meta.json").read_text())["videos"]}


def decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def colour_masks(frame: np.ndarray, background: np.ndarray) -> dict[str, np.ndarray]:
    """Per object colour, the pixels nearer to it than to the background and to every other colour."""
    names = list(scene.COLORS)
    refs = np.array([scene.COLORS[n] for n in names], np.float64)
    pixels = frame.astype(np.float64)
    to_colours = np.linalg.norm(pixels[:, :, None, :] - refs[None, None], axis=-1)
    to_background = np.linalg.norm(pixels - background, axis=-1)
    nearest = to_colours.argmin(-1)
    is_object = to_colours.min(-1) < np.minimum(to_background, 60.0)
    return {name: is_object & (nearest == i) for i, name in enumerate(names)}


def words(caption: str) -> list[str]:
    return re.findall(r"[a-z]+", caption)


def caption_colours(caption: str) -> set[str]:
    return set(words(caption)) & set(scene.COLORS)


MOVE_PATTERN = re.compile(r"\b(?:{verbs}) (?:\w+ )?(?:{ways})\b".format(
    verbs="|".join(captions.MOVE_VERBS),
    ways="|".join(sorted((p for ps in captions.DIRECTION_PHRASES.values() for p in ps), key=len, reverse=True))))


def caption_directions(caption: str) -> list[str]:
    """Directions of the moves a caption states, in the order it states them."""
    found = []
    for match in MOVE_PATTERN.finditer(caption):
        text = match.group(0)
        found += [d for d, phrases in captions.DIRECTION_PHRASES.items()
                  if any(text.endswith(" " + p) for p in phrases)]
    return found


# ---------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_files_and_frames(corpus, tmp_path):
    again = tmp_path / "again"
    syn.generate_corpus(again, workers=2, **CORPUS)  # another worker count must not matter
    for name in JSON_FILES:
        assert (corpus / name).read_bytes() == (again / name).read_bytes(), name
    videos = sorted(p.name for p in (corpus / "videos").iterdir())
    assert videos == sorted(p.name for p in (again / "videos").iterdir())
    for name in videos:
        assert np.array_equal(decode(corpus / "videos" / name), decode(again / "videos" / name)), name
        assert (corpus / "videos" / name).read_bytes() == (again / "videos" / name).read_bytes(), name


def test_different_seed_gives_different_corpus(corpus, tmp_path):
    other = tmp_path / "other"
    syn.generate_corpus(other, workers=1, **dict(CORPUS, seed=1))
    first = json.loads((corpus / "train.json").read_text())
    second = json.loads((other / "train.json").read_text())
    assert len(first) == len(second)
    assert sum(a["caption"] != b["caption"] for a, b in zip(first, second)) > len(first) // 2
    name = first[0]["video"]
    assert not np.array_equal(decode(corpus / name), decode(other / name))


# ---------------------------------------------------------------------------- files and splits


def test_videos_decode_with_decord_at_the_asked_size_rate_and_length(corpus):
    videos = sorted((corpus / "videos").glob("*.mp4"))
    assert len(videos) == 40
    for path in videos:
        reader = decord.VideoReader(str(path))
        assert len(reader) == 24
        assert reader.get_avg_fps() == pytest.approx(8.0)
        frames = reader.get_batch(list(range(24))).asnumpy()
        assert frames.shape == (24, 64, 64, 3) and frames.dtype == np.uint8
        assert frames.std() > 5  # something is drawn, not a blank clip


def test_decoded_frames_match_the_rendered_frames(corpus, meta):
    for name, entry in list(meta.items())[:10]:
        rendered = syn.render_frames(syn.VideoSpec.from_dict(entry["spec"])).astype(np.float64)
        assert np.abs(decode(corpus / name) - rendered).mean() < 4.0, name


def test_splits_are_disjoint_sized_as_asked_and_cover_every_file(corpus):
    splits = {s: json.loads((corpus / f"{s}.json").read_text()) for s in ("train", "val", "test")}
    assert {s: len(v) for s, v in splits.items()} == {"train": 20, "val": 4, "test": 16}
    names = [{e["video"] for e in v} for v in splits.values()]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    on_disk = {f"videos/{p.name}" for p in (corpus / "videos").iterdir()}
    assert names[0] | names[1] | names[2] == on_disk
    for entries in splits.values():
        for entry in entries:
            assert isinstance(entry["caption"], str) and entry["caption"]
            assert set(entry) <= {"video", "caption", "order_sensitive", "pair_id"}
    test_captions = [e["caption"] for e in splits["test"]]
    assert len(set(test_captions)) == len(test_captions)


def test_annotation_files_load_with_the_official_format_loader(corpus):
    from retrieval.annotations import load_retrieval_dataset

    single = load_retrieval_dataset(corpus / "test.json", corpus, "msrvtt")
    paragraph = load_retrieval_dataset(corpus / "test_paragraph.json", corpus, "didemo")
    order = load_retrieval_dataset(corpus / "test_order.json", corpus, "msrvtt")
    assert len(single.videos) == len(single.texts) == len(paragraph.texts) == 16
    assert single.videos == paragraph.videos and len(order.videos) == 14



def test_held_out_captions_are_unique_even_where_distinct_clips_read_the_same():
    # Two test clips that differed only in a background the caption left out got one caption ("a small cyan
    # cross becomes larger"): retrieval had two right answers. This plan had one such pair.
    config = corpus_module.CorpusConfig(num_videos=1000, seed=0, splits=(0, 0, 1), size=32, seconds=0.8,
                                        order_fraction=0.0)
    captions = [clip.description.caption for clip in corpus_module._plan(config)]
    assert len(set(captions)) == len(captions) == 1000

def test_paragraphs_have_one_sentence_per_event_plus_still_objects(corpus, meta):
    paragraphs = json.loads((corpus / "test_paragraph.json").read_text())
    tests = json.loads((corpus / "test.json").read_text())
    assert [p["video"] for p in paragraphs] == [t["video"] for t in tests]
    for item in paragraphs:
        spec = syn.VideoSpec.from_dict(meta[item["video"]]["spec"])
        assert len(item["caption"]) == len(spec.events) + len(spec.static_objects())
        assert all(isinstance(s, str) and s for s in item["caption"])


def test_refuses_folders_it_did_not_write_and_needs_overwrite_for_its_own(corpus, tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(VmmError, match="notes.txt"):
        syn.generate_corpus(user, num_videos=4, workers=1)
    assert (user / "notes.txt").read_text() == "keep me"

    own = tmp_path / "own"
    syn.generate_corpus(own, num_videos=12, seed=3, workers=1)
    with pytest.raises(VmmError, match="--overwrite"):
        syn.generate_corpus(own, num_videos=4, workers=1)
    syn.generate_corpus(own, num_videos=4, seed=3, workers=1, overwrite=True)
    assert len(list((own / "videos").iterdir())) == 4  # stale clips of the larger corpus are gone


@pytest.mark.parametrize("names", [("train.json", "test.json"), ("meta.json", "train.json")])
def test_annotation_files_of_the_same_names_are_not_taken_for_its_own(tmp_path, names):
    # A folder of a user's annotations (train.json, test.json: the official names) was taken for what a failed
    # run had left, and overwritten without a word; with a meta.json of its own, --overwrite deleted them.
    folder = tmp_path / "annotations"
    folder.mkdir()
    for name in names:
        (folder / name).write_text('[{"video": "video7010.mp4", "caption": "a man is singing"}]')
    for overwrite in (False, True):
        with pytest.raises(VmmError, match=r"did not write \(e\.g\. (train|test|meta)\.json\); choose an empty"):
            syn.generate_corpus(folder, num_videos=3, workers=1, overwrite=overwrite)
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)
    assert all("a man is singing" in (folder / name).read_text() for name in names)


def test_overwrite_works_in_a_folder_a_file_browser_has_opened(tmp_path):
    # Finder's .DS_Store counted as a user's file: --overwrite, and every rerun of vmm demo, was refused for good.
    own = tmp_path / "own"
    syn.generate_corpus(own, num_videos=4, seed=3, workers=1)
    (own / ".DS_Store").write_bytes(b"Bud1")
    (own / "videos" / "Thumbs.db").write_bytes(b"thumbs")
    syn.generate_corpus(own, num_videos=3, seed=4, workers=1, overwrite=True)
    assert sorted(p.name for p in (own / "videos").iterdir()) == [
        "Thumbs.db", *sorted(Path(v["video"]).name for v in json.loads((own / "meta.json").read_text())["videos"])]
    assert (own / ".DS_Store").read_bytes() == b"Bud1"


@pytest.mark.parametrize("num_videos, splits, sizes", [
    (300, (0.8, 0.1, 0.1), (240, 30, 30)),
    (6, (0.8, 0.1, 0.1), (4, 1, 1)),
    (2, (0.8, 0.1, 0.1), (1, 0, 1)),
    (101, (0.7, 0.0, 0.3), (71, 0, 30)),
    (5, (0.0, 0.0, 1.0), (0, 0, 5)),
])
def test_split_sizes_add_up_and_keep_held_out_clips(num_videos, splits, sizes):
    config = corpus_module.CorpusConfig(num_videos=num_videos, splits=splits)
    assert tuple(config.split_sizes().values()) == sizes


@pytest.mark.parametrize("kwargs, option", [
    (dict(splits=(0.5, 0.5, 0.5)), "--splits"),
    (dict(size=63), "--size"),
    (dict(fps=4, seconds=1.0), "--seconds"),
    (dict(num_videos=0), "--num-videos"),
    (dict(codec="vp9"), "--codec"),
    (dict(seed=-1), "--seed"),
    (dict(seconds=float("nan")), "--seconds"),
    (dict(seconds=float("inf")), "--seconds"),
    (dict(seconds=100000.0, fps=60), "--seconds"),
    (dict(seconds=1e308), "--seconds"),  # fps x seconds is infinite: an OverflowError from round()
    (dict(seconds=-1e308), "--seconds"),
    (dict(splits=(float("nan"), 1, 1)), "--splits"),
    (dict(size=100000), "--size"),
    (dict(workers=-1), "--workers"),
    (dict(num_videos=10 ** 20), "--num-videos"),  # planned clip by clip in memory until it ran out
])
def test_bad_options_raise_one_line_errors(tmp_path, kwargs, option):
    with pytest.raises(VmmError, match=re.escape(option)) as err:
        syn.generate_corpus(tmp_path / "x", **kwargs)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("kwargs, message", [
    (dict(seconds="3"), "--seconds (seconds='3'): must be a number"),
    (dict(order_fraction="x"), "--order-fraction (order_fraction='x'): must be a number"),
    (dict(splits=None), "--splits (splits=None): must be three numbers"),
    (dict(splits=(0.8, 0.1, "0.1")), "--splits (splits=(0.8, 0.1, '0.1')): must be three numbers"),
    (dict(workers="2"), "--workers (workers='2'): must be a whole number or None"),
    (dict(num_videos=True), "--num-videos (num_videos=True): must be a whole number"),
    (dict(overwrite="no"), "--overwrite (overwrite='no'): must be True or False"),
])
def test_arguments_of_the_wrong_type_raise_one_line_errors(tmp_path, kwargs, message):
    # These were TypeErrors from inside the range checks (and overwrite="no" meant yes).
    with pytest.raises(VmmError, match=re.escape(message)):
        syn.generate_corpus(tmp_path / "x", **{"num_videos": 3, **kwargs})
    assert not (tmp_path / "x").exists()


def test_numpy_numbers_are_accepted(tmp_path):
    info = syn.generate_corpus(tmp_path / "x", num_videos=np.int64(3), seed=np.int32(0), seconds=np.float32(3.0),
                               splits=np.array([0.8, 0.1, 0.1]), workers=1)
    assert info.split_sizes == {"train": 1, "val": 1, "test": 1}
    assert json.loads((tmp_path / "x" / "meta.json").read_text())



def test_workers_beyond_the_clips_fork_no_idle_processes(tmp_path, monkeypatch):
    """--workers 10000 for 10 clips forked 10000 processes, a minute of forking on 2 cores."""
    import multiprocessing
    asked = []
    real_get_context = multiprocessing.get_context

    def get_context(method=None):
        context = real_get_context(method)

        class Counting:
            def Pool(self, processes, *args, **kwargs):
                asked.append(processes)
                return context.Pool(min(processes, 4), *args, **kwargs)  # a failing run must not fork them all

        return Counting()

    monkeypatch.setattr(multiprocessing, "get_context", get_context)
    info = syn.generate_corpus(tmp_path / "x", num_videos=10, seed=0, workers=10000)
    assert asked == [10] and info.num_videos == 10
    assert len(list((tmp_path / "x" / "videos").glob("synth_*.mp4"))) == 10


def test_an_empty_folder_name_is_refused_not_taken_for_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(VmmError, match=r"the output folder \(out_dir\) is empty"):
        syn.generate_corpus("", num_videos=3)
    assert list(tmp_path.iterdir()) == []

def test_long_clips_are_encoded_one_frame_at_a_time(tmp_path):
    import tracemalloc

    tracemalloc.start()
    try:
        info = syn.generate_corpus(tmp_path / "long", num_videos=1, size=128, fps=50, seconds=16.0, workers=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.num_frames == 800
    whole_clip = 800 * 128 * 128 * 3  # 39 MB as uint8
    assert peak < whole_clip / 8
    assert len(decode(tmp_path / "long" / "videos" / "synth_00000.mp4")) == 800


@pytest.mark.parametrize("frames, fps, message", [
    (np.zeros((4, 63, 64, 3), np.uint8), 10, "64x63 pixels cannot be encoded as yuv420p; use an even width"),
    (np.zeros((4, 64, 64, 3), np.float32), 10, "frame 0 must be a uint8 RGB array of shape \\(H, W, 3\\), got float32"),
    (np.zeros((4, 64, 64), np.uint8), 10, "got uint8 array of shape \\(64, 64\\)"),
    (np.zeros((4, 64, 64, 3), np.uint8), 0, "fps must be a number of frames per second from 0.01 to 1000, got 0"),
    (np.zeros((4, 64, 64, 3), np.uint8), "30", "fps must be a number .* got '30'"),
    (np.zeros((4, 64, 64, 3), np.uint8), float("nan"), "fps must be a number .* got nan"),
    (np.zeros((4, 64, 64, 3), np.uint8), float("inf"), "fps must be a number .* got inf"),
    (np.zeros((4, 64, 64, 3), np.uint8), 1 / 3000, "fps must be a number .* from 0.01 to 1000"),
    ([np.zeros((64, 64, 3), np.uint8), np.zeros((32, 32, 3), np.uint8)], 10, "frame 1 has shape \\(32, 32, 3\\)"),
])
def test_write_video_refuses_frames_it_cannot_encode(tmp_path, frames, fps, message):
    # An odd width failed inside PyAV as "Generic error in an external library: avcodec_open2(...)".
    path = tmp_path / "clip.mp4"
    with pytest.raises(VmmError, match=message):
        syn.write_video(frames, path, fps=fps)
    assert not path.exists()  # nothing, rather than an mp4 cut off without its index


def test_write_video_to_a_folder_names_it(tmp_path):
    # PyAV's own error was "[Errno 21] Is a directory", without the path.
    with pytest.raises(VmmError) as e:
        syn.write_video(np.zeros((4, 32, 32, 3), np.uint8), tmp_path, fps=10)
    assert str(e.value) == f"write_video: {tmp_path} is a folder; pass the path of the .mp4 file to write"
    assert tmp_path.is_dir()

def test_a_failed_rewrite_keeps_the_video_that_was_there(tmp_path):
    # Opening the path emptied the old video, and the failure then deleted what was left of it.
    path = tmp_path / "clip.mp4"
    syn.write_video(np.full((6, 32, 32, 3), 200, np.uint8), path, fps=8)
    before = path.read_bytes()

    def frames_until_the_camera_fails():
        yield from np.zeros((3, 32, 32, 3), np.uint8)
        raise OSError("camera unplugged")

    with pytest.raises(OSError, match="camera unplugged"):
        syn.write_video(frames_until_the_camera_fails(), path, fps=8)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]
    assert decode(path).shape == (6, 32, 32, 3)


def test_write_video_into_a_missing_folder_names_it(tmp_path):
    # PyAV's own error was "[Errno 2] No such file or directory", without the path.
    path = tmp_path / "not made" / "clip.mp4"
    with pytest.raises(VmmError) as e:
        syn.write_video(np.zeros((4, 32, 32, 3), np.uint8), path, fps=10)
    assert str(e.value) == f"write_video: the folder of {path} does not exist; create it first"


def test_write_video_takes_a_fractional_rate(tmp_path):
    import av
    from fractions import Fraction
    for fps, expected in [(Fraction(30000, 1001), Fraction(30000, 1001)), (12.5, Fraction(25, 2)), (np.int64(8), 8),
                          (np.float32(12.5), Fraction(25, 2)), (29.97, Fraction(2997, 100))]:
        path = tmp_path / f"clip_{float(fps)}.mp4"
        syn.write_video(np.zeros((6, 32, 32, 3), np.uint8), path, fps=fps)
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert stream.average_rate == expected and stream.frames == 6


def test_a_failed_write_leaves_nothing_and_the_next_run_works(tmp_path):
    # A real write failure: meta.json (about 5 kB for 6 clips) goes over a 3 kB file size limit,
    # after every video (under 3 kB at 32x32) and the smaller annotation files are written.
    out = tmp_path / "cut"
    command = [sys.executable, "-c", "import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000));"
               "from vmm.data.synthetic.corpus import main; sys.exit(main(sys.argv[1:]))",
               str(out), "--num-videos", "6", "--size", "32", "--seconds", "1", "--workers", "1"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: cannot write the corpus") and done.stderr.count("\n") == 1
    assert not out.exists()
    syn.generate_corpus(out, num_videos=6, size=32, seconds=1.0, workers=1)
    assert (out / "meta.json").is_file()


def test_a_killed_run_does_not_block_the_next_one(tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "vmm.data.synthetic", str(out), "--num-videos", "400", "--workers", "1"]
    run = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(list((out / "videos").glob("synth_*.mp4"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        run.kill()
        run.wait()
    assert list((out / "videos").glob("synth_*.mp4")) and not (out / "meta.json").exists()
    info = syn.generate_corpus(out, num_videos=4, seed=5, workers=1)  # no overwrite needed: it was never a corpus
    assert sorted(p.name for p in (out / "videos").iterdir()) == sorted(
        Path(e["video"]).name for e in json.loads((out / "meta.json").read_text())["videos"])
    assert info.num_videos == 4


def test_a_second_run_into_a_folder_being_written_is_refused_and_the_first_keeps_every_clip(tmp_path):
    # The second run cleared the first one's videos (and its failure cleanup deleted more): the first then reported
    # 300 clips with 28 of them on disk.
    out = tmp_path / "shared"
    command = [sys.executable, "-m", "vmm.data.synthetic", str(out), "--num-videos", "150", "--workers", "1"]
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list((out / "videos").glob("synth_*.mp4")) and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(VmmError, match=f"^{re.escape(str(out))} is being written by another corpus generation "
                                           r"\(pid \d+ on host .+\); wait for it to end or choose another folder$"):
            syn.generate_corpus(out, num_videos=4, seed=1, workers=1, overwrite=True)
        stdout, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0 and "wrote 150 videos" in stdout, stderr
    listed = [e["video"] for e in json.loads((out / "meta.json").read_text())["videos"]]
    assert sorted(f"videos/{p.name}" for p in (out / "videos").iterdir()) == sorted(listed)
    assert sorted(p.name for p in out.iterdir()) == sorted(["videos", *JSON_FILES])  # the lock file is gone too
    syn.generate_corpus(out, num_videos=4, seed=1, workers=1, overwrite=True)  # once it has ended, a rerun works


def test_a_folder_given_with_a_tilde_is_in_the_home_folder(tmp_path, monkeypatch):
    # A "~/corpus" no shell expanded (a Python caller, a config file) made a folder named "~" in the working one.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    info = syn.generate_corpus("~/corpus", num_videos=3, workers=1)
    assert info.out_dir == tmp_path / "home" / "corpus" and not (tmp_path / "~").exists()
    assert len(syn.read_specs("~/corpus")) == 3
    syn.write_video(np.zeros((4, 32, 32, 3), np.uint8), "~/clip.mp4", fps=8)
    assert len(decode(tmp_path / "home" / "clip.mp4")) == 4


def test_ctrl_c_stops_the_workers_and_keeps_nothing(tmp_path):
    """A Ctrl-C printed a KeyboardInterrupt traceback from the main process and one from every worker."""
    import signal
    out = tmp_path / "stopped"
    command = [sys.executable, "-m", "vmm.data.synthetic", str(out), "--num-videos", "400", "--workers", "2"]
    run = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True, preexec_fn=terminal_sigint)
    try:
        deadline = time.monotonic() + 60
        while len(list((out / "videos").glob("synth_*.mp4"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(run.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole foreground group
        stdout, stderr = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert (run.returncode, stdout, stderr) == (130, "", "interrupted; nothing was kept\n")
    assert not out.exists()


def _note_sigterm_action(job):
    """Stands in for a clip's job in a worker: writes what SIGTERM does there where the clip would go."""
    import signal
    Path(job[1]).write_text(str(signal.getsignal(signal.SIGTERM)))


def test_workers_die_on_the_pools_sigterm_whatever_handler_the_parent_has(tmp_path, monkeypatch):
    """Workers inherited the vmm command's Python SIGTERM handler, which runs only between bytecodes: a SIGTERM
    from the pool landing just before a worker blocked on the task queue was lost, and vmm demo hung for good
    after writing every clip."""
    import signal
    from vmm.cli import _stopping_on_sigterm
    monkeypatch.setattr(corpus_module, "_render_and_write", _note_sigterm_action)
    with _stopping_on_sigterm():
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
        syn.generate_corpus(tmp_path / "x", num_videos=8, seed=0, workers=2)
    assert {p.read_text() for p in (tmp_path / "x" / "videos").iterdir()} == {str(signal.SIG_DFL)}


# ---------------------------------------------------------------------------- captions vs pixels


def clean_frames(spec: syn.VideoSpec) -> list[int]:
    """Frames where no change is under way: the first, the last and every event's end."""
    return sorted({0, spec.num_frames - 1, *(e.end for e in spec.events)})


def test_caption_colours_are_the_colours_in_the_decoded_frames(corpus, meta):
    for name, entry in meta.items():
        spec = syn.VideoSpec.from_dict(entry["spec"])
        frames = decode(corpus / name)
        background = syn.render_background(spec.background, spec.size)
        seen = set()
        for k in clean_frames(spec):
            counts = {c: int(m.sum()) for c, m in colour_masks(frames[k], background).items()}
            seen |= {c for c, n in counts.items() if n >= 25}
            assert all(n >= 25 or n <= 6 for n in counts.values()), (name, k, counts)
        assert seen == caption_colours(entry["caption"]), (name, entry["caption"])


def test_single_object_dominant_colour_matches_caption(corpus, meta):
    checked = 0
    for name, entry in meta.items():
        spec = syn.VideoSpec.from_dict(entry["spec"])
        if len(spec.objects) != 1 or any(e.kind == "recolor" for e in spec.events):
            continue
        frames = decode(corpus / name).astype(np.float64)
        background = syn.render_background(spec.background, spec.size)
        changed = np.abs(frames - background).max(-1) > 60
        pixels = frames[changed]
        refs = np.array(list(scene.COLORS.values()), np.float64)
        votes = np.bincount(np.linalg.norm(pixels[:, None] - refs[None], axis=-1).argmin(1), minlength=len(refs))
        dominant = list(scene.COLORS)[int(votes.argmax())]
        assert caption_colours(entry["caption"]) == {dominant}, (name, entry["caption"], dominant)
        checked += 1
    assert checked >= 5


def test_objects_move_in_the_captioned_direction(corpus, meta):
    checked = 0
    for name, entry in meta.items():
        spec = syn.VideoSpec.from_dict(entry["spec"])
        moves = [e for e in spec.events if e.kind == "move"]
        assert caption_directions(entry["caption"]) == [e.direction for e in moves], entry["caption"]
        if not moves:
            continue
        frames = decode(corpus / name)
        background = syn.render_background(spec.background, spec.size)
        for ev in moves:
            colour = syn.object_state(spec, ev.obj, ev.start)[3]
            colour_name = min(scene.COLORS, key=lambda c: np.abs(np.array(scene.COLORS[c]) - colour).sum())
            (y0, x0), (y1, x1) = (np.argwhere(colour_masks(frames[k], background)[colour_name]).mean(0)
                                  for k in (ev.start, ev.end))
            step = np.array([x1 - x0, y1 - y0])
            along = step @ np.array(scene.DIRECTIONS[ev.direction])
            distance = np.hypot(ev.target[0] - ev.origin[0], ev.target[1] - ev.origin[1])
            assert along > 0.7 * distance and abs(along - np.linalg.norm(step)) < 1.5, (name, ev, step)
            checked += 1
    assert checked >= 8


# ---------------------------------------------------------------------------- order-sensitive pairs


def test_order_subset_holds_every_pair_kind_in_the_test_split(corpus, meta):
    order = json.loads((corpus / "test_order.json").read_text())
    tests = {e["video"]: e for e in json.loads((corpus / "test.json").read_text())}
    assert len(order) == 14
    assert all(e["order_sensitive"] is True and tests[e["video"]] == e for e in order)
    assert sorted(e["pair_id"] for e in order) == sorted(list(range(7)) * 2)
    kinds = {meta[e["video"]]["pair_kind"] for e in order}
    assert kinds == {"direction", "sequence", "color_order", "size", "visibility"}
    assert sum("order_sensitive" in e for e in tests.values()) == 14


def pairs(corpus) -> list[tuple[dict, dict]]:
    order = json.loads((corpus / "test_order.json").read_text())
    by_id: dict[int, list[dict]] = {}
    for entry in order:
        by_id.setdefault(entry["pair_id"], []).append(entry)
    return [tuple(v) for v in by_id.values()]


def test_pair_members_are_exact_time_reversals_with_the_same_frame_set(corpus, meta):
    for a, b in pairs(corpus):
        frames_a = syn.render_frames(syn.VideoSpec.from_dict(meta[a["video"]]["spec"]))
        frames_b = syn.render_frames(syn.VideoSpec.from_dict(meta[b["video"]]["spec"]))
        assert np.array_equal(frames_a, frames_b[::-1])
        assert not np.array_equal(frames_a, frames_b)
        as_set = lambda f: sorted(x.tobytes() for x in f)  # noqa: E731
        assert as_set(frames_a) == as_set(frames_b)


def test_decoded_pairs_look_the_same_to_a_model_that_ignores_order(corpus):
    """Mean-of-frames features barely separate a pair, yet frame by frame the clips differ."""
    gaps, in_order, other = [], [], []
    decoded = {e["video"]: decode(corpus / e["video"]).astype(np.float64) for p in pairs(corpus) for e in p}
    for a, b in pairs(corpus):
        fa, fb = decoded[a["video"]], decoded[b["video"]]
        gaps.append(np.abs(fa.mean(0) - fb.mean(0)).mean())
        in_order.append(np.abs(fa - fb).mean())
        assert np.abs(fa - fb[::-1]).mean() < 3.0
    names = list(decoded)
    for i in range(0, len(names) - 2, 2):
        other.append(np.abs(decoded[names[i]].mean(0) - decoded[names[i + 2]].mean(0)).mean())
    assert max(gaps) < 1.0 < min(other)
    assert min(in_order) > 2 * max(gaps)


def test_pair_captions_differ_only_in_direction_and_order_words(corpus, meta):
    direction_words = {w for phrases in captions.DIRECTION_PHRASES.values() for p in phrases for w in p.split()}
    for a, b in pairs(corpus):
        ca, cb = a["caption"], b["caption"]
        assert ca != cb and len(words(ca)) == len(words(cb))
        kind = meta[a["video"]]["pair_kind"]
        if kind == "direction":
            changed = {x for x, y in zip(words(ca), words(cb)) if x != y}
            assert changed and changed <= direction_words, (ca, cb)
        if kind == "color_order":  # the same words, colours swapped ("a"/"an" may follow the colour)
            articles = {"a", "an"}
            assert sorted(set(words(ca)) - articles) == sorted(set(words(cb)) - articles), (ca, cb)


# ---------------------------------------------------------------------------- spec-level properties


def test_every_sampled_spec_reverses_exactly_and_round_trips_through_json():
    for seed in range(25):
        spec = syn.sample_spec(np.random.default_rng(seed), size=64, fps=8, num_frames=24)
        assert syn.VideoSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
        back = syn.reverse_spec(spec)
        assert syn.reverse_spec(back) == spec
        assert np.array_equal(syn.render_frames(back), syn.render_frames(spec)[::-1])


def test_cli_writes_a_corpus_and_reports_errors_on_one_line(tmp_path, capsys):
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    out = tmp_path / "cli"
    command = [sys.executable, "-m", "vmm.data.synthetic", str(out), "--num-videos", "6", "--seed", "2"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "wrote 6 videos" in done.stdout
    assert len(json.loads((out / "meta.json").read_text())["videos"]) == 6
    assert corpus_module.main([str(out), "--num-videos", "6", "--seed", "2"]) == 2  # the folder is taken now
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--overwrite" in err
    # argparse's own complaints too: they came after its whole usage block
    for argv, message in [(["--splits", "0.5", "0.5"], "error: argument --splits: expected 3 arguments"),
                          (["--codec", "h265"], "error: argument --codec: invalid choice: 'h265'")]:
        with pytest.raises(SystemExit) as exited:
            corpus_module.main([str(tmp_path / "new"), *argv])
        err = capsys.readouterr().err
        assert exited.value.code == 2 and err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("out_dir", [None, b"corpus", 3])
def test_generate_corpus_refuses_an_out_dir_that_is_no_path_in_one_line(out_dir):
    # None raised a bare TypeError from os.fspath.
    from vmm.data.synthetic import generate_corpus
    from vmm.errors import VmmError
    with pytest.raises(VmmError, match=re.escape(f"out_dir={out_dir!r}: must be a folder path")) as e:
        generate_corpus(out_dir, num_videos=2, workers=1)
    assert "\n" not in str(e.value)
