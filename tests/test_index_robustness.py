"""`vmm index` / `vmm search` against unreadable files, foreign folders, bad settings and damaged model records."""
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from index.catalog import Catalog
from index.encoder import ColorHistogramEncoder
from index.ingest import build_library
from index.library import remove_paths
from retrieval.library import VideoLibrary
from tests import videos
from tests.tiny_model import save_tiny_model
from vmm.cli import main
from vmm.errors import VmmError

REPO = Path(__file__).resolve().parents[1]
HIST = ["--model", "color-histogram", "--quiet", "--workers", "0"]
# Root ignores file modes; without these capabilities it is held to them like any user.
DROP_CAPS = ["setpriv", "--inh-caps=-dac_override,-dac_read_search,-fowner",
             "--bounding-set=-dac_override,-dac_read_search,-fowner"]

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def indexed_paths(library) -> list[str]:
    catalog = Catalog.open(os.path.join(library, "catalog.sqlite"), read_only=True)
    try:
        return sorted(row.path for row in catalog.files())
    finally:
        catalog.close()


def make_videos(folder, names=("red", "green")) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    colours = {"red": videos.RED, "green": videos.GREEN, "blue": videos.BLUE}
    return [videos.write_solid(str(folder / f"{name}.mp4"), colours[name], seconds=1) for name in names]


