"""Where a library lives and what its drive does: folder names that mean something in a URI, read-only media, a
full disk or a write that fails. Each must end in correct results or one line that names the real problem, never a
traceback, a stray file or advice to rebuild a library that is intact."""
import os
import resource
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from index.encoder import ColorHistogramEncoder
from index.library import build_library
from index.reader import open_library
from tests import videos
from vmm.cli import main

REPO = Path(__file__).resolve().parents[1]
ENCODER = ColorHistogramEncoder()
HIST = ["--model", "color-histogram", "--quiet", "--workers", "0"]

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def make_videos(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    colours = {"red": videos.RED, "green": videos.GREEN, "blue": videos.BLUE}
    return {name: videos.write_solid(str(folder / f"{name}.mp4"), colour, seconds=1) for name, colour in colours.items()}


def red_first(library: str) -> bool:
    query = ENCODER.encode_clips([videos.solid_frames(videos.RED, ENCODER.num_frames)])
    with open_library(library, model=ENCODER) as reader:
        (hits,) = reader.search_vectors(query, k=3)
    return os.path.basename(hits[0].path) == "red.mp4" and len(hits) == 3


@pytest.mark.parametrize("name", ["Videos #2", "what?", "100%25 done", "a%20b"])
def test_a_library_folder_named_with_uri_characters_is_searched(tmp_path, capsys, name):
    """The read-only catalog is opened through a SQLite URI: '#' cut the path short (and without mode=ro, SQLite
    created an empty file "Videos " beside the library), '?' did the same, and '%xx' was decoded into another path;
    each was reported as a damaged catalog to rebuild."""
    make_videos(tmp_path / "vids")
    library = tmp_path / name
    assert main(["index", str(tmp_path / "vids"), "--library", str(library), *HIST]) == 0
    before = sorted(os.listdir(tmp_path))
    assert red_first(str(library))
    capsys.readouterr()
    assert main(["search", str(library), "--video", str(tmp_path / "vids" / "red.mp4"), "-k", "1", "--json"]) == 0
    assert '"path": "' + str(tmp_path / "vids" / "red.mp4") in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == before  # no stray file beside the library
