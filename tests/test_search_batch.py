"""Many text queries at once: `VideoLibrary.search_many` and `vmm search LIB --queries FILE`, on a real library of
generated videos indexed with the tiny random-weight model."""
import ast
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval.library import VideoLibrary, Where
from tests import videos
from tests.tiny_model import index_search_library
from vmm.cli import main
from vmm.errors import VmmError

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["a red screen", "a green square moving", "blue", "a red screen", "zebras crossing a street at night"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A library at HOME/vmm-lib (as the docs name it): three short videos and a 24 s one in windows of 8 s."""
    root = tmp_path_factory.mktemp("search-batch")
    lib = root / "home" / "vmm-lib"
    index_search_library(root, lib)
    with VideoLibrary.open(lib) as library:
        yield root, lib, library


def same(a, b) -> bool:
    """Hits equal but for float rounding of the score: a batch of texts is encoded together, one text alone."""
    return [(h.rank, h.path, h.start, h.end, h.clip_ids, h.itm) for h in a] == \
        [(h.rank, h.path, h.start, h.end, h.clip_ids, h.itm) for h in b] and \
        all(x.score == pytest.approx(y.score, abs=1e-5) for x, y in zip(a, b))


@pytest.mark.parametrize("options", [dict(k=3), dict(k=20, merge=False), dict(k=4, per_video=True),
                                     dict(k=5, rerank=3, where={"max_duration": 5}),
                                     dict(k=5, where=Where(path_glob="*long*")),
                                     dict(k=5, where={"max_duration": 5}, per_video=True)])
def test_each_text_gets_what_search_gives_it_alone(setup, options):
    _, _, library = setup
    many = library.search_many(TEXTS, **options)
    assert len(many) == len(TEXTS) and all(many)
    for text, hits in zip(TEXTS, many):
        assert same(hits, library.search(text=text, **options)), text
    assert same(many[0], many[3])  # a repeated text is searched again, not dropped


@pytest.mark.parametrize("block_hits", [None, 9])  # 9: blocks of one or two texts, whatever the first fetch
def test_every_option_ranks_each_text_of_a_batch_as_alone(setup, monkeypatch, block_hits):
    """The first fetch of all texts is one FAISS call, read back per text; what each text then gets must not depend
    on it: k from one window to all of them, filters that keep one video, the short ones or all, per_video, merge."""
    import retrieval.library as library_module
    _, _, library = setup
    if block_hits:
        monkeypatch.setattr(library_module, "_BLOCK_HITS", block_hits)
    filters = [None, {"max_duration": 5}, Where(path_glob="*long*"), lambda record: "square" not in record.path]
    for k in (1, 2, 3, 8):
        for where in filters:
            for per_video in (False, True):
                for merge in (True, False):
                    options = dict(k=k, where=where, per_video=per_video, merge=merge)
                    for text, hits in zip(TEXTS, library.search_many(TEXTS, **options)):
                        assert hits and same(hits, library.search(text=text, **options)), (text, options)


def test_the_first_fetch_of_all_texts_is_one_vector_search(setup, monkeypatch):
    """search_many ran FAISS once per text: 1,000 texts over a 200k-clip flat index took 1,000 scans where one matrix
    product does (benchmarks/search_many.py). A text goes on alone only when its top k needs a deeper fetch."""
    _, _, library = setup
    reader = library._reader
    calls = []
    search_vectors = reader.search_vectors
    monkeypatch.setattr(reader, "search_vectors", lambda queries, **kw: calls.append(len(queries)) or
                        search_vectors(queries, **kw))
    library.search_many(TEXTS, k=2)  # a fetch of all 8 clips: every text is complete after it
    assert calls == [len(TEXTS)]
    calls[:] = []
    library.search_many(TEXTS, k=1, per_video=True, where=Where(path_glob="*long*"))  # 4 of long.mp4's 5 windows
    assert calls[0] == len(TEXTS) and calls[1:] == [1] * (len(calls) - 1)


def test_texts_are_encoded_together_and_filtered_once(setup, monkeypatch):
    """The point of a batch: one forward for the texts (not one each) and one `where` decision per file."""
    _, _, library = setup
    calls, seen = [], []
    encode = library.encoder.encode_texts
    monkeypatch.setattr(library.encoder, "encode_texts", lambda texts: calls.append(len(texts)) or encode(texts))
    many = library.search_many(TEXTS, k=2, where=lambda record: seen.append(record.path) or True)
    assert calls == [len(TEXTS)] and len(many) == len(TEXTS)
    assert len(seen) == len(set(seen)) == 4  # each video once, for all texts


def test_windows_a_text_re_ranked_are_not_decoded_again_for_the_next(setup, monkeypatch):
    """Each text of a batch decoded its top K again, though texts of one batch often share them."""
    import retrieval.library as library_module
    _, _, library = setup
    reads = []
    read = library_module.read_windows
    monkeypatch.setattr(library_module, "read_windows", lambda path, *a, **k: reads.append(path) or read(path, *a, **k))
    alone = library.search(text=TEXTS[0], k=3, rerank=3)
    once, reads[:] = list(reads), []
    first, again = library.search_many([TEXTS[0], TEXTS[0]], k=3, rerank=3)
    assert once and same(first, alone) and same(again, alone) and reads == once


def test_the_window_cache_keeps_to_its_bytes():
    from retrieval.library import _FrameCache
    cache = _FrameCache(max_bytes=250)
    for clip in range(4):
        cache.add(clip, np.zeros(100, np.uint8))
    assert list(cache) == [2, 3] and cache.bytes == 200
    cache.add(9, np.zeros(1000, np.uint8))  # larger than the whole budget: kept, as the text being scored needs it
    assert list(cache) == [9] and cache.bytes == 1000


@pytest.mark.parametrize("texts, message", [
    ("a red car", "texts must be a list of strings, got str; for one text pass [text] or call search(text=...)"),
    (["a red car", 3], "texts[1] must be a string, got int; pass texts=['a red car']"),
    (["a red car", "  "], "empty query text (texts[1]); give some words to search for"),
])
def test_wrong_texts_are_named(setup, texts, message):
    with pytest.raises(VmmError) as error:
        setup[2].search_many(texts)
    assert str(error.value) == message


def test_no_texts_and_an_empty_library(setup, tmp_path):
    root, _, library = setup
    assert library.search_many([], k=3) == []
    assert library.search_many(iter(["blue"]), k=1)[0][0].rank == 1  # any iterable of strings
    new = VideoLibrary.create(tmp_path / "new", model=str(root / "model"))
    assert new.search_many(["a red car", "blue"]) == [[], []]


def queries_file(tmp_path, data: bytes) -> str:
    path = tmp_path / "queries.txt"
    path.write_bytes(data)
    return str(path)


def run_cli(capsys, *argv):
    capsys.readouterr()
    code = main(["search", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def without_scores(hits: list) -> list:
    return [{key: value for key, value in h.items() if key != "score"} for h in hits]


@pytest.mark.parametrize("options", [["-k", "2", "--no-merge", "--path", "*.mp4", "--min-duration", "0"],
                                     ["--per-video", "--max-duration", "100"]])
def test_queries_file_gives_each_line_what_a_search_of_it_gives(setup, tmp_path, capsys, options):
    """A Windows file (byte-order mark, CRLF), blank and space-only lines, spaces around a query and no trailing
    newline: each query as `vmm search LIB QUERY` with the same options prints it, in the file's order."""
    _, lib, _ = setup
    path = queries_file(tmp_path, "\ufeffa red screen\r\n\r\n   \r\n  café au lait  \r\nblue".encode())
    code, out, err = run_cli(capsys, lib, "--queries", path, "--json", *options)
    assert code == 0 and err == ""
    batch = json.loads(out)
    assert [entry["query"] for entry in batch] == ["a red screen", "café au lait", "blue"]
    for entry in batch:
        code, out, _ = run_cli(capsys, lib, entry["query"], "--json", *options)
        single = json.loads(out)
        assert code == 0 and entry["hits"] and without_scores(entry["hits"]) == without_scores(single)
        assert [h["score"] for h in entry["hits"]] == pytest.approx([h["score"] for h in single], abs=1e-5)


def test_queries_tables_are_headed_by_their_query(setup, tmp_path, capsys):
    _, lib, _ = setup
    path = queries_file(tmp_path, b"a red screen\nblue\n")
    code, out, _ = run_cli(capsys, lib, "--queries", path, "-k", "2", "--rerank", "1", "--max-duration", "5")
    assert code == 0
    blocks = out.split("\n\n")
    assert [block.splitlines()[0] for block in blocks] == ["query: a red screen", "query: blue"]
    scoreless = lambda text: re.sub(r"-?\d+\.\d{4}", "S", text)  # noqa: E731  (scores: float rounding)
    for block, text in zip(blocks, ["a red screen", "blue"]):
        code, single, _ = run_cli(capsys, lib, text, "-k", "2", "--rerank", "1", "--max-duration", "5")
        assert code == 0 and scoreless(block.split("\n", 1)[1]).rstrip() == scoreless(single).rstrip()
        assert "-: outside the 1 re-scored clips" in block  # each table says what its "-" means


def test_a_filter_no_video_passes_is_said_once_for_all_queries(setup, tmp_path, capsys):
    """Every query has the same filter: its "no results" line was printed under each query of the file."""
    _, lib, _ = setup
    path = queries_file(tmp_path, b"a red screen\nblue\ngreen\n")
    code, out, err = run_cli(capsys, lib, "--queries", path, "--path", "*nothing*", "--min-duration", "3")
    assert (code, err) == (0, "")
    assert out == ("no results for any of the 3 queries: no indexed video matches --path *nothing*, --min-duration 3; "
                   "widen or drop them\n")
    code, out, _ = run_cli(capsys, lib, "--queries", queries_file(tmp_path, b"blue\n"), "--max-duration", "0.5")
    assert out == "query: blue\nno results: no indexed video matches --max-duration 0.5; widen or drop it\n"


def test_a_long_query_is_named_by_its_line(setup, tmp_path, capsys):
    _, lib, _ = setup
    path = queries_file(tmp_path, b"blue\n\n" + b"a dog " * 40 + b"\n")
    code, out, err = run_cli(capsys, lib, "--queries", path, "--json")
    assert code == 0 and len(json.loads(out)) == 2
    assert err.startswith(f"note: the query on line 3 of {path} is longer than the model reads (32 tokens)")
    assert err.count("\n") == 1


def test_a_query_without_words_is_named_by_its_line(setup, tmp_path, capsys):
    """'?!' on one line of thousands failed the whole batch naming the text only: the user had to hunt for it."""
    _, lib, _ = setup
    path = queries_file(tmp_path, b"blue\n\n?!\nred\n")
    code, out, err = run_cli(capsys, lib, "--queries", path)
    assert (code, out) == (2, "")
    assert err.startswith(f"error: line 3 of --queries {path}: query '?!' (texts[1]) has no words ("), err
    assert err.count("\n") == 1


def test_lines_are_what_an_editor_shows(setup, tmp_path, capsys):
    """A U+2028 pasted from a web page or a form feed inside a line split one query in two (str.splitlines), and the
    notes named every later line one too far; lines ended by a lone CR (old Mac files) are lines."""
    _, lib, _ = setup
    path = queries_file(tmp_path, "a red\u2028screen\x0cnow\r".encode() + b"a dog " * 40 + b"\r")
    code, out, err = run_cli(capsys, lib, "--queries", path, "--json")
    assert code == 0 and [entry["query"] for entry in json.loads(out)] == ["a red\u2028screen\x0cnow", "a dog" +
                                                                           " a dog" * 39]
    assert err.startswith(f"note: the query on line 2 of {path} is longer")
    path = queries_file(tmp_path, "red\u2028blue\r".encode() + b"caf\xe9\r")  # latin-1 on line 2
    assert run_cli(capsys, lib, "--queries", path)[2] == (f"error: --queries {path} is not UTF-8 text (invalid "
                                                          "continuation byte at line 2); save it as UTF-8\n")


def test_queries_from_stdin_and_several_files(setup, tmp_path, capsys, monkeypatch):
    """A repeated --queries kept the last file only: the queries of the others were silently not searched."""
    _, lib, _ = setup
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"blue\na red screen\n")))
    path = queries_file(tmp_path, b"green\n")
    code, out, _ = run_cli(capsys, lib, "--queries", path, "--queries", "-", "--json", "-k", "1")
    assert code == 0 and [entry["query"] for entry in json.loads(out)] == ["green", "blue", "a red screen"]


