"""`vmm search` slips of session 21: a text query that names a video file, and a --path of the real folder behind
the symlink a library was indexed through. Real generated videos, the colour-histogram baseline and the tiny
random-weight model."""
import json
import os

import pytest

from retrieval.library import VideoLibrary, Where
from tests import videos
from tests.tiny_model import save_tiny_model
from vmm.cli import main


@pytest.fixture(scope="module")
def linked(tmp_path_factory):
    """red and green videos in real/, indexed through the symlink link/ -> real/."""
    root = tmp_path_factory.mktemp("search-link")
    (root / "real").mkdir()
    for name, colour in (("red", videos.RED), ("green", videos.GREEN)):
        videos.write_solid(str(root / "real" / f"{name}.mp4"), colour, seconds=1)
    os.symlink(root / "real", root / "link")
    assert main(["index", str(root / "link"), "--library", str(root / "lib"), "--model", "color-histogram",
                 "--quiet", "--workers", "0"]) == 0
    return root


@pytest.mark.parametrize("path, kept", [("real", ["green.mp4", "red.mp4"]), ("real/", ["green.mp4", "red.mp4"]),
                                        ("real/g*", ["green.mp4"]), ("link", ["green.mp4", "red.mp4"]),
                                        ("other", [])])
def test_a_path_through_either_side_of_a_symlink_keeps_its_videos(linked, monkeypatch, capsys, path, kept):
    """The library holds link/...: --path real (where the link points) matched none of them."""
    monkeypatch.chdir(linked)
    capsys.readouterr()
    assert main(["search", "lib", "--video", "link/red.mp4", "--json", "--path", path]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert sorted(os.path.basename(h["path"]) for h in hits) == kept
    assert all(h["path"].startswith(str(linked / "link")) for h in hits)  # still named as indexed
    with VideoLibrary.open("lib") as lib:
        assert sorted(os.path.basename(h.path) for h in lib.search(video="real/red.mp4", where=Where(path))) == kept
        assert lib.search(video="real/red.mp4", where=Where(path, max_duration=0.5)) == []  # every condition holds


def test_a_text_query_that_is_a_video_file_points_to_video(tmp_path, monkeypatch, capsys):
    """`vmm search LIB clip.mp4` searched the words "clip.mp4", and its ranking looked like an answer."""
    save_tiny_model(tmp_path / "model")
    videos.write_solid(str(tmp_path / "red clip.mp4"), videos.RED, seconds=1)
    assert main(["index", str(tmp_path / "red clip.mp4"), "--library", str(tmp_path / "lib"), "--model",
                 str(tmp_path / "model"), "--quiet", "--workers", "0"]) == 0
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["search", "lib", "red clip.mp4"]) == 2
    assert capsys.readouterr().err == ("error: the query 'red clip.mp4' is a video file; search by it with --video "
                                       "'red clip.mp4', or write the words to search for\n")
    # Words that only look like a file name are searched as words.
    for text in ("a red clip.mp4 with sound", "blue clip.mp4"):
        assert main(["search", "lib", text, "--json"]) == 0
        assert len(json.loads(capsys.readouterr().out)) == 1
