"""The search API on real colour-histogram libraries: results that do not depend on k, snapshots that hold while
another thread refreshes, and one-line errors for wrong arguments."""
import os
import re
import threading

import numpy as np
import pytest
import torch

from index.reader import ClipFilter, open_library
from retrieval.library import VideoLibrary, Where
from tests import videos
from vmm.errors import VmmError

SHORT = {"green": videos.GREEN, "blue": videos.BLUE, "yellow": videos.YELLOW, "white": videos.WHITE}


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """A 130 s red video (25 windows), a 60 s red-blue-red one (11 windows) and four short solid videos."""
    root = tmp_path_factory.mktemp("search-api")
    vids = root / "videos"
    vids.mkdir()
    videos.write_solid(str(vids / "long.mp4"), videos.RED, seconds=130, fps=2)
    stripes = videos.solid_frames(videos.RED, 40) + videos.solid_frames(videos.BLUE, 40) + \
        videos.solid_frames(videos.RED, 40)
    videos.write_frames(str(vids / "stripes.mp4"), stripes, fps=2)
    for name, colour in SHORT.items():
        videos.write_solid(str(vids / f"{name}.mp4"), colour, seconds=2)
    lib = VideoLibrary.create(root / "lib", model="color-histogram")
    assert lib.add(vids, workers=0).clips == 25 + 11 + 4
    yield lib, vids
    lib.close()


def moments(hits):
    return [(h.path.rsplit("/", 1)[-1], h.start, h.end, h.score, h.clip_ids) for h in hits]


def test_a_long_video_does_not_crowd_out_other_results(library):
    """Fetching a fixed 4*k windows let the long video's windows fill them all: k=3 gave one moment."""
    lib, vids = library
    long = str(vids / "long.mp4")
    for k in (1, 3, 5, 10):
        hits = lib.search(video=vids / "long.mp4", k=k)
        assert len(hits) == k
        assert (hits[0].path, hits[0].start, hits[0].end) == (long, 0.0, 20.0)
    per_video = lib.search(video=vids / "long.mp4", k=6, per_video=True)
    assert sorted(h.path for h in per_video) == sorted(str(p) for p in vids.iterdir())
    assert (per_video[0].start, per_video[0].end) == (0.0, 20.0)


def test_one_video_gives_k_moments_not_one_as_long_as_itself(library):
    """Moments that chained every overlapping window of a video until another video's window came turned a
    library of one video (or a filter to one) into a single moment spanning it, read to the last clip."""
    lib, vids = library
    hits = lib.search(video=vids / "long.mp4", k=5, where={"path_glob": "*long.mp4"})
    assert [(h.start, h.end) for h in hits] == [(0.0, 20.0), (25.0, 45.0), (50.0, 70.0), (75.0, 95.0), (100.0, 120.0)]
    assert all(len(h.clip_ids) == 3 for h in hits)  # windows tie, so by clip id: the seed and the two after it


@pytest.mark.parametrize("merge, per_video", [(True, False), (True, True), (False, False), (False, True)])
def test_the_top_k_are_the_first_k_of_a_longer_list(library, merge, per_video):
    """Asking for more results appends to the list: no moment grows, shrinks or moves when k changes."""
    lib, vids = library
    full = moments(lib.search(video=vids / "stripes.mp4", k=100, merge=merge, per_video=per_video))
    assert len(full) == {(True, False): 11, (True, True): 6, (False, False): 40, (False, True): 6}[merge, per_video]
    for k in range(1, len(full) + 2):
        assert moments(lib.search(video=vids / "stripes.mp4", k=k, merge=merge, per_video=per_video)) == full[:k]
    if merge:  # moments of one video never overlap: overlapping windows are merged or dropped
        spans = sorted((path, start, end) for path, start, end, *_ in full)
        assert all(a[0] != b[0] or a[2] < b[1] for a, b in zip(spans, spans[1:]))