@pytest.mark.parametrize("argv, data, message", [
    (["--queries", "{tmp}/none.txt"], None, "--queries {tmp}/none.txt does not exist; pass a text file with one "
                                            "query a line"),
    (["--queries", "{tmp}"], None, "--queries {tmp} is a folder; pass a text file with one query a line"),
    (["--queries", "{file}"], b"", "--queries {file} holds no queries; write one query a line"),
    (["--queries", "{file}"], b"\n  \r\n\t\n", "--queries {file} holds no queries; write one query a line"),
    (["--queries", "{file}"], "red\ncafé\n".encode("latin-1"),
     "--queries {file} is not UTF-8 text (invalid continuation byte at line 2); save it as UTF-8"),
    # --queries typed for --video: "not UTF-8 text; save it as UTF-8" sent the user to re-save a video
    (["--queries", "{tmp}/my clip.MP4"], None, "--queries {tmp}/my clip.MP4 is a video, not a text file of queries; "
                                               "search by it with --video '{tmp}/my clip.MP4'"),
    (["a red car", "--queries", "{file}"], b"blue\n", "give a text query or --queries {file}, not both; add 'a red "
                                                       "car' to the file as a line of its own"),
    (["--queries", "{file}", "--video", "{tmp}/q.mp4"], b"blue\n", "--queries holds text queries and --video is a "
                                                                   "video query; search by --video in a separate call"),
])
def test_queries_mistakes_are_one_line(setup, tmp_path, capsys, argv, data, message):
    """Refused before the model loads, so also for a library path that does not exist."""
    file = queries_file(tmp_path, data) if data is not None else None
    videos.write_solid(str(tmp_path / "my clip.MP4"), videos.RED, seconds=0.2)  # a real video for the case naming it
    fill = lambda s: s.format(tmp=tmp_path, file=file)  # noqa: E731
    code, out, err = run_cli(capsys, tmp_path / "no-library", *map(fill, argv))
    assert (code, out, err) == (2, "", f"error: {fill(message)}\n")


