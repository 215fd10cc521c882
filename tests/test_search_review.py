"""`vmm search` options that were silently lost: a repeated --path and the words of a query past the model's text
length. Real generated videos, the colour-histogram baseline and the tiny random-weight model."""
import dataclasses
import json
import os
import tracemalloc
import unicodedata

import numpy as np
import pytest

from index.reader import ClipFilter, open_library
from retrieval.library import VideoLibrary, Where, read_windows
from tests import videos
from tests.tiny_model import save_tiny_model
from vmm.cli import main


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    root = tmp_path_factory.mktemp("search-review")
    for name, colour in (("red", videos.RED), ("green", videos.GREEN), ("blue", videos.BLUE)):
        videos.write_solid(str(root / f"{name}.mp4"), colour, seconds=1)
    lib = root / "lib"
    assert main(["index", str(root), "--library", str(lib), "--model", "color-histogram", "--quiet",
                 "--workers", "0"]) == 0
    return root, lib


def test_a_repeated_path_keeps_the_videos_of_every_glob(colours, capsys):
    """argparse kept the last --path only: `--path '*red*' --path '*green*'` listed the green video alone."""
    root, lib = colours
    capsys.readouterr()
    assert main(["search", str(lib), "--video", str(root / "red.mp4"), "--json",
                 "--path", "*red*", "--path", str(root / "green.mp4")]) == 0
    assert sorted(h["path"] for h in json.loads(capsys.readouterr().out)) == [str(root / "green.mp4"),
                                                                               str(root / "red.mp4")]


def test_no_results_names_every_path_and_the_folder_once(colours, capsys, monkeypatch):
    root, lib = colours
    monkeypatch.chdir(root)
    capsys.readouterr()
    assert main(["search", str(lib), "--video", "red.mp4", "--path", "*cyan*", "--path", "sub/*"]) == 0
    assert capsys.readouterr().out == (f"no results: no indexed video matches --path *cyan*, --path sub/* (taken from "
                                       f"{root}); widen or drop them\n")
    assert main(["search", str(lib), "--video", "red.mp4", "--path", "*red*", "--path", ""]) == 2
    assert "--path is an empty string" in capsys.readouterr().err


