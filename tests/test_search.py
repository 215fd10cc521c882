"""`vmm index` + `vmm search` and the VideoLibrary API, end to end on generated videos with a real model."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval.library import VideoLibrary, Where, merge_moments
from tests import videos
from tests.tiny_model import index_search_library
from vmm.cli import main
from vmm.errors import VmmError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    lib = root / "lib"
    return root, index_search_library(root, lib), lib


def test_text_search_equals_brute_force_model_scores(setup, capsys):
    root, vids, lib = setup
    capsys.readouterr()
    assert main(["search", str(lib), "a red screen", "-k", "20", "--json", "--no-merge"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))
    assert {"rank", "score", "path", "start", "end"} <= set(hits[0])
    # brute force: embed every indexed window and the text with the same model, directly
    with VideoLibrary.open(lib) as library:
        enc = library.encoder
        q = enc.encode_texts(["a red screen"])[0]
        from retrieval.library import read_windows
        m = library._reader.manifest
        expect = []
        for p in sorted(vids.iterdir()):
            for (s, e), frames in read_windows(str(p), m.num_frames, m.window, m.stride, m.max_seconds).items():
                expect.append((float(enc.encode_clips([frames])[0] @ q), str(p), s, e))
    expect.sort(key=lambda t: -t[0])
    assert len(hits) == len(expect) == 3 + 5  # 3 short videos + 24 s in windows of 8 s every 4 s
    for h, (score, path, s, e) in zip(hits, expect):
        assert h["path"] == path and (h["start"], h["end"]) == (s, e)
        assert h["score"] == pytest.approx(score, abs=1e-5)


def test_index_cli_names_its_retry_flag(setup, tmp_path, capsys):
    """A file that failed is skipped by the next run, whose summary names the flag that retries it."""
    root, vids, lib = setup
    folder = tmp_path / "videos"
    folder.mkdir()
    videos.write_solid(str(folder / "red.mp4"), videos.RED, seconds=2)
    (folder / "notes.mp4").write_text("not a video")
    args = ["index", str(folder), "--library", str(tmp_path / "lib"), "--model", str(root / "model"), "--quiet",
            "--workers", "0"]
    assert main(args) == 0
    first = capsys.readouterr()
    assert "1 failed" in first.out and "notes.mp4" in first.err
    assert main(args) == 0
    assert "1 earlier failures skipped (--retry-failed retries them)" in capsys.readouterr().out
    assert main(args + ["--retry-failed"]) == 0
    assert "1 failed" in capsys.readouterr().out


def test_video_query_finds_itself_and_filters(setup):
    root, vids, lib = setup
    with VideoLibrary.open(lib) as library:
        assert len(library) == 8
        hits = library.search(video=vids / "square.mp4", k=2)
        assert hits[0].path == str(vids / "square.mp4") and hits[0].score == pytest.approx(1.0, abs=1e-4)
        only_long = library.search(video=vids / "square.mp4", k=10, where=Where(min_duration=10))
        assert {h.path for h in only_long} == {str(vids / "long.mp4")}
        globbed = library.search(text="anything", k=10, where={"path_glob": "*/gr*.mp4"})
        assert [h.path for h in globbed] == [str(vids / "green.mp4")]


def test_overlapping_windows_merge_into_moments(setup):
    root, vids, lib = setup
    with VideoLibrary.open(lib) as library:
        merged = library.search(video=vids / "long.mp4", k=10, where=Where(path_glob="*long.mp4"))
        raw = library.search(video=vids / "long.mp4", k=10, where=Where(path_glob="*long.mp4"), merge=False)
    # Windows 0-8, 4-12, ..., 16-24: the best (4-12) seeds a moment that its neighbours ranked above the next seed
    # widen (0-8 joins; 8-16 ranks below 16-24, which seeds the second moment, and touches both, so it is dropped).
    assert [(h.start, h.end) for h in raw][:2] == [(4.0, 12.0), (0.0, 8.0)] and len(raw) == 5
    assert [(h.start, h.end, len(h.clip_ids)) for h in merged] == [(0.0, 12.0, 2), (16.0, 24.0, 1)]
    assert merged[0].score == max(h.score for h in raw)


def test_merge_moments_keeps_separate_spans():
    from types import SimpleNamespace as H
    hits = [H(path="a", start=0, end=10, score=.5, clip_id=1), H(path="a", start=20, end=30, score=.9, clip_id=2),
            H(path="b", start=0, end=10, score=.7, clip_id=3), H(path="a", start=25, end=35, score=.8, clip_id=4)]
    out = merge_moments(hits)
    assert [(m["path"], m["start"], m["end"], m["clip_ids"]) for m in out] == [
        ("a", 20, 35, [2, 4]), ("b", 0, 10, [3]), ("a", 0, 10, [1])]
    # The top of a longer ranking: the last moment is still open (a lower window could widen it), so it is left
    # out rather than reported cut short; the final ones are the same as in the full ranking.
    partial = merge_moments(hits, partial=True)
    assert [(m["path"], m["start"], m["end"], m["clip_ids"]) for m in partial] == [
        ("a", 20, 35, [2, 4]), ("b", 0, 10, [3])]
    # gap: windows less than `gap` seconds apart touch; farther apart they stay separate moments
    apart = [H(path="a", start=0, end=10, score=.9, clip_id=1), H(path="a", start=11, end=20, score=.8, clip_id=2)]
    assert [(m["start"], m["end"]) for m in merge_moments(apart, gap=1.0)] == [(0, 20)]
    assert [(m["start"], m["end"]) for m in merge_moments(apart, gap=0.5)] == [(0, 10), (11, 20)]


def test_rerank_orders_by_itm_logits(setup):
    root, vids, lib = setup
    with VideoLibrary.open(lib) as library:
        emb = library.search(text="a square moving", k=8, merge=False)
        re = library.search(text="a square moving", k=8, rerank=3, merge=False)
        top3 = [h for h in emb[:3]]
        from retrieval.library import read_windows
        m = library._reader.manifest
        clips = [read_windows(h.path, m.num_frames, m.window, m.stride, m.max_seconds)[(h.start, h.end)] for h in top3]
        itm = library.encoder.itm_scores_for("a square moving", clips)
    order = np.argsort(-itm, kind="stable")
    assert [(h.path, h.start) for h in re[:3]] == [(top3[i].path, top3[i].start) for i in order]
    assert [h.score for h in re[:3]] == pytest.approx(sorted(itm.tolist(), reverse=True), abs=1e-5)
    assert all(h.itm is not None for h in re[:3]) and all(h.itm is None for h in re[3:])
    assert [h.score for h in re[3:]] == [-100.0] * (len(re) - 3)  # the official value, valid in JSON
    json.loads(json.dumps([h.to_dict() for h in re], allow_nan=False))


def test_per_video_and_table_output(setup, capsys):
    root, vids, lib = setup
    capsys.readouterr()
    assert main(["search", str(lib), "--video", str(vids / "red.mp4"), "-k", "10", "--per-video"]) == 0
    out = capsys.readouterr().out
    assert "rank" in out and "start-end" in out
    assert sum(str(vids / name) in out for name in ("red.mp4", "green.mp4", "square.mp4", "long.mp4")) == 4


def test_table_marks_hits_the_itm_head_did_not_rescore(setup, capsys):
    root, vids, lib = setup
    capsys.readouterr()
    assert main(["search", str(lib), "a square moving", "-k", "6", "--no-merge", "--rerank", "2"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    assert len(rows) == 6 and all(r[1] != "-" for r in rows[:2]) and all(r[1] == "-" for r in rows[2:])
    assert "-100" not in "".join(r[1] for r in rows) and "outside the 2 re-scored clips" in out
    assert main(["search", str(lib), "a square moving", "-k", "6", "--no-merge"]) == 0
    assert "re-scored" not in capsys.readouterr().out


def test_table_marks_a_file_deleted_since_indexing(setup, tmp_path, capsys):
    import shutil
    root, vids, lib = setup
    shutil.copy(vids / "red.mp4", tmp_path / "gone.mp4")
    shutil.copy(vids / "green.mp4", tmp_path / "kept.mp4")
    with VideoLibrary.create(tmp_path / "lib", model=str(root / "model")) as library:
        assert library.add([tmp_path / "gone.mp4", tmp_path / "kept.mp4"], workers=0).indexed == 2
    (tmp_path / "gone.mp4").unlink()
    capsys.readouterr()
    assert main(["search", str(tmp_path / "lib"), "a red screen", "-k", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [("gone.mp4" in line, "file not found" in line) for line in lines if ".mp4" in line] in (
        [(True, True), (False, False)], [(False, False), (True, True)])
    assert main(["search", str(tmp_path / "lib"), "a red screen", "-k", "5", "--json"]) == 0
    assert {os.path.basename(h["path"]): h["exists"] for h in json.loads(capsys.readouterr().out)} == {
        "gone.mp4": False, "kept.mp4": True}  # the table's words, for a script


def test_incremental_add_and_remove(setup, tmp_path):
    root, vids, lib = setup
    lib2 = tmp_path / "lib2"
    library = VideoLibrary.create(lib2, model=str(root / "model"))
    summary = library.add([vids / "red.mp4", vids / "green.mp4"], workers=0, window=8, stride=4)
    assert summary.indexed == 2 and len(library) == 2
    assert library.add([vids], workers=0).indexed == 2 and len(library) == 8
    assert library.remove([vids / "long.mp4"]) == 1 and len(library) == 3
    library.close()
    with VideoLibrary.open(lib2) as again:
        assert len(again) == 3


@pytest.mark.parametrize("argv, message", [
    (["search", "{lib}", ""], "empty query text"),
    # cleaned or tokenized away: every such query ranked the library alike, for the text [CLS] [SEP]
    (["search", "{lib}", "?!"], "query '?!' has no words"),
    (["search", "{lib}", "--", "..."], "query '...' has no words"),
    (["search", "{lib}", "\u200b"], "query '\\u200b' has no words"),
    (["search", "{lib}", "\U0001f436\U0001f436"], "has no words"),  # [UNK] [UNK]: unknown to the model
    (["search", "{lib}"], "give a text query, --video QUERY.mp4 or --queries FILE"),
    (["search", "{tmp}/nope", "dogs"], "does not exist"),
    (["search", "{lib}", "dogs", "--model", "vmm_nano"], "was built with model"),
    (["search", "{lib}", "--video", "{tmp}/missing.mp4"], "query video"),
    (["index", "{tmp}/no-such-folder", "--library", "{tmp}/l", "--model", "{model}"], "no-such-folder"),
    (["index", "{vids}", "--library", "{tmp}/l2"], "no model given"),
    # the folder is named before the model is asked for (or loaded): it was "no model given"
    (["index", "{vids}", "--library", "{vids}"], "videos is not empty and holds no vmm library"),
    (["index", "{vids}", "--library", "{vids}/red.mp4"], "red.mp4 exists and is not a folder"),
    (["index", "{vids}", "--library", "{tmp}/l3", "--model", "{model}", "--window", "0", "--stride", "3"],
     "--stride 3 does not apply with --window 0 (one clip per video); drop --stride"),  # was dropped silently
])
def test_bad_input_is_one_line(setup, tmp_path, capsys, argv, message):
    root, vids, lib = setup
    argv = [a.format(lib=lib, tmp=tmp_path, model=root / "model", vids=vids) for a in argv]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err


def test_video_query_that_is_not_a_video_says_so(setup, tmp_path, capsys):
    # FFmpeg opens a JSON file as subtitles: the message was "no video stream in the container (it holds subtitle)".
    root, vids, lib = setup
    (tmp_path / "test.json").write_text('[{"video": "a.mp4", "caption": "a dog"}]\n')
    (tmp_path / "notes.mp4").write_text("not a video\n")
    for name, message in [("test.json", "not a video: text"), ("notes.mp4", "not a video: the file holds text")]:
        capsys.readouterr()
        assert main(["search", str(lib), "--video", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"error: query video {tmp_path / name}: {message}" + \
            (" and no video extension" if name.endswith(".json") else "") + "; pass a video file", err


def test_unreadable_query_video_is_one_line(setup, tmp_path, capsys, monkeypatch):
    """The query is tested before decoding; an unreadable one raised PermissionError from that test (a traceback).
    os.open is made to refuse it, as chmod 000 does for anyone but root."""
    import index.discovery as discovery
    root, vids, lib = setup
    locked = tmp_path / "locked.mp4"
    locked.write_bytes((vids / "red.mp4").read_bytes())
    real_open = discovery.os.open

    def refuse(path, *args, **kwargs):
        if str(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(discovery.os, "open", refuse)
    capsys.readouterr()
    assert main(["search", str(lib), "--video", str(locked)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: query video {locked}: permission denied; make the file readable (chmod a+r) and run again"


def test_a_library_without_model_json_names_the_model_of_its_manifest(setup, tmp_path, capsys):
    import shutil
    root, vids, lib = setup
    copy = tmp_path / "lib"
    shutil.copytree(lib, copy)
    (copy / "model.json").unlink()
    name = json.loads((copy / "manifest.json").read_text())["model_name"]
    for argv in (["search", str(copy), "red"], ["index", str(vids), "--library", str(copy), "--quiet"]):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"per its manifest.json: model {name!r} (weights " in err and err.count("\n") == 1, err


def test_a_moved_model_folder_is_named_as_missing(setup, tmp_path, capsys):
    import shutil
    root, vids, lib = setup
    model = tmp_path / "model"
    shutil.copytree(root / "model", model)
    assert main(["index", str(vids / "red.mp4"), "--library", str(tmp_path / "lib"), "--model", str(model),
                 "--quiet", "--workers", "0"]) == 0
    model.rename(tmp_path / "moved")
    capsys.readouterr()
    assert main(["search", str(tmp_path / "lib"), "red"]) == 2
    err = capsys.readouterr().err
    # It said "unknown model '/.../model'; available: " and every registered name.
    assert f"model folder {model} does not exist (moved, renamed or mistyped?)" in err and "available" not in err
    assert "model.json" in err and err.count("\n") == 1


def test_cli_entry_point_runs_as_a_subprocess(setup):
    root, vids, lib = setup
    r = subprocess.run([sys.executable, "-m", "vmm.cli", "search", str(lib), "--video", str(vids / "green.mp4"),
                        "-k", "1", "--json"], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["path"] == str(vids / "green.mp4")


def test_api_takes_a_lone_path_as_one_path(setup, tmp_path):
    """add() and remove() given one path (not a list) act on that path: iterated as characters, the "/" of a
    path string once matched, and removed, every file of the library."""
    root, vids, lib = setup
    with VideoLibrary.create(tmp_path / "lib", model=str(root / "model")) as library:
        library.add(str(vids), window=8, stride=4, workers=0)
        assert len(library) == 8
        assert library.remove(vids / "red.mp4") == 1
        assert len(library) == 7 and not library.search(text="red", k=10, where=Where(path_glob="*/red.mp4"))
        with pytest.raises(VmmError, match="takes a path or a list of paths"):
            library.remove(5)


def test_api_refuses_wrong_argument_types(setup):
    root, vids, lib = setup
    with VideoLibrary.open(lib) as library:
        for kwargs, message in [(dict(text=123), "text must be a string"), (dict(text=b"red"), "text must be"),
                                (dict(video=b"x.mp4"), "video must be a path"),
                                (dict(text="red", k=2.5), "k must be a whole number"),
                                (dict(text="red", k=True), "k must be a whole number"),
                                (dict(text="red", rerank=-1), "rerank must be a whole number >= 0"),
                                (dict(text="red", rerank="3"), "rerank must be"),
                                (dict(text="red", where="*.mp4"), "where must be a Where"),
                                (dict(text="red", where={"min_duration": "abc"}), "min_duration must be a number"),
                                (dict(text="red", where={"min_durations": 1}), "unknown keys"),
                                (dict(text="red", where=Where(min_duration=5, max_duration=1)), "no video can")]:
            with pytest.raises(VmmError, match=message):
                library.search(**kwargs)
        assert len(library.search(text="red", k=np.int64(2))) == 2
        with pytest.raises(VmmError, match=r"^rerank= \(--rerank\) needs a text query .*; drop it for a search by video$"):
            library.search(video=vids / "red.mp4", rerank=2)
        with pytest.raises(VmmError, match="is not a file"):
            library.search(video=vids)
        # A misspelt option was a TypeError about build_library, which the caller never called.
        with pytest.raises(VmmError, match="add\\(\\) got unknown option windw; the options are window, stride"):
            library.add([vids], windw=4)


def test_rerank_refuses_a_video_replaced_since_indexing(setup, tmp_path):
    root, vids, lib = setup
    folder = tmp_path / "videos"
    folder.mkdir()
    red = videos.write_solid(str(folder / "red.mp4"), videos.RED, seconds=2)
    videos.write_solid(str(folder / "green.mp4"), videos.GREEN, seconds=2)
    with VideoLibrary.create(tmp_path / "lib", model=str(root / "model")) as library:
        library.add([folder], workers=0)
        assert len(library.search(text="red", k=2, rerank=2)) == 2
        videos.write_moving_square(red, seconds=3)  # replaced in place: its vectors now describe other content
        with pytest.raises(VmmError, match="changed since it was indexed"):
            library.search(text="red", k=2, rerank=2)
        os.remove(red)  # ITM needs the frames: the way out without re-indexing is the same for a deleted file
        with pytest.raises(VmmError, match="is gone since it was indexed; .*, or search without rerank="):
            library.search(text="red", k=2, rerank=2)
        assert len(library.search(text="red", k=2)) == 2


def test_relative_path_glob_is_taken_from_the_current_folder(setup, capsys, monkeypatch):
    root, vids, lib = setup
    monkeypatch.chdir(vids.parent)
    capsys.readouterr()
    assert main(["search", str(lib), "a red screen", "--json", "--path", f"{vids.name}/gr*"]) == 0
    assert {h["path"] for h in json.loads(capsys.readouterr().out)} == {str(vids / "green.mp4")}
    assert main(["search", str(lib), "a red screen", "--json", "--path", "*/gr*"]) == 0
    assert {h["path"] for h in json.loads(capsys.readouterr().out)} == {str(vids / "green.mp4")}
    # "./", "../" and a quoted "~" are not in any stored path, and a folder means the videos under it.
    monkeypatch.setenv("HOME", str(vids.parent))
    everything = {str(vids / name) for name in ("red.mp4", "green.mp4", "square.mp4", "long.mp4")}
    for pattern, wanted in [(f"./{vids.name}/gr*", {str(vids / "green.mp4")}),
                            (f"../{vids.parent.name}/{vids.name}/gr*", {str(vids / "green.mp4")}),
                            (f"~/{vids.name}/gr*", {str(vids / "green.mp4")}),
                            (vids.name, everything), (f"{vids.name}/", everything), (str(vids), everything)]:
        assert main(["search", str(lib), "a red screen", "--json", "--path", pattern]) == 0
        assert {h["path"] for h in json.loads(capsys.readouterr().out)} == wanted, pattern


def test_no_results_says_which_filter_left_nothing(setup, tmp_path, capsys, monkeypatch):
    """A bare "no results" left a --path typed from the wrong folder looking like no match for the query."""
    root, vids, lib = setup
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    for options, wanted in [
        (["--path", "videos/gr*"], f"no results: no indexed video matches --path videos/gr* (taken from {tmp_path}); "
                                   "widen or drop it"),
        (["--path", "*gr*", "--min-duration", "5"], "no results: no indexed video matches --path *gr*, "
                                                    "--min-duration 5; widen or drop them"),
        (["--max-duration", "0.5"], "no results: no indexed video matches --max-duration 0.5; widen or drop it")]:
        assert main(["search", str(lib), "a red screen", *options]) == 0
        assert capsys.readouterr().out == wanted + "\n"
        assert main(["search", str(lib), "a red screen", "--json", *options]) == 0
        assert json.loads(capsys.readouterr().out) == []
    (tmp_path / "empty").mkdir()
    assert main(["index", str(tmp_path / "empty"), "--library", "lib", "--model", str(root / "model"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["search", "lib", "a red screen"]) == 0
    assert capsys.readouterr().out == ("no results: the library holds no clips; add videos with "
                                       "`vmm index VIDEOS --library lib`\n")


def test_path_names_an_existing_file_or_folder_as_written(tmp_path, capsys):
    """Brackets in a real name were read as a glob character class: `--path "[2019] trip"` gave "no results"."""
    trip, other = tmp_path / "[2019] trip", tmp_path / "other"
    trip.mkdir(), other.mkdir()
    videos.write_solid(str(trip / "[intro] a.mp4"), videos.RED)
    videos.write_solid(str(other / "b.mp4"), videos.RED)
    query = videos.write_solid(str(tmp_path / "query.mp4"), videos.RED)
    lib = tmp_path / "lib"
    assert main(["index", str(trip), str(other), "--library", str(lib), "--model", "color-histogram", "--quiet",
                 "--workers", "0"]) == 0

    def paths(pattern):
        capsys.readouterr()
        assert main(["search", str(lib), "--video", query, "--json", "--path", pattern]) == 0
        return {h["path"] for h in json.loads(capsys.readouterr().out)}

    assert paths(str(trip)) == paths(str(trip / "[intro] a.mp4")) == {str(trip / "[intro] a.mp4")}
    assert paths(str(tmp_path / "*" / "[[]intro]*")) == {str(trip / "[intro] a.mp4")}  # still a glob
    (tmp_path / "link").symlink_to(other)  # the library holds the videos under the folder they were indexed from
    assert paths(str(tmp_path / "link")) == paths(str(tmp_path / "link" / "b.mp4")) == {str(other / "b.mp4")}
    # A folder gone from disk (an unmounted drive) still means the videos the library holds under it.
    other.rename(tmp_path / "away")
    assert paths(str(other)) == {str(other / "b.mp4")}


def test_table_rounds_times_up_to_the_next_minute(tmp_path, capsys):
    """A 59.9976 s video (658 frames at 11000/1003 fps) was listed as ending at "0:60.00"."""
    import fractions

    import av
    with av.open(str(tmp_path / "v.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=fractions.Fraction(11000, 1003))
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        for i in range(658):
            frame = av.VideoFrame.from_ndarray(np.full((24, 32, 3), i % 255, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    lib = tmp_path / "lib"
    assert main(["index", str(tmp_path / "v.mp4"), "--library", str(lib), "--model", "color-histogram", "--window",
                 "0", "--quiet", "--workers", "0"]) == 0
    capsys.readouterr()
    assert main(["search", str(lib), "--video", str(tmp_path / "v.mp4")]) == 0
    assert "0:00.00-1:00.00" in capsys.readouterr().out


def test_table_prints_a_long_path_whole_on_one_line(tmp_path, capsys):
    """At Rich's fixed 200 columns a path over ~165 characters was cut with "…" (its ".mp4" lost) and, with
    spaces in it, folded over two lines: the table named no file one could open."""
    folder = tmp_path / "/".join(f"a rather long folder name {i}" for i in range(6))
    folder.mkdir(parents=True)
    video = videos.write_solid(str(folder / f"the {'very ' * 10}long name.mp4"), videos.RED)
    lib = tmp_path / "lib"
    assert main(["index", video, "--library", str(lib), "--model", "color-histogram", "--quiet",
                 "--workers", "0"]) == 0
    capsys.readouterr()
    assert main(["search", str(lib), "--video", video]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(video) > 200 and len(rows) == 2  # the header and one row
    assert video in rows[1] and rows[1].split()[:2] == ["1", "1.0000"] and rows[1].rstrip().endswith("0:00.00-0:02.00")


def test_weights_for_a_colour_histogram_library_are_refused_also_under_a_quoted_tilde(tmp_path, capsys,
                                                                                       monkeypatch):
    """`vmm search "~/lib" ... --model M` on a colour-histogram library: the check that names the library's own
    encoder read the model file through a folder named "~" in the working one, found none and let the command go
    on to load M's weights for a library that has none."""
    video = videos.write_solid(str(tmp_path / "red.mp4"), videos.RED)
    assert main(["index", video, "--library", str(tmp_path / "lib"), "--model", "color-histogram", "--quiet",
                 "--workers", "0"]) == 0
    monkeypatch.setenv("HOME", str(tmp_path))
    capsys.readouterr()
    for library in (str(tmp_path / "lib"), "~/lib"):
        assert main(["search", library, "a red screen", "--model", "vmm_nano"]) == 2
        err = capsys.readouterr().err
        assert "was indexed with color-histogram, which has no weights" in err and len(err.splitlines()) == 1, err