@pytest.mark.slow
def test_the_documented_batch_commands_run_as_written(setup, tmp_path):
    """The docs' --queries lines, run by a shell with the test's home; an empty stdin is named as such."""
    root, lib, _ = setup
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "vmm").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m vmm.cli "$@"\n')
    (bin_dir / "vmm").chmod(0o755)
    env = {"HOME": str(lib.parent), "PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    os.symlink(lib, lib.parent / "lib")  # README's name for it
    lines = [line.split("  #")[0] for doc in ("docs/search.md", "README.md")
             for line in (REPO / doc).read_text(encoding="utf-8").splitlines()
             if "--queries" in line and line.startswith("printf ")]
    assert len(lines) == 2
    for line in lines:
        done = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{line}\n{done.stderr}"
        assert done.stdout.count("\nquery: ") == 1 and done.stdout.startswith("query: ")
    done = subprocess.run([sys.executable, "-m", "vmm.cli", "search", str(lib), "--queries", "-"], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (2, "error: --queries - (stdin) holds no queries; write one query a "
                                                 "line\n")


@pytest.mark.slow
def test_the_batch_search_benchmark_finds_the_same_hits_both_ways(tmp_path):
    """benchmarks/search_many.py at a tiny size: a flat index, an IVF and a filter, each text's hits equal both ways
    (25 texts: FAISS scores a flat index with BLAS from 20 queries on)."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "search_many.py"), "--clips", "400", "--queries",
                           "25", "--repeats", "1"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    rows = [ast.literal_eval(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [(row["index"], row["where"]) for row in rows] == [("IDMap2,Flat", None), ("IVF64,Flat", None),
                                                              ("IVF64,Flat", "/videos/*/*[02468]0.mp4")]
    assert all(row["texts_whose_hits_differ"] == 0 and row["speedup"] > 0 for row in rows)
