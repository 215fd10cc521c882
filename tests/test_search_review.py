"""`vmm search` options that were silently lost: a repeated --path and the words of a query past the model's text
length. Real generated videos, the colour-histogram baseline and the tiny random-weight model."""
import json

import pytest

from retrieval.library import VideoLibrary
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