def vmm_as_user(*args) -> subprocess.CompletedProcess:
    return subprocess.run(DROP_CAPS + [sys.executable, "-m", "vmm.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)


def caps_can_be_dropped(tmp_path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir(mode=0)
    try:
        if shutil.which("setpriv") is None or subprocess.run(DROP_CAPS + ["true"], capture_output=True).returncode:
            return False  # setpriv itself refused (a failing `ls` below would then prove nothing)
        r = subprocess.run(DROP_CAPS + ["ls", str(probe)], capture_output=True)
        return r.returncode != 0
    finally:
        probe.chmod(0o755)


def test_a_catalog_file_this_user_cannot_write_still_serves_a_run_with_nothing_to_write(tmp_path):
    """Writers add the files.size index to libraries made before it; where the catalog file is read-only that
    failed the run as 'catalog.sqlite is damaged' though it had nothing to write."""
    if not caps_can_be_dropped(tmp_path):
        pytest.skip("setpriv missing or capabilities cannot be dropped")
    vids, lib = tmp_path / "vids", tmp_path / "lib"
    make_videos(vids, ("red",))
    assert main(["index", str(vids), "--library", str(lib), *HIST]) == 0
    conn = sqlite3.connect(lib / "catalog.sqlite")
    conn.execute("DROP INDEX files_by_size")  # a library made before the index
    conn.close()
    for path in [lib, *lib.iterdir()]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    (lib / "catalog.sqlite").chmod(0o444)
    r = vmm_as_user("index", str(vids), "--library", str(lib), *HIST)
    assert r.returncode == 0 and "1 unchanged" in r.stdout, r.stderr
    assert indexed_paths(str(lib)) == [str(vids / "red.mp4")]

# -- finding 1: files that exist but cannot be read keep their clips ----------------------------------
def test_unlistable_folder_keeps_its_clips(tmp_path):
    if not caps_can_be_dropped(tmp_path):
        pytest.skip("cannot make a folder unreadable here (setpriv missing or capabilities cannot be dropped)")
    vids, lib = tmp_path / "vids", str(tmp_path / "lib")
    make_videos(vids / "sub")
    make_videos(vids, ("blue",))
    assert main(["index", str(vids), "--library", lib, *HIST]) == 0
    before = indexed_paths(lib)
    assert len(before) == 3
    os.chmod(lib, 0o777)  # the capability-less run must still write the library
    for path in [lib, *(os.path.join(lib, n) for n in os.listdir(lib))]:
        os.chmod(path, 0o777 if os.path.isdir(path) else 0o666)
    try:
        (vids / "sub").chmod(0)
        r = vmm_as_user("index", str(vids), "--library", lib, *HIST)
        assert r.returncode == 0, r.stderr
        assert "0 removed" in r.stdout and "1 unchanged" in r.stdout
        assert f"unreadable: {vids / 'sub'}: Permission denied" in r.stderr
        assert ", 1 unreadable" in r.stdout
        vids.chmod(0)  # the folder given itself
        r = vmm_as_user("index", str(vids), "--library", lib, *HIST)
        assert r.returncode == 0, r.stderr
        assert "0 removed" in r.stdout and f"unreadable: {vids}" in r.stderr
        vids.chmod(0o755)
        (vids / "sub").chmod(0o755)
        (vids / "sub" / "red.mp4").chmod(0)  # a file that cannot be read
        r = vmm_as_user("index", str(vids), "--library", lib, *HIST)
        assert r.returncode == 0, r.stderr
        assert "0 removed" in r.stdout and f"unreadable: {vids / 'sub' / 'red.mp4'}" in r.stderr
    finally:
        for p in (vids, vids / "sub", vids / "sub" / "red.mp4"):
            p.chmod(0o755)
    assert indexed_paths(lib) == before


def test_broken_link_and_bad_names_keep_clips_and_are_reported(tmp_path, capsys):
    vids, lib = tmp_path / "vids", str(tmp_path / "lib")
    red, green = make_videos(vids)
    assert main(["index", str(vids), "--library", lib, *HIST]) == 0
    moved = shutil.move(green, tmp_path / "green-elsewhere.mp4")
    os.symlink(tmp_path / "unmounted" / "green.mp4", green)  # the link outlives its target's drive
    shutil.copy(red, os.fsencode(vids) + b"/bad-\xff.mp4")
    capsys.readouterr()
    assert main(["index", str(vids), "--library", lib, *HIST]) == 0
    out, err = capsys.readouterr()
    assert "0 removed" in out and "2 unreadable" in out
    assert f"unreadable: {green}: broken symbolic link" in err
    assert "bad-\\xff.mp4: file name is not valid UTF-8, which a library cannot store; rename the file" in err
    assert indexed_paths(lib) == sorted([red, green])
    os.remove(green)  # now it is really gone: its clips go
    assert main(["index", str(vids), "--library", lib, *HIST]) == 0
    assert "1 removed" in capsys.readouterr().out
    assert indexed_paths(lib) == [red]
    assert os.path.exists(moved)


def test_file_that_stops_being_a_video_is_removed(tmp_path, capsys):
    vids, lib = tmp_path / "vids", str(tmp_path / "lib")
    red, _ = make_videos(vids)
    assert main(["index", str(vids), "--library", lib, *HIST]) == 0
    os.remove(red)
    videos.write_text(str(vids / "red.txt"))
    os.rename(vids / "red.txt", red.replace(".mp4", ".dat"))  # read, and found not to be a video
    assert main(["index", str(vids), "--library", lib, *HIST]) == 0
    assert "1 removed" in capsys.readouterr().out


# -- finding 4: a FIFO never blocks discovery -----------------------------------------------------
def test_fifo_named_like_a_video_is_skipped_not_read(tmp_path, capsys):
    vids, lib = tmp_path / "vids", str(tmp_path / "lib")
    make_videos(vids, ("red",))
    os.mkfifo(vids / "pipe.mp4")
    done = {}
    thread = threading.Thread(target=lambda: done.setdefault("rc", main(["index", str(vids), "--library", lib,
                                                                          *HIST])), daemon=True)
    thread.start()
    thread.join(30)
    if thread.is_alive():  # release the reader so the test run can end, then fail
        with open(vids / "pipe.mp4", "wb"):
            pass
        pytest.fail("vmm index hangs on a FIFO named *.mp4")
    assert done["rc"] == 0
    out, err = capsys.readouterr()
    assert "indexed 1 files" in out and "1 unreadable" in out
    assert f"unreadable: {vids / 'pipe.mp4'}: not a regular file" in err


# -- findings 2 and 3: refused runs write nothing, and nothing of the user's is overwritten ---------
@pytest.mark.parametrize("content", [{"lock": "my notes\n"}, {"manifest.json": '{"mine": true}\n'},
                                     {"notes.txt": "hello\n"}])
def test_folder_with_a_users_files_is_refused_untouched(tmp_path, capsys, content):
    vids = tmp_path / "vids"
    make_videos(vids, ("red",))
    folder = tmp_path / "um"
    folder.mkdir()
    for name, text in content.items():
        (folder / name).write_text(text)
    assert main(["index", str(vids), "--library", str(folder), *HIST]) == 2
    err = capsys.readouterr().err
    assert "is not empty and holds no vmm library" in err and "choose an empty or new folder" in err
    assert {p.name: p.read_text() for p in folder.iterdir()} == content


def test_videos_folder_as_library_is_refused_without_a_lock(tmp_path, capsys):
    vids = tmp_path / "vids"
    make_videos(vids, ("red",))
    assert main(["index", str(vids), "--library", str(vids), *HIST]) == 2
    assert "is not empty and holds no vmm library" in capsys.readouterr().err
    assert sorted(os.listdir(vids)) == ["red.mp4"]


def test_remove_from_a_missing_library_creates_nothing(tmp_path, capsys):
    assert main(["index", str(tmp_path), "--library", str(tmp_path / "nolib"), "--remove"]) == 2
    err = capsys.readouterr().err
    assert "no vmm library at" in err and "check the --library path" in err
    assert not (tmp_path / "nolib").exists()


# -- finding 5: absurd window counts are refused --------------------------------------------------
def test_tiny_stride_is_refused_before_work(tmp_path, capsys):
    vids = tmp_path / "vids"
    make_videos(vids, ("red",))
    assert main(["index", str(vids), "--library", str(tmp_path / "lo"), "--window", "3", "--stride", "1e-9",
                 *HIST]) == 2
    assert "--stride must be >= 0.01 seconds" in capsys.readouterr().err
    assert not (tmp_path / "lo").exists()
    with pytest.raises(VmmError, match=r"stride must be >= 0.01 s"):
        build_library([str(vids)], str(tmp_path / "lo"), ColorHistogramEncoder(), window=3, stride=1e-9,
                      progress=False)
    assert not (tmp_path / "lo").exists()


# -- finding 6: factories a library cannot train ----------------------------------------------------
@pytest.mark.parametrize("factory", ["PQ2", "SQ8", "HNSW32,PQ2", "OPQ2,PQ2", "PCA8,Flat", "IVF16,PQ2"])
def test_untrainable_factory_is_refused_before_embedding(tmp_path, capsys, factory):
    vids, lib = tmp_path / "vids", tmp_path / "lib"
    make_videos(vids, ("red",))
    assert main(["index", str(vids), "--library", str(lib), "--factory", factory, *HIST]) == 2
    err = capsys.readouterr().err
    assert f"index factory {factory!r} needs training" in err and "'IVF<nlist>,Flat'" in err
    assert not lib.exists()


def test_library_holding_an_untrainable_factory_says_how_to_fix_it(tmp_path, capsys):
    vids, lib = tmp_path / "vids", str(tmp_path / "lib")
    red, _ = make_videos(vids)
    assert main(["index", str(vids), "--library", lib, *HIST]) == 0
    catalog = Catalog.open(os.path.join(lib, "catalog.sqlite"))
    catalog.set_setting("index_factory", "PQ4")  # as an older version could leave it
    catalog.close()
    capsys.readouterr()
    assert main(["index", str(vids), "--library", lib, *HIST]) == 2
    err = capsys.readouterr().err
    assert "is set to an index type it cannot build" in err and "--factory auto" in err
    assert main(["index", red, "--library", lib, "--remove"]) == 2
    assert "cannot build" in capsys.readouterr().err
    assert main(["index", str(vids), "--library", lib, "--factory", "auto", *HIST]) == 0
    assert "2 unchanged" in capsys.readouterr().out


# -- findings 7, 8, 9: model.json -----------------------------------------------------------------
def test_library_is_searchable_while_its_first_run_embeds(tmp_path, monkeypatch, capsys):
    vids, lib = tmp_path / "vids", str(tmp_path / "lib")
    make_videos(vids, ("red",))
    seen = []
    encode = ColorHistogramEncoder.encode_clips

    def encode_and_open(self, clips):
        if not seen:  # before the first commit of the first run
            with VideoLibrary.open(lib) as library:
                seen.append(len(library))
        return encode(self, clips)

    monkeypatch.setattr(ColorHistogramEncoder, "encode_clips", encode_and_open)
    assert main(["index", str(vids), "--library", lib, *HIST]) == 0
    assert seen == [0]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    save_tiny_model(root / "model")
    return root


def test_relative_model_folder_is_recorded_absolute(tiny_model, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    shutil.copytree(tiny_model / "model", work / "model")
    vids = make_videos(work / "vids", ("red",))
    monkeypatch.chdir(work)
    assert main(["index", "vids", "--library", "lib", "--model", "model", "--quiet", "--workers", "0"]) == 0
    assert json.loads((work / "lib" / "model.json").read_text())["model"] == str(work / "model")
    monkeypatch.chdir("/")
    capsys.readouterr()
    assert main(["search", str(work / "lib"), "--video", vids[0], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["path"] == vids[0]
    shutil.move(work / "model", work / "model-moved")
    assert main(["search", str(work / "lib"), "red"]) == 2
    err = capsys.readouterr().err
    assert f"{work / 'lib' / 'model.json'}" in err and "pass --model" in err


def test_another_model_is_refused_as_another_model_not_for_frames_never_given(tiny_model, tmp_path, capsys):
    """model.json keeps the --frames of a run; a later run naming another model loaded it at those frames, and
    vmm_nano (weights for 8 frames) then failed with "--frames 4 ...: pass --frames 8, or leave it out", though
    no --frames was given."""
    vids, lib = tmp_path / "vids", str(tmp_path / "lib")
    make_videos(vids, ("red",))
    tiny = ["--model", str(tiny_model / "model"), "--quiet", "--workers", "0"]
    assert main(["index", str(vids), "--library", lib, *tiny, "--frames", "4"]) == 0
    capsys.readouterr()
    assert main(["index", str(vids), "--library", lib, "--model", "vmm_nano", "--quiet", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: library {lib} was built with model videomamba_m16_mm ") and "--frames" not in err
    assert "this run uses vmm_nano" in err and err.count("\n") == 1
    assert main(["index", str(vids), "--library", lib, "--quiet", "--workers", "0"]) == 0  # the library's model
    assert "1 unchanged" in capsys.readouterr().out


@pytest.mark.parametrize("text", ['{"model": 5}', "[1, 2]", '{"model": "x", "frames": "8"}', "\"text\""])
def test_damaged_model_json_gives_the_damaged_message(tmp_path, capsys, text):
    vids, lib = tmp_path / "vids", tmp_path / "lib"
    red, _ = make_videos(vids)
    assert main(["index", str(vids), "--library", str(lib), *HIST]) == 0
    (lib / "model.json").write_text(text)
    capsys.readouterr()
    assert main(["search", str(lib), "--video", red]) == 2
    assert "model.json is damaged; pass --model/--checkpoint" in capsys.readouterr().err


# -- finding 10: messages ------------------------------------------------------------------------
def test_remove_names_paths_that_matched_nothing_and_refuses_indexing_options(tmp_path, capsys):
    vids, lib = tmp_path / "vids", str(tmp_path / "lib")
    red, _ = make_videos(vids)
    assert main(["index", str(vids), "--library", lib, *HIST]) == 0
    capsys.readouterr()
    assert main(["index", str(tmp_path / "nonexist"), red, "--library", lib, "--remove"]) == 0
    out, err = capsys.readouterr()
    assert "removed 1 file(s)" in out and "1 of the PATHs matched nothing" in out
    assert f"not in the library: {tmp_path / 'nonexist'}" in err
    assert main(["index", str(vids), "--library", lib, "--remove", "--window", "4", "--model", "x"]) == 2
    assert "--remove takes only PATHs, --library and --json; --model, --window would be ignored" in capsys.readouterr().err
    assert indexed_paths(lib) == [str(vids / "green.mp4")]
    not_found = []
    assert remove_paths(lib, [str(tmp_path / "nonexist")], not_found=not_found) == 0
    assert not_found == [str(tmp_path / "nonexist")]


def test_remove_under_a_launcher_removes_once_on_rank_0(tmp_path, capsys):
    """`torchrun --nproc_per_node 2 -m vmm.cli index PATH --library LIB --remove` (the indexing command of a launch
    script with --remove added) ran the removal on every rank: rank 0 removed the file and rank 1 then printed
    that it matched nothing and "nothing under it was indexed", or failed on the lock rank 0 held."""
    vids, lib = tmp_path / "vids", str(tmp_path / "lib")
    red, _ = make_videos(vids)
    assert main(["index", str(vids), "--library", lib, *HIST]) == 0
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    ranks = [subprocess.Popen([sys.executable, "-m", "vmm.cli", "index", red, "--library", lib, "--remove"],
                              cwd=REPO, env={**env, "PYTHONPATH": str(REPO), "WORLD_SIZE": "2", "RANK": str(rank),
                                             "LOCAL_RANK": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    (out0, err0), (out1, err1) = (rank.communicate(timeout=120) for rank in ranks)
    assert [rank.returncode for rank in ranks] == [0, 0], err0 + err1
    assert (out0, err0) == (f"removed 1 file(s) from {lib}\n", "")
    assert (out1, err1) == ("", "")
    assert indexed_paths(lib) == [str(vids / "green.mp4")]


def test_a_launcher_variable_that_is_no_number_is_named_in_one_line(tmp_path, capsys, monkeypatch):
    vids, lib = tmp_path / "vids", str(tmp_path / "lib")
    red, _ = make_videos(vids)
    monkeypatch.setenv("WORLD_SIZE", "two")  # int() of it ended `vmm index` with a traceback
    for extra in (HIST, ["--remove"]):
        assert main(["index", red, "--library", lib, *extra]) == 2
        assert capsys.readouterr().err == ("error: environment variable WORLD_SIZE='two' is not an integer; unset it "
                                           "or fix the launcher\n")
    assert not os.path.exists(lib)


def test_window_zero_on_an_existing_library_is_named_as_the_option(tmp_path, capsys):
    vids, lib = tmp_path / "vids", str(tmp_path / "lib")
    make_videos(vids, ("red",))
    assert main(["index", str(vids), "--library", lib, *HIST]) == 0
    capsys.readouterr()
    assert main(["index", str(vids), "--library", lib, "--window", "0", *HIST]) == 2
    assert "window=inf (one clip per video, --window 0) was asked for" in capsys.readouterr().err


def test_search_of_a_folder_that_is_not_a_library(tmp_path, capsys):
    vids = tmp_path / "vids"
    make_videos(vids, ("red",))
    assert main(["search", str(vids), "red"]) == 2
    err = capsys.readouterr().err
    assert "is not a vmm library (no catalog.sqlite)" in err and "vmm index VIDEOS --library LIB" in err
    assert sorted(os.listdir(vids)) == ["red.mp4"]


def test_unreadable_video_is_blamed_on_permissions_not_content(tmp_path):
    if not caps_can_be_dropped(tmp_path):
        pytest.skip("cannot make a file unreadable here (setpriv missing or capabilities cannot be dropped)")
    (path,) = make_videos(tmp_path / "vids", ("red",))
    os.chmod(path, 0)
    code = f"from index.decode import _read_header\ntry:\n    _read_header({path!r})\nexcept Exception as e:\n    print(e)"
    r = subprocess.run(DROP_CAPS + [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert "permission denied; make the file readable" in r.stdout, r.stdout + r.stderr


def test_a_temporary_file_vanishing_during_the_folder_check_is_not_foreign(tmp_path):
    """Another rank creates and removes its catalog journal while this one checks the folder: a file gone between
    the listing and the check must not read as the user's (2% of checks refused it with two separate stats)."""
    import threading
    from index.library import refuse_foreign_folder
    stop = threading.Event()

    def churn():
        journal = tmp_path / "catalog.sqlite.new-journal"
        while not stop.is_set():
            journal.touch()
            journal.unlink()

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for _ in range(3000):
            refuse_foreign_folder(str(tmp_path))
    finally:
        stop.set()
        thread.join()


# -- paths and options of the wrong kind ------------------------------------------------------------
def test_an_empty_path_is_refused_not_read_as_the_working_folder(tmp_path, monkeypatch):
    """abspath('') is the working folder: remove_paths(lib, ['']) emptied the library of every file below it."""
    vids, lib = tmp_path / "vids", str(tmp_path / "lib")
    make_videos(vids)
    build_library([str(vids)], lib, ColorHistogramEncoder(), workers=0, progress=False)
    monkeypatch.chdir(vids)
    for paths in ("", [""], [str(vids / "red.mp4"), ""]):
        with pytest.raises(VmmError, match=r"^paths holds an empty path \(''\); pass the files or folders to remove$"):
            remove_paths(lib, paths)
    with pytest.raises(VmmError, match=r"^paths holds an empty path"):
        VideoLibrary(lib, ColorHistogramEncoder(), None).remove("")
    with pytest.raises(VmmError, match=r"^paths holds an empty path \(''\); pass the files or folders to index$"):
        build_library([""], lib, ColorHistogramEncoder(), workers=0, progress=False)
    assert indexed_paths(lib) == [str(vids / "green.mp4"), str(vids / "red.mp4")]


def test_removing_through_a_symbolic_link_removes_the_files_it_reaches(tmp_path):
    """Files reached without a link are stored under their real paths; removing by the link's path found none."""
    vids, lib = tmp_path / "vids", str(tmp_path / "lib")
    make_videos(vids, ("red", "green", "blue"))
    (tmp_path / "link").symlink_to(vids)
    (tmp_path / "red-link.mp4").symlink_to(vids / "red.mp4")
    build_library([str(vids)], lib, ColorHistogramEncoder(), workers=0, progress=False)
    not_found = []
    assert remove_paths(lib, [str(tmp_path / "red-link.mp4")], not_found=not_found) == 1
    assert remove_paths(lib, [str(tmp_path / "link" / "green.mp4")], not_found=not_found) == 1
    assert not_found == [] and indexed_paths(lib) == [str(vids / "blue.mp4")]
    assert remove_paths(lib, str(tmp_path / "link")) == 1
    assert indexed_paths(lib) == []


def test_removing_through_a_repointed_link_removes_what_was_indexed_through_it(tmp_path):
    """remove_paths resolved the link before matching: with current -> d2023 indexed through the link and d2024
    indexed on its own, repointing current to d2024 made remove_paths([current]) remove both years."""
    d2023, d2024, current, lib = tmp_path / "d2023", tmp_path / "d2024", tmp_path / "current", str(tmp_path / "lib")
    make_videos(d2023, ("red", "green"))
    make_videos(d2024, ("blue",))
    current.symlink_to(d2023)
    build_library([str(current), str(d2024)], lib, ColorHistogramEncoder(), workers=0, progress=False)
    assert indexed_paths(lib) == [str(current / "green.mp4"), str(current / "red.mp4"), str(d2024 / "blue.mp4")]
    current.unlink()
    current.symlink_to(d2024)
    not_found = []
    assert remove_paths(lib, [str(current)], not_found=not_found) == 2
    assert not_found == [] and indexed_paths(lib) == [str(d2024 / "blue.mp4")]
    assert remove_paths(lib, [str(current)]) == 1  # nothing left under the written path: its real one is used
    assert indexed_paths(lib) == []


@pytest.mark.parametrize("option, value, message", [
    ("paths", [3], "paths must be file or folder paths (str or os.PathLike), got 3; pass the videos to index"),
    ("paths", None, "paths must be file or folder paths (str or os.PathLike), got None; pass the videos to index"),
    ("paths", [b"/videos"], "paths must be str, not bytes: got b'/videos'; decode it with os.fsdecode"),
    ("paths", ["a\0b"], "paths holds 'a\\x00b', with a NUL character no file name can hold; fix the path"),
    ("batch_size", "2", "batch_size must be a whole number, got '2'; fix the option"),
    ("batch_size", 2.5, "batch_size must be a whole number, got 2.5; fix the option"),
    ("workers", "1", "workers must be a whole number, got '1'; fix the option"),
    ("timeout", "5", "timeout must be a number of seconds, got '5'; fix the option"),
    ("window", "abc", "window must be a number of seconds, got 'abc'; fix the option"),
    ("max_seconds", "30", "max_seconds must be a number of seconds, got '30'; fix the option"),
    ("max_pixels", "8k", "max_pixels must be a whole number, got '8k'; fix the option"),
    ("commit_seconds", "2", "commit_seconds must be a number of seconds, got '2'; fix the option"),
    ("on_open", "model.json", "on_open must be a function of the library folder or None, got 'model.json'"),
])
def test_arguments_of_the_wrong_kind_are_named_before_anything_is_written(tmp_path, option, value, message):
    vids, lib = tmp_path / "vids", tmp_path / "lib"
    make_videos(vids, ("red",))
    options = {"paths": [str(vids)], "workers": 0, "progress": False, option: value}
    paths = options.pop("paths")
    with pytest.raises(VmmError) as error:
        build_library(paths, str(lib), ColorHistogramEncoder(), **options)
    assert str(error.value) == message
    assert not lib.exists()


@pytest.mark.parametrize("paths, message", [
    (None, "got None; pass the videos to remove"), (3, "got 3; pass the videos to remove"),
    ([3], "got 3; pass the videos to remove"), ([b"/videos"], "not bytes: got b'/videos'"),
])
def test_remove_paths_of_the_wrong_kind_are_named(tmp_path, paths, message):
    vids, lib = tmp_path / "vids", str(tmp_path / "lib")
    make_videos(vids, ("red",))
    build_library([str(vids)], lib, ColorHistogramEncoder(), workers=0, progress=False)
    with pytest.raises(VmmError, match=f"^paths must be .*{message}"):
        remove_paths(lib, paths)
    assert indexed_paths(lib) == [str(vids / "red.mp4")]


def test_a_library_whose_catalog_was_deleted_names_the_files_to_delete(tmp_path, capsys):
    """It was called a foreign folder ('choose an empty or new folder'), though every file in it was the library's
    own and deleting the leftovers was the fix."""
    vids, lib = tmp_path / "vids", tmp_path / "lib"
    make_videos(vids, ("red",))
    assert main(["index", str(vids), "--library", str(lib), *HIST]) == 0
    (lib / "catalog.sqlite").unlink()
    before = {p.name: p.read_bytes() for p in lib.iterdir()}
    leftovers = sorted(set(before) - {"lock", "manifest.json"})
    assert [name for name in leftovers if not name.startswith("vectors.g")] == ["index-state.json", "model.json"]
    capsys.readouterr()
    assert main(["index", str(vids), "--library", str(lib), *HIST]) == 2
    err = capsys.readouterr().err
    assert "holds a vmm library whose catalog.sqlite is missing" in err
    assert f"put catalog.sqlite back, or delete {', '.join(leftovers)} from {lib} and run again" in err
    assert {p.name: p.read_bytes() for p in lib.iterdir()} == before  # nothing was written
    (lib / "notes.txt").write_text("mine")  # a user's file beside them: not a library folder to touch
    assert main(["index", str(vids), "--library", str(lib), *HIST]) == 2
    assert "is not empty and holds no vmm library" in capsys.readouterr().err
    (lib / "notes.txt").unlink()
    for name in leftovers:  # the fix the message gives
        (lib / name).unlink()
    assert main(["index", str(vids), "--library", str(lib), *HIST]) == 0
    assert indexed_paths(str(lib)) == [str(vids / "red.mp4")]


def _pad_to(path: str, size: int) -> None:
    """Grow an MP4 to ``size`` bytes with a trailing ``free`` box (which players and decoders skip)."""
    extra = size - os.path.getsize(path)
    assert extra == 0 or extra >= 8, extra
    if extra:
        with open(path, "ab") as f:
            f.write(extra.to_bytes(4, "big") + b"free" + b"\0" * (extra - 8))


def test_a_new_file_of_a_vanished_files_size_is_a_move_only_with_its_content(tmp_path):
    """A file gone from disk and a new file of the same size are a move only when their contents agree: another
    video of that size must be embedded, not given the vanished file's vectors."""
    vids, library = tmp_path / "videos", str(tmp_path / "library")
    red, blue = make_videos(vids, ("red", "blue"))
    size = max(os.path.getsize(red), os.path.getsize(blue)) + 64
    _pad_to(red, size)
    _pad_to(blue, size)
    os.rename(blue, tmp_path / "blue-aside.mp4")
    build_library([str(vids)], library, ColorHistogramEncoder(), workers=0, progress=False)
    os.remove(red)
    os.rename(tmp_path / "blue-aside.mp4", blue)  # same size as red.mp4, other content
    summary = build_library([str(vids)], library, ColorHistogramEncoder(), workers=0, progress=False)
    assert (summary.indexed, summary.removed, summary.moved) == (1, 1, 0)
    with VideoLibrary.open(library, model="color-histogram") as lib:
        (hit,) = lib.search(video=blue, k=5)
    assert hit.path == blue and hit.score == pytest.approx(1.0, abs=1e-5)
    # the same content under a new name is a move, and keeps its vectors
    moved = str(vids / "blue-moved.mp4")
    os.rename(blue, moved)
    summary = build_library([str(vids)], library, ColorHistogramEncoder(), workers=0, progress=False)
    assert (summary.indexed, summary.removed, summary.moved) == (0, 0, 1)


def test_a_video_dated_after_2262_is_indexed_and_followed(tmp_path, capsys):
    """An mtime past 2262 (a camera's wrong clock; ext4 keeps it) overflowed SQLite's integers: the run ended with
    a traceback, and every other file of its commit batch was lost, on every run."""
    vids, lib = tmp_path / "videos", str(tmp_path / "lib")
    red, green = make_videos(vids)
    year_2300 = 10_413_792_000 * 10**9
    try:
        os.utime(red, ns=(year_2300, year_2300))
    except (OSError, OverflowError):
        pytest.skip("this file system cannot store a time after 2262")
    assert main(["index", str(vids), "--library", lib, *HIST]) == 0
    assert capsys.readouterr().out.startswith("indexed 2 files (2 clips), 0 unchanged")
    os.utime(red, ns=(year_2300, year_2300 + 1))  # touched: same content
    assert main(["index", str(vids), "--library", lib, *HIST]) == 0
    assert capsys.readouterr().out.startswith("indexed 0 files (0 clips), 2 unchanged")
    videos.write_solid(red, videos.BLUE, seconds=2)
    os.utime(red, ns=(year_2300, year_2300 + 2))
    assert main(["index", str(vids), "--library", lib, *HIST]) == 0
    assert capsys.readouterr().out.startswith("indexed 1 files (1 clips), 1 unchanged")
    with VideoLibrary.open(lib) as library:
        assert [hit.path for hit in library.search(video=red, k=1)] == [red]
    # re-ranking checks the file is the one indexed: the wrapped time is its stored one, not a change
    from types import SimpleNamespace

    from index.discovery import storable_mtime
    from retrieval.library import _check_unchanged
    _check_unchanged(SimpleNamespace(size=os.path.getsize(red), mtime_ns=storable_mtime(year_2300 + 2), fingerprint=""),
                     red)


class _UnnormalisedEncoder(ColorHistogramEncoder):
    """A ClipEncoder whose vectors are not unit length (as a user's own model may return them)."""

    def encode_clips(self, clips):
        return 3.0 * super().encode_clips(clips)


def test_vectors_of_any_length_are_stored_unit_length(tmp_path):
    """Scores are cosines: the library normalises what the encoder returns before storing and indexing it."""
    import numpy as np
    from index.reader import open_library
    vids, library = tmp_path / "videos", str(tmp_path / "library")
    make_videos(vids, ("red", "green"))
    build_library([str(vids)], library, _UnnormalisedEncoder(), workers=0, progress=False)
    with open_library(library) as reader:
        ids = sorted(clip_id for record in reader.files.values() for clip_id, _, _ in reader.clips_of(record.path))
        catalog = Catalog.open(os.path.join(library, "catalog.sqlite"), read_only=True)
        try:
            stored = catalog.vectors_for(np.array(ids))
        finally:
            catalog.close()
        assert len(ids) == 2 and np.linalg.norm(stored, axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)
        (hits,) = reader.search_vectors(stored[:1], k=2)
        assert hits[0].score == pytest.approx(1.0, abs=1e-5) and hits[1].score < 1.0 - 1e-3


def test_a_catalog_renamed_into_place_during_the_folder_check_is_no_foreign_file(tmp_path, monkeypatch):
    """Another rank's rank 0 renames the new catalog into place between the check for it and the listing: the
    listing then holds catalog.sqlite, which read as a user's file ("is not empty and holds no vmm library")."""
    import index.library as library_module
    listed = library_module._foreign_files

    def rank0_finishes_meanwhile(folder):
        (tmp_path / "catalog.sqlite.new").write_bytes(b"")
        os.replace(tmp_path / "catalog.sqlite.new", tmp_path / "catalog.sqlite")
        return listed(folder)
    monkeypatch.setattr(library_module, "_foreign_files", rank0_finishes_meanwhile)
    library_module.refuse_foreign_folder(str(tmp_path))