def test_where_path_glob_reads_paths_as_vmm_search_path_does(library, monkeypatch):
    """The library stores absolute paths: a relative glob, a folder or a file name with glob characters in it
    matched nothing through the API, silently, while `vmm search --path` found them."""
    lib, vids = library
    names = lambda where: sorted({h.path.rsplit("/", 1)[-1] for h in lib.search(video=vids / "green.mp4", k=100,
                                                                                    where=where)})  # noqa: E731
    monkeypatch.chdir(vids.parent)
    every = sorted(p.name for p in vids.iterdir())
    for where in (Where(path_glob="videos/*"), Where(path_glob="./videos"), Where(path_glob=str(vids)),
                  {"path_glob": vids}, Where(path_glob=["videos/*"])):
        assert names(where) == every, where
    assert names(Where(path_glob="videos/[gb]*.mp4")) == ["blue.mp4", "green.mp4"]  # still a glob
    assert names(Where(path_glob="*/long.mp4")) == ["long.mp4"]
    link = vids / "[intro] red.mp4"  # exists: taken as written, not as a character class
    link.symlink_to(vids / "long.mp4")
    try:
        assert names(Where(path_glob=str(link))) == ["long.mp4"]  # the link's target, where the library holds it
    finally:
        link.unlink()  # the fixture's folder is shared with the other tests
    with pytest.raises(VmmError, match=r"^path_glob is an empty string \(''\); pass a glob or a folder"):
        lib.search(video=vids / "green.mp4", where=Where(path_glob=""))


def test_retrieval_library_docstring_examples():
    import doctest
    import retrieval.library
    result = doctest.testmod(retrieval.library)
    assert result.attempted > 0 and result.failed == 0


def test_a_search_keeps_its_snapshot_while_another_thread_changes_the_library(library, tmp_path):
    lib, vids = library
    with VideoLibrary.create(tmp_path / "lib", model="color-histogram") as mine:
        mine.add(vids, workers=0)
        # With a filter, as below: filtered clips are scored exactly, which rounds unlike FAISS in the last bit.
        expected = moments(mine.search(video=vids / "long.mp4", k=8, where=lambda record: True))
        entered, release = threading.Event(), threading.Event()

        def slow_filter(record):
            entered.set()
            release.wait(30)
            return True

        found = []
        search = threading.Thread(target=lambda: found.append(mine.search(video=vids / "long.mp4", k=8,
                                                                          where=slow_filter)))
        search.start()
        assert entered.wait(30)
        mine.refresh()  # closed the reader the search was reading: it came back empty
        assert mine.remove(vids / "yellow.mp4") == 1
        release.set()
        search.join(30)
        assert [moments(hits) for hits in found] == [expected]  # the snapshot the search began with
        assert "yellow.mp4" not in {m[0] for m in moments(mine.search(video=vids / "long.mp4", k=8))}


def test_a_closed_reader_refuses_to_search(library):
    lib, vids = library
    reader = open_library(lib.path)
    query = np.ones(reader.manifest.dim, np.float32)
    assert len(reader.search_vectors(query, k=3)[0]) == 3
    reader.close()
    with pytest.raises(VmmError, match="reader of library .* is closed"):
        reader.search_vectors(query, k=3)  # returned [[]], as if nothing matched


def test_a_huge_k_is_capped_at_the_library_size(library):
    lib, vids = library
    with open_library(lib.path) as reader:
        query = np.ones(reader.manifest.dim, np.float32)
        assert len(reader.search_vectors(query, k=10**15)[0]) == len(reader) == 40
    assert len(lib.search(video=vids / "long.mp4", k=10**15, merge=False)) == 40


def test_search_vectors_takes_what_videolibrary_search_takes(library):
    lib, vids = library
    with open_library(lib.path) as reader:
        q = np.linspace(0.1, 1, reader.manifest.dim, dtype=np.float32)
        q /= np.linalg.norm(q)
        best = reader.search_vectors(q, k=4)[0]
        assert reader.search_vectors(torch.tensor(q, requires_grad=True), k=4)[0] == best
        assert reader.search_vectors(q, k=np.int64(4))[0] == best
        long_only = reader.search_vectors(q, k=40, where={"min_duration": 100})[0]
        assert long_only == reader.search_vectors(q, k=40, where=ClipFilter(min_duration=100))[0]
        assert {h.path for h in long_only} == {str(vids / "long.mp4")} and len(long_only) == 25


