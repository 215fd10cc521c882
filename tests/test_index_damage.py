"""Out-of-range index factories, libraries that stored one, damaged catalog rows and stale FAISS files.

Each case is what a user can reach with the CLI, an older version or a restored backup; each must end in one
line (or in correct results), never a native crash, a traceback or silently missing clips.
"""
import glob
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from index.catalog import Catalog
from index.encoder import ColorHistogramEncoder
from index.ingest import build_library
from index.library import STATE_FILE, read_state, remove_paths, sync_index
from index.reader import open_library
from tests import videos
from vmm.cli import main

REPO = Path(__file__).resolve().parents[1]
HIST = ["--model", "color-histogram", "--quiet", "--workers", "0"]
ENCODER = ColorHistogramEncoder()

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def make_videos(folder, names=("red", "green", "blue")) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    colours = {"red": videos.RED, "green": videos.GREEN, "blue": videos.BLUE}
    return {name: videos.write_solid(str(folder / f"{name}.mp4"), colours[name], seconds=1) for name in names}


def vmm(*args) -> subprocess.CompletedProcess:
    # A subprocess: the old code died inside FAISS (SIGSEGV, SIGABRT), which would take pytest down with it.
    return subprocess.run([sys.executable, "-m", "vmm.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)


def red_query() -> np.ndarray:
    return ENCODER.encode_clips([videos.solid_frames(videos.RED, ENCODER.num_frames)])


def search_paths(library) -> list[str]:
    with open_library(str(library), model=ENCODER) as reader:
        (hits,) = reader.search_vectors(red_query(), k=10)
    return [os.path.basename(hit.path) for hit in hits]


def one_error_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in text, text
    return lines[0]


def set_in_catalog(library, sql: str) -> None:
    conn = sqlite3.connect(os.path.join(library, "catalog.sqlite"))
    with conn:
        conn.execute(sql)
    conn.close()


# -- 1, 2: factory parameters FAISS does not check ------------------------------------------------------
@pytest.mark.parametrize("factory, problem", [
    ("HNSW1,Flat", "has HNSW M=1"),  # segfaulted while adding vectors
    ("HNSW0,Flat", "has HNSW M=0"),  # aborted: Faiss assertion 'i < end'
    ("HNSW100000,Flat", "has HNSW M=100000"),
    ("IVF8_HNSW1,Flat", "has HNSW M=1"),  # the same crash in an IVF's coarse quantizer
    ("IVF0,Flat", "has nlist=0"),  # accepted, then every search failed ('cur_nprobe > 0')
    ("IVF4000000000,Flat", "has nlist=4000000000"),  # std::bad_alloc before anything else
    ("NSG32,Flat", "is not an index type a vmm library keeps"),  # NSG cannot be built below 100 vectors
])
def test_out_of_range_factory_is_refused_before_anything_is_written(tmp_path, factory, problem):
    make_videos(tmp_path / "vids", ("red",))
    lib = tmp_path / "lib"
    r = vmm("index", tmp_path / "vids", "--library", lib, "--factory", factory, *HIST)
    assert r.returncode == 2, (r.returncode, r.stderr[-500:])
    line = one_error_line(r.stderr)
    assert f"index factory {factory!r} {problem}" in line and "'HNSW<M>,Flat'" in line
    assert not lib.exists()


def test_a_library_that_recorded_a_crashing_factory_says_how_to_recover(tmp_path):
    make_videos(tmp_path / "vids")
    lib = str(tmp_path / "lib")
    assert vmm("index", tmp_path / "vids", "--library", lib, *HIST).returncode == 0
    catalog = Catalog.open(os.path.join(lib, "catalog.sqlite"))
    catalog.set_setting("index_factory", "HNSW1,Flat")  # what `--factory HNSW1,Flat` stored before it crashed
    catalog.close()
    r = vmm("index", tmp_path / "vids", "--library", lib, *HIST)  # segfaulted on every later run
    assert r.returncode == 2, (r.returncode, r.stderr[-500:])
    line = one_error_line(r.stderr)
    assert "is set to an index type it cannot build" in line and "HNSW M=1" in line and "--factory auto" in line
    assert search_paths(lib)[0] == "red.mp4"  # its clips are all there meanwhile
    r = vmm("index", tmp_path / "vids", "--library", lib, "--factory", "auto", *HIST)
    assert r.returncode == 0 and "3 unchanged" in r.stdout, r.stderr
    assert vmm("index", tmp_path / "vids", "--library", lib, *HIST).returncode == 0


def test_a_library_with_a_saved_ivf0_index_searches_and_recovers(tmp_path, capsys):
    vids = tmp_path / "vids"
    make_videos(vids)
    lib = str(tmp_path / "lib")
    assert main(["index", str(vids), "--library", lib, *HIST]) == 0
    # What `--factory IVF0,Flat` left behind: the setting, and a FAISS file of that type named by the state.
    catalog = Catalog.open(os.path.join(lib, "catalog.sqlite"))
    catalog.set_setting("index_factory", "IVF0,Flat")
    ids, vectors = next(catalog.iter_vectors())
    generation = catalog.generation()
    catalog.close()
    index = faiss.index_factory(vectors.shape[1], "IVF0,Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add_with_ids(vectors, ids)
    name = f"vectors.g{generation:012d}.0000beef.faiss"
    faiss.write_index(index, os.path.join(lib, name))
    for old in glob.glob(os.path.join(lib, "vectors.g*.faiss")):
        if not old.endswith(name):
            os.remove(old)
    state = {"generation": generation, "file": name, "factory": "IVF0,Flat", "factory_setting": "IVF0,Flat",
             "count": len(ids), "dim": int(vectors.shape[1])}
    Path(lib, "index-state.json").write_text(json.dumps(state))
    capsys.readouterr()

    assert main(["search", lib, "--video", str(vids / "red.mp4"), "-k", "3"]) == 0  # was a RuntimeError traceback
    out = capsys.readouterr().out
    assert "red.mp4" in out.splitlines()[1] and "green.mp4" in out and "blue.mp4" in out
    assert main(["index", str(vids), "--library", lib, *HIST]) == 2
    assert "nlist=0" in one_error_line(capsys.readouterr().err)
    assert main(["index", str(vids), "--library", lib, "--factory", "auto", *HIST]) == 0
    assert read_state(lib).factory == "IDMap2,Flat" and search_paths(lib)[0] == "red.mp4"


# -- 3: rows a vmm library never writes, inside a catalog SQLite opens fine --------------------------------
@pytest.mark.parametrize("sql, detail, commands", [
    ("UPDATE meta SET value = '{not json' WHERE key = 'manifest'", "meta.manifest is not a library manifest",
     ("search", "index")),
    ("UPDATE meta SET value = '[1, 2]' WHERE key = 'manifest'", "meta.manifest is not a library manifest",
     ("search", "index")),
    ("UPDATE clips SET vector = x'0011'", "vector is 2 bytes, not 344", ("search", "index")),
    ("UPDATE meta SET value = 'x' WHERE key = 'generation'", "meta.generation is 'x'", ("search", "index")),
    ("UPDATE clips SET start_sec = 'abc'", "not a number", ("search",)),  # only searches read clip times
])
def test_inconsistent_catalog_rows_give_the_damaged_catalog_line(tmp_path, capsys, sql, detail, commands):
    vids = tmp_path / "vids"
    media = make_videos(vids)
    lib = str(tmp_path / "lib")
    assert main(["index", str(vids), "--library", lib, *HIST]) == 0
    set_in_catalog(lib, sql)
    for faiss_file in glob.glob(os.path.join(lib, "vectors.g*.faiss")):
        os.remove(faiss_file)  # so that the vectors are read from the catalog
    capsys.readouterr()
    argvs = {"search": ["search", lib, "--video", media["red"]], "index": ["index", str(vids), "--library", lib, *HIST]}
    for argv in (argvs[command] for command in commands):
        assert main(argv) == 2, argv
        line = one_error_line(capsys.readouterr().err)
        assert f"{lib}/catalog.sqlite is damaged or not a vmm catalog" in line and detail in line
        assert line.endswith("rebuild the library into a new folder")


# -- 4: a valid FAISS file that is not the library's --------------------------------------------------------
@pytest.mark.parametrize("other", ["empty library", "other model"])
def test_a_stale_faiss_file_is_not_trusted_and_a_rerun_repairs_it(tmp_path, other):
    vids = tmp_path / "vids"
    make_videos(vids)
    lib, spare = str(tmp_path / "lib"), str(tmp_path / "spare")
    build_library([str(vids)], lib, ENCODER, workers=0, progress=False)
    if other == "empty library":
        (tmp_path / "none").mkdir()
        build_library([str(tmp_path / "none")], spare, ENCODER, workers=0, progress=False)
    else:  # a library of the same clips at another dimension
        build_library([str(vids)], spare, ColorHistogramEncoder(bins=5), workers=0, progress=False)
    state = read_state(lib)
    shutil.copyfile(os.path.join(spare, read_state(spare).file), os.path.join(lib, state.file))

    assert search_paths(lib) == ["red.mp4", "blue.mp4", "green.mp4"]  # was no results (or a ValueError)
    assert build_library([str(vids)], lib, ENCODER, workers=0, progress=False).unchanged == 3
    repaired = read_state(lib)
    assert faiss.read_index(os.path.join(lib, repaired.file)).ntotal == 3 == repaired.count
    assert search_paths(lib) == ["red.mp4", "blue.mp4", "green.mp4"]


@pytest.mark.parametrize("where, expected", [(None, ["red.mp4", "blue.mp4", "green.mp4"]),
                                             ({"path_glob": "*/red.mp4"}, ["red.mp4"])])
def test_a_backup_faiss_file_with_old_clip_ids_is_searched_exactly_and_rebuilt(tmp_path, where, expected):
    """An older index of the same library (same count and dimension, other clip ids) copied over the current
    one passed every cheap check: the first hit with an old id raised "(this is a bug)", a filter on the clips
    it lacks found nothing, and re-runs kept the file. Readers fall back to the catalog and write nothing; the
    next run finds the file's ids are not the catalog's and rebuilds it."""
    vids = tmp_path / "vids"
    make_videos(vids)
    lib = str(tmp_path / "lib")
    build_library([str(vids)], lib, ENCODER, workers=0, progress=False)
    backup = tmp_path / "backup.faiss"
    shutil.copyfile(os.path.join(lib, read_state(lib).file), backup)
    remove_paths(lib, [str(vids / "red.mp4")])  # indexed again, red gets new clip ids
    assert build_library([str(vids)], lib, ENCODER, workers=0, progress=False).indexed == 1
    shutil.copyfile(backup, os.path.join(lib, read_state(lib).file))
    before = {name: Path(lib, name).read_bytes() for name in os.listdir(lib) if "catalog" not in name}

    with open_library(lib, model=ENCODER) as reader:
        assert reader._base is not None  # the cheap checks pass: the file is only found out by a search
        for _ in range(2):
            (hits,) = reader.search_vectors(red_query(), k=10, where=where)
            assert [os.path.basename(h.path) for h in hits] == expected  # filtered: was no hits
            assert {h.clip_id for h in hits} <= set(reader._clip_ids.tolist())
    after = {name: Path(lib, name).read_bytes() for name in os.listdir(lib) if "catalog" not in name}
    assert after == before and STATE_FILE in after  # readers write nothing, not even a stale file's state
    assert build_library([str(vids)], lib, ENCODER, workers=0, progress=False).unchanged == 3
    with open_library(lib, model=ENCODER) as reader:
        ids = faiss.vector_to_array(faiss.downcast_index(reader._base.index).id_map)
        assert sorted(ids.tolist()) == sorted(reader._clip_ids.tolist())  # the rebuilt file, not the backup
    assert search_paths(lib) == ["red.mp4", "blue.mp4", "green.mp4"]


@pytest.mark.parametrize("factory", ["auto", "IDMap,Flat", "HNSW8,Flat", "IVF2,Flat"])
@pytest.mark.parametrize("run", ["build_library", "remove_paths", "sync_index"])
def test_every_writer_rebuilds_a_backup_faiss_file_whose_clip_ids_are_not_the_catalogs(tmp_path, factory, run):
    """Without a search in between (it was the reader that made the next run rebuild the file), each writer
    compares the saved file's ids with the catalog's: IDMap's id map, an IVF's lists."""
    vids = tmp_path / "vids"
    make_videos(vids)
    lib = str(tmp_path / "lib")
    build_library([str(vids)], lib, ENCODER, workers=0, progress=False, factory=factory)
    backup = tmp_path / "backup.faiss"
    shutil.copyfile(os.path.join(lib, read_state(lib).file), backup)
    remove_paths(lib, [str(vids / "red.mp4")])
    assert build_library([str(vids)], lib, ENCODER, workers=0, progress=False).indexed == 1
    stale = read_state(lib)
    shutil.copyfile(backup, os.path.join(lib, stale.file))
    if run == "build_library":
        assert build_library([str(vids)], lib, ENCODER, workers=0, progress=False).unchanged == 3
    elif run == "remove_paths":
        assert remove_paths(lib, [str(tmp_path / "elsewhere")]) == 0
    else:
        sync_index(lib)
    state = read_state(lib)
    assert state.file != stale.file and state.count == 3
    with open_library(lib, model=ENCODER) as reader:
        assert reader._base is not None
        expected = reader._clip_ids.tolist()
        (hits,) = reader.search_vectors(red_query(), k=10)
    assert sorted(h.clip_id for h in hits) == sorted(expected)
    assert os.path.basename(hits[0].path) == "red.mp4" and hits[0].score > 0.99


# -- 5: what a run prints ---------------------------------------------------------------------------------
def test_small_in_range_indexes_build_and_search_without_faiss_warnings(tmp_path, capfd):
    make_videos(tmp_path / "vids")
    for factory in ("IVF2,Flat", "IVF2_HNSW4,Flat", "IVF1,Flat", "HNSW2,Flat"):  # the smallest accepted values
        lib = str(tmp_path / factory)
        assert main(["index", str(tmp_path / "vids"), "--library", lib, "--factory", factory, *HIST]) == 0
        out, err = capfd.readouterr()
        assert err == "", (factory, err)  # was FAISS's raw "WARNING clustering 3 points to 2 centroids: ..."
        assert read_state(lib).factory.endswith(factory)
        assert search_paths(lib) == ["red.mp4", "blue.mp4", "green.mp4"], factory


def test_a_folder_without_videos_is_named_in_the_summary(tmp_path, capsys):
    vids, empty = tmp_path / "vids", tmp_path / "empty"
    make_videos(vids, ("red",))
    empty.mkdir()
    (empty / "notes.txt").write_text("not a video")
    lib = str(tmp_path / "lib")
    assert main(["index", str(empty), "--library", lib, *HIST]) == 0
    assert f"0 removed, no videos found under {empty} in " in capsys.readouterr().out
    assert main(["index", str(empty), str(vids), "--library", lib, *HIST]) == 0
    out = capsys.readouterr().out
    assert out.startswith("indexed 1 files") and f"no videos found under {empty} in " in out
    assert main(["index", str(vids), "--library", lib, *HIST]) == 0  # nothing new is not "no videos"
    assert "no videos found" not in capsys.readouterr().out