def test_a_query_longer_than_the_model_reads_is_named(tmp_path, capsys):
    """The tokenizer cuts a query at max_text_len tokens: the words past the cut changed nothing, unannounced."""
    save_tiny_model(tmp_path / "model")
    videos.write_solid(str(tmp_path / "red.mp4"), videos.RED, seconds=1)
    lib_dir = tmp_path / "lib"
    assert main(["index", str(tmp_path / "red.mp4"), "--library", str(lib_dir), "--model", str(tmp_path / "model"),
                 "--quiet", "--workers", "0"]) == 0
    head = "a red screen " * 12  # 36 words: past the tiny model's 32 tokens ([CLS] and [SEP] included)
    with VideoLibrary.open(lib_dir) as lib:
        assert lib.encoder.max_text_len == 32
        read = lib.truncated_query(head + "with a blue square")
        assert read == " ".join(head.split()[:30])
        assert lib.truncated_query(" ".join(head.split()[:30])) is None  # exactly the length: all of it is read
        cut, other = (lib.search(text=head + tail, k=1)[0].score for tail in ("green", "a blue square"))
        assert cut == other  # what the note warns of
    capsys.readouterr()
    assert main(["search", str(lib_dir), head + "with a blue square", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) and err == (f"note: the query is longer than the model reads (32 tokens), so it was "
                                       f"searched as {read!r}; shorten it to the words that matter\n")
    assert main(["search", str(lib_dir), "a red screen", "--json"]) == 0
    assert capsys.readouterr().err == ""


@pytest.fixture(scope="module")
def nested(tmp_path_factory):
    """red.mp4 at the top, sub/green.mp4 below it, and a blue "café" whose name is written decomposed, as macOS
    writes it ("cafe" + U+0301)."""
    root = tmp_path_factory.mktemp("search-globs")
    (root / "sub").mkdir()
    videos.write_solid(str(root / "red.mp4"), videos.RED, seconds=1)
    videos.write_solid(str(root / "sub" / "green.mp4"), videos.GREEN, seconds=1)
    videos.write_solid(str(root / unicodedata.normalize("NFD", "café.mp4")), videos.BLUE, seconds=1)
    lib = root / "lib"
    assert main(["index", str(root), "--library", str(lib), "--model", "color-histogram", "--quiet",
                 "--workers", "0"]) == 0
    return root, lib


@pytest.mark.parametrize("glob, names", [
    ("{root}/**/*.mp4", ["café.mp4", "green.mp4", "red.mp4"]),  # fnmatch alone: sub/green.mp4 only
    ("**/sub/**/*.mp4", ["green.mp4"]),
    ("*/café*", ["café.mp4"]),  # typed composed (NFC): matched nothing
    ("{root}/café.mp4", ["café.mp4"]),
])
def test_path_globs_read_globstar_and_either_unicode_form(nested, capsys, glob, names):
    root, lib = nested
    capsys.readouterr()
    assert main(["search", str(lib), "--video", str(root / "red.mp4"), "--json",
                 "--path", glob.format(root=root)]) == 0
    found = sorted(unicodedata.normalize("NFC", os.path.basename(h["path"]))
                   for h in json.loads(capsys.readouterr().out))
    assert found == names


def test_search_vectors_takes_a_where(nested):
    """Its error asked for "a Where (or ClipFilter)" and refused a Where: "..., got Where"."""
    root, lib = nested
    with open_library(lib) as reader:
        query = np.ones(reader.manifest.dim, np.float32)
        for where, found in ((Where(path_glob="*/sub/*"), 1), (Where(min_duration=0.5, max_duration=2), 3)):
            hits = reader.search_vectors(query, k=5, where=where)[0]
            assert len(hits) == found
            assert hits == reader.search_vectors(query, k=5, where=ClipFilter(**dataclasses.asdict(where)))[0]


def test_a_library_path_with_a_quoted_tilde_is_under_home(nested, capsys, monkeypatch):
    """`vmm index --library "~/My lib"` expands the "~" the shell leaves alone; `vmm search "~/My lib"` and
    VideoLibrary.open looked for a folder named "~" in the working one."""
    root, lib = nested
    monkeypatch.setenv("HOME", str(root))
    monkeypatch.chdir(root / "sub")
    capsys.readouterr()
    assert main(["search", "~/lib", "--video", str(root / "red.mp4"), "--json", "-k", "1"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["path"] == str(root / "red.mp4")
    with VideoLibrary.open("~/lib") as opened:
        assert opened.path == str(lib) and len(opened) == 3


def test_rerank_holds_the_frames_of_its_hits_not_of_every_window(tmp_path):
    """Re-ranking one hit decoded its video's every window at full size and kept them all: 0.6 GB for a 5-minute
    720p video, an out-of-memory kill for an hour of 1080p. Now only the hits' windows are kept."""
    rng = np.random.default_rng(0)
    path = str(tmp_path / "long.mp4")
    videos.write_frames(path, [np.full((240, 320, 3), c, np.uint8) for c in rng.integers(0, 255, (600, 3))], fps=2)
    save_tiny_model(tmp_path / "model")
    lib = VideoLibrary.create(tmp_path / "lib", model=str(tmp_path / "model"))
    assert lib.add(path, workers=0).clips == 59
    m = lib._reader.manifest
    every_window = sum(frames.nbytes for frames in read_windows(path, m.num_frames, m.window, m.stride, None).values())
    tracemalloc.start()
    try:
        hit, = lib.search(text="a red screen", k=1, rerank=1, merge=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert hit.itm is not None and peak < every_window / 2, (peak, every_window)
    windows = read_windows(path, m.num_frames, m.window, m.stride, None, spans=[(hit.start, hit.end), (1.0, 10.5)])
    assert list(windows) == [(hit.start, hit.end), (1.0, 10.5)]
    assert np.array_equal(windows[(1.0, 10.5)], read_windows(path, m.num_frames, m.window, m.stride, None)[(0.0, 10.0)])