@pytest.mark.parametrize("kwargs, message", [
    (dict(k="2"), "k must be a whole number >= 1, got '2'"),
    (dict(k=None), "k must be a whole number >= 1, got None"),
    (dict(k=2.0), "k must be a whole number >= 1, got 2.0"),
    (dict(k=0), "k must be a whole number >= 1, got 0"),
    (dict(nprobe=0), r"nprobe must be a whole number >= 1 \(or None for the default\), got 0"),
    (dict(nprobe=2.5), "nprobe must be a whole number >= 1 .*got 2.5"),
    (dict(ef_search=-1), "ef_search must be a whole number >= 1 .*got -1"),
    (dict(ef_search="64"), "ef_search must be a whole number >= 1 .*got '64'"),
    (dict(where={"min_durations": 3}), r"where has unknown keys \['min_durations'\]"),
    (dict(where="*.mp4"), "where must be a Where .*got str"),
    (dict(queries="red"), "queries must be float vectors, got str; embed the queries with model color-histogram"),
    (dict(queries=np.full(86, np.nan, np.float32)), "query vectors hold NaN"),
])
def test_search_vectors_refuses_bad_arguments_in_one_line(library, kwargs, message):
    lib, vids = library
    with open_library(lib.path) as reader:
        kwargs = {"queries": np.ones(reader.manifest.dim, np.float32), **kwargs}
        with pytest.raises(VmmError, match=message) as error:
            reader.search_vectors(**kwargs)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("factory", ["IVF2,Flat", "HNSW4,Flat"])
def test_search_options_reach_approximate_indexes_checked(library, tmp_path, factory):
    """FAISS casts nprobe and ef_search to size_t or int: -1 raised OverflowError, 2**31 too (HNSW)."""
    from index.ingest import build_library
    lib, vids = library
    build_library([str(vids)], str(tmp_path / "lib"), lib.encoder, workers=0, progress=False, factory=factory)
    with open_library(str(tmp_path / "lib")) as reader:
        assert reader._base is not None and factory in reader._base.factory
        query = np.ones(reader.manifest.dim, np.float32)
        exact = reader.search_vectors(query, k=5, nprobe=2, ef_search=40)[0]
        assert reader.search_vectors(query, k=5, nprobe=np.int64(10**12), ef_search=2**31)[0] == exact
        for bad in (dict(nprobe=-1), dict(ef_search=-1), dict(ef_search=0)):
            with pytest.raises(VmmError, match=f"^{next(iter(bad))} must be a whole number >= 1"):
                reader.search_vectors(query, k=5, **bad)


@pytest.mark.parametrize("make, message", [
    (lambda: ClipFilter(path_glob=3), "where path_glob must be a glob string or a list of them, got 3"),
    (lambda: ClipFilter(min_duration="3"), "where min_duration must be a number of seconds >= 0, got '3'"),
    (lambda: ClipFilter(max_duration=float("nan")), "where max_duration must be a number of seconds >= 0"),
    (lambda: open_library(None), "library_dir must be the library folder as a str or pathlib.Path, got NoneType"),
    (lambda: open_library(b"lib"), "got bytes; decode it with os.fsdecode"),
    (lambda: VideoLibrary.open(None), "path must be the library folder as a str or pathlib.Path, got NoneType"),
    (lambda: VideoLibrary.create("lib", model=3), "model must be a model name or folder, .* got int"),
    (lambda: VideoLibrary.create("lib", model="color-histogram", frames="8"), "frames must be a whole number"),
])
def test_wrong_argument_types_are_named(make, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(VmmError, match=message):
        make()


@pytest.mark.parametrize("given, message", [
    (dict(model="folder"), r"^model .*folder is a folder but not a vmm model folder \(no config.json \+ "
                           r"model.safetensors\); pass model= \(--model\) a model name such as 'vmm_nano', or a "
                           r"folder written by save_pretrained$"),
    (dict(checkpoint="folder"), r"^checkpoint .*folder is a folder but not a vmm model folder .*; pass checkpoint= "
                                r"\(--checkpoint\) a .pth or .safetensors file, or a folder written by save_pretrained$"),
])
def test_a_folder_that_is_no_model_is_named_as_such(library, tmp_path, given, message):
    """It was "unknown model '/path/folder'; available: ..." and fifteen registered names."""
    lib, vids = library
    (tmp_path / "folder").mkdir()
    given = {key: str(tmp_path / value) for key, value in given.items()}
    for opening in (lambda: VideoLibrary.open(lib.path, **given), lambda: VideoLibrary.create(tmp_path / "new", **given)):
        with pytest.raises(VmmError, match=message):
            opening()


def test_python_callers_are_told_the_argument_not_only_the_flag(library, tmp_path):
    lib, vids = library
    from retrieval.library import load_encoder
    for call, message in [
        (lambda: lib.search(text="a red screen"), r"has no text tower; search it with video= \(--video\) QUERY.mp4$"),
        (lambda: load_encoder(None), r"^no model given; pass model= \(--model\) a name such as vmm_nano, or "
                                     r"checkpoint= \(--checkpoint\) a weights file$"),
        (lambda: VideoLibrary.create(tmp_path / "new", model="vmm_nano", frames=0),
         r"^--frames 0 \(frames=0\): a clip needs at least 1 frame; pass e.g. --frames 8 \(frames=8\), or leave"),
    ]:
        with pytest.raises(VmmError, match=message):  # each named only the --flag
            call()


def test_opening_names_the_real_problem(library):
    lib, vids = library
    with pytest.raises(VmmError, match="model must be the encoder that library .* was built with"):
        open_library(lib.path, model=object())
    for opening in (lambda: VideoLibrary.open(vids / "long.mp4"), lambda: open_library(str(vids / "long.mp4"))):
        with pytest.raises(VmmError, match="long.mp4 is a file, not a library folder"):
            opening()
    with pytest.raises(VmmError, match="^device tpu is not a device; pass cpu or cuda") as error:
        VideoLibrary.open(lib.path, device="tpu")  # was accepted, or blamed the recorded model and named --model
    assert "--model" not in str(error.value)


def test_a_checkpoint_file_sets_the_frames_per_clip(tmp_path, monkeypatch):
    """A 6-frame fine-tune given as --checkpoint FILE is built for 6 frames (it ran at the config's count through
    an interpolated temporal table); --frames still wins."""
    import torch

    import vmm
    from retrieval.library import load_encoder
    shapes = {"cls_token": (1, 1, 8), "pos_embed": (1, 5, 8), "temporal_pos_embedding": (1, 6, 8),
              "patch_embed.proj.weight": (8, 3, 1, 16, 16), "layers.0.mixer.A_log": (16, 16),
              "layers.0.mixer.in_proj.weight": (32, 8), "layers.0.mixer.conv1d.weight": (16, 1, 4),
              "layers.0.mixer.dt_proj.weight": (16, 1)}
    torch.save({f"vision_encoder.{k}": torch.zeros(v) for k, v in shapes.items()}, tmp_path / "f6.pth")
    built = []

    def record(name, pretrained=None, **overrides):
        built.append(overrides)
        raise KeyboardInterrupt  # stop before building: only the requested size matters here

    monkeypatch.setattr(vmm, "create_model_and_transforms", record)
    for frames in (None, 8):
        with pytest.raises(KeyboardInterrupt):
            load_encoder("vmm_nano", str(tmp_path / "f6.pth"), "cpu", frames)
    assert built == [{"vision": {"num_frames": 6}}, {"vision": {"num_frames": 8}}]


def test_a_library_of_a_checkpoint_file_reopens_at_its_own_frames(tmp_path):
    """A library indexed with --checkpoint FILE and no --frames before load_encoder took the file's own frame count
    recorded frames: null and holds vectors of the model config's count: vmm search, vmm index into it again and
    VideoLibrary.create on it refused it as built with another model (the file's count gave other weights)."""
    import json

    import vmm
    from vmm.cli import main
    vids = tmp_path / "videos"
    vids.mkdir()
    videos.write_solid(str(vids / "red.mp4"), videos.RED, seconds=2)
    ckpt = tmp_path / "f4.pth"
    torch.save(vmm.create_model("vmm_nano", vision={"num_frames": 4}).state_dict(), ckpt)
    lib_dir = tmp_path / "lib"
    lib = VideoLibrary.create(lib_dir, model="vmm_nano", checkpoint=str(ckpt), device="cpu", frames=8)
    assert lib.add(vids, workers=0).clips == 1
    recorded = json.loads((lib_dir / "model.json").read_text())
    (lib_dir / "model.json").write_text(json.dumps({**recorded, "frames": None}))  # as it was written then
    for opened in (VideoLibrary.open(lib_dir, device="cpu"),
                   VideoLibrary.open(lib_dir, model="vmm_nano", checkpoint=str(ckpt), device="cpu")):
        assert opened.encoder.num_frames == 8 and len(opened.search("red", k=1)) == 1
    videos.write_solid(str(vids / "blue.mp4"), videos.BLUE, seconds=2)
    for model in ([], ["--model", "vmm_nano", "--checkpoint", str(ckpt)]):
        assert main(["index", str(vids), "--library", str(lib_dir), "--workers", "0", "--device", "cpu", "--quiet",
                     *model]) == 0
    again = VideoLibrary.create(lib_dir, model="vmm_nano", checkpoint=str(ckpt), device="cpu")
    assert again.encoder.num_frames == 8
    assert len(VideoLibrary.open(lib_dir, device="cpu")) == 2


def test_an_ivf_whose_probed_lists_hold_few_clips_still_gives_k_results(tmp_path):
    """IVF256 visits 16 lists by default, here about 30 of 400 clips: k=50 gave those 30, as if the library ended."""
    rng = np.random.default_rng(0)
    for i in range(2):
        colours = [np.full((24, 32, 3), rng.integers(0, 255, 3), np.uint8) for _ in range(100)]
        videos.write_frames(str(tmp_path / f"v{i}.mp4"), [c for c in colours for _ in range(2)], fps=2)
    lib = VideoLibrary.create(tmp_path / "lib", model="color-histogram")
    lib.add(tmp_path, workers=0, factory="IVF256,Flat", window=2, stride=0.5)
    assert "IVF256" in lib._reader._base.factory
    unfiltered = lib.search(video=tmp_path / "v0.mp4", k=50, merge=False)
    filtered = lib.search(video=tmp_path / "v0.mp4", k=50, merge=False, where={"path_glob": "*"})
    assert len(unfiltered) == 50 and [h.clip_ids for h in unfiltered] == [h.clip_ids for h in filtered]
    assert len(lib.search(video=tmp_path / "v0.mp4", k=10**6, merge=False)) == len(lib)


def test_a_created_library_is_empty_until_the_first_add(library, tmp_path):
    """Searching a library made by create() before anything was added raised "no vmm library at ... check the
    --library path", while len() said 0 clips; an empty library has no results."""
    lib, vids = library
    new = VideoLibrary.create(tmp_path / "new", model="color-histogram")
    assert len(new) == 0 and new.search(video=vids / "green.mp4") == []
    with pytest.raises(VmmError, match="query video .*missing.mp4 does not exist"):
        new.search(video=tmp_path / "missing.mp4")  # the query's own mistakes are still named
    new.add(vids / "green.mp4", workers=0)
    assert [h.path for h in new.search(video=vids / "green.mp4")] == [str(vids / "green.mp4")]


def test_the_model_file_is_rewritten_only_when_it_changes(tmp_path):
    """model.json was rewritten on every vmm index run, so on a full disk it was the first write to fail, for no
    change; a failed write left its hidden temporary file in the library folder."""
    from retrieval.library import MODEL_FILE, _read_model_file, _write_model_file
    from tests.conftest import file_size_limit
    _write_model_file(str(tmp_path), "vmm_nano", None, 8)
    first = os.stat(tmp_path / MODEL_FILE).st_ino
    with file_size_limit(0):  # no write can succeed: the same record needs none
        _write_model_file(str(tmp_path), "vmm_nano", None, 8)
    assert os.stat(tmp_path / MODEL_FILE).st_ino == first
    tmp_re = re.escape(str(tmp_path))
    with file_size_limit(0), pytest.raises(VmmError, match=rf"^cannot write {tmp_re}/{MODEL_FILE} \(File too large\)"):
        _write_model_file(str(tmp_path), "vmm_nano", None, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == [MODEL_FILE]
    assert _read_model_file(str(tmp_path))["frames"] == 8
    _write_model_file(str(tmp_path), "vmm_nano", None, 4)
    assert _read_model_file(str(tmp_path))["frames"] == 4
