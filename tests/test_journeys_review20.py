"""Review 20: sequences of `vmm index` / `vmm search` / VideoLibrary calls a user runs on one library over time."""
import json
import os

from tests import videos
from tests.tiny_model import TINY, save_tiny_model
from vmm.cli import main


def _hub_model(tmp_path, monkeypatch) -> str:
    """A registered model name ("journeys_tiny") whose official weights are a file of the local Hugging Face cache,
    as videomamba_m16_25m's are; returns the file's hub reference."""
    import huggingface_hub.constants as hc

    from vmm.models import registry
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "journeys_tiny.json").write_text(json.dumps({"architecture": "videomamba_m16_mm", "model": TINY,
                                                            "pretrained": {"hf_file": "tiny.safetensors"}}))
    monkeypatch.setattr(registry, "_CONFIG_DIRS", [configs, *registry._CONFIG_DIRS])
    snapshot = tmp_path / "hub" / "models--OpenGVLab--VideoMamba" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc")
    save_tiny_model(tmp_path / "saved")
    os.replace(tmp_path / "saved" / "model.safetensors", snapshot / "tiny.safetensors")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return "hf-hub:OpenGVLab/VideoMamba/tiny.safetensors"


def _library_inputs(tmp_path, monkeypatch) -> tuple:
    """journeys_tiny's weights copied to old.safetensors (the place a library was indexed from), a folder with one
    red video, and the library's path."""
    hub = _hub_model(tmp_path, monkeypatch)
    old = tmp_path / "old.safetensors"
    os.link(tmp_path / "hub" / "models--OpenGVLab--VideoMamba" / "snapshots" / "abc" / hub.rsplit("/", 1)[1], old)
    vids = tmp_path / "videos"
    vids.mkdir()
    videos.write_solid(str(vids / "red.mp4"), videos.RED)
    return old, vids, str(tmp_path / "lib")


def test_a_library_indexed_with_a_hub_checkpoint_is_searched_from_any_folder(tmp_path, monkeypatch, capsys):
    """model.json recorded `--checkpoint hf-hub:OpenGVLab/VideoMamba/x.pth` as the file <working folder>/hf-hub:...,
    which never exists: every later `vmm search LIB` failed with "the model recorded in model.json cannot be
    loaded" (and a quoted "~/x.pth" as <working folder>/~/x.pth)."""
    hub = _hub_model(tmp_path, monkeypatch)
    vids = tmp_path / "videos"
    vids.mkdir()
    videos.write_solid(str(vids / "red.mp4"), videos.RED)
    monkeypatch.chdir(vids)
    assert main(["index", ".", "--library", "../lib", "--model", "journeys_tiny", "--checkpoint", hub, "--quiet",
                 "--workers", "0"]) == 0
    assert json.loads((tmp_path / "lib" / "model.json").read_text())["checkpoint"] == hub
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["search", "lib", "red", "--json"]) == 0
    assert [hit["path"] for hit in json.loads(capsys.readouterr().out)] == [str(vids / "red.mp4")]

    monkeypatch.setenv("HOME", str(tmp_path))
    weights = tmp_path / "tiny.safetensors"
    os.link(tmp_path / "hub" / "models--OpenGVLab--VideoMamba" / "snapshots" / "abc" / "tiny.safetensors", weights)
    assert main(["index", str(vids), "--library", "lib2", "--model", "journeys_tiny", "--checkpoint",
                 "~/tiny.safetensors", "--quiet", "--workers", "0"]) == 0
    assert json.loads((tmp_path / "lib2" / "model.json").read_text())["checkpoint"] == str(weights)


def test_moved_weights_are_given_alone_to_search_and_index(tmp_path, monkeypatch, capsys):
    """A library indexed with --model NAME --checkpoint FILE, the file moved since: `--checkpoint NEW_PLACE` alone
    loaded the file into videomamba_m16_25m (load_encoder's default, not the library's model) and failed with "does
    not fit model videomamba_m16_25m"; it is the library's model now, in vmm search, vmm index and VideoLibrary."""
    from retrieval import VideoLibrary
    old, vids, lib = _library_inputs(tmp_path, monkeypatch)
    assert main(["index", str(vids), "--library", lib, "--model", "journeys_tiny", "--checkpoint", str(old),
                 "--quiet", "--workers", "0"]) == 0
    new = tmp_path / "moved" / "new.safetensors"
    new.parent.mkdir()
    os.replace(old, new)
    capsys.readouterr()
    assert main(["search", lib, "red", "--checkpoint", str(new), "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["path"] == str(vids / "red.mp4")
    with VideoLibrary.open(lib, checkpoint=new) as library:
        assert [hit.path for hit in library.search(text="red")] == [str(vids / "red.mp4")]
    assert main(["index", str(vids), "--library", lib, "--checkpoint", str(new), "--quiet", "--workers", "0"]) == 0
    assert json.loads((tmp_path / "lib" / "model.json").read_text()) == {
        "model": "journeys_tiny", "checkpoint": str(new), "frames": None}
    assert main(["search", lib, "red", "-k", "1"]) == 0  # the new place is recorded


def test_indexing_a_folder_deleted_since_names_its_files_and_the_fix(tmp_path, monkeypatch, capsys):
    """`vmm search` listed a deleted folder's videos as "(file not found; vmm index updates the library)", and
    `vmm index FOLDER` then said only "no such file or folder; check the path"; it names the files the library
    holds there and how to drop them, and a mistyped path that holds nothing keeps the short message."""
    import shutil
    save_tiny_model(tmp_path / "model")
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        videos.write_solid(str(tmp_path / name / "red.mp4"), videos.RED)
    videos.write_solid(str(tmp_path / "b" / "blue.mp4"), videos.BLUE)
    monkeypatch.chdir(tmp_path)
    run = ["--library", "lib", "--quiet", "--workers", "0"]
    assert main(["index", "a", "b", *run, "--model", "model"]) == 0
    shutil.rmtree(tmp_path / "b")
    capsys.readouterr()
    assert main(["index", "a", "b", *run]) == 2
    assert capsys.readouterr().err == (
        "error: b: no such file or folder, and the library holds 2 files indexed under it: if its drive is not "
        "mounted, mount it; if deleted, drop them with vmm index --remove or remove_paths; if moved, index the new "
        "place (the library follows a move)\n")
    assert main(["index", "c", *run]) == 2
    assert capsys.readouterr().err == "error: c: no such file or folder; check the path\n"
    assert main(["index", "b", "--library", "lib", "--remove"]) == 0
    assert main(["index", "a", "b", *run]) == 2
    assert capsys.readouterr().err.endswith("error: b: no such file or folder; check the path\n")


def test_a_folder_named_like_the_model_in_the_working_folder_is_not_the_model(tmp_path, monkeypatch, capsys):
    """`vmm index --model NAME` run where the working folder holds a folder of that name that is no model (an empty
    one made for a run's output) indexed with random weights and recorded the empty folder in model.json, so no
    later search could load the library's model; it is the name's released weights, as vmm.create_model takes it."""
    _hub_model(tmp_path, monkeypatch)
    work = tmp_path / "work"
    (work / "journeys_tiny").mkdir(parents=True)
    videos.write_solid(str(work / "red.mp4"), videos.RED)
    monkeypatch.chdir(work)
    assert main(["index", "red.mp4", "--library", "lib", "--model", "journeys_tiny", "--quiet", "--workers", "0"]) == 0
    assert json.loads((work / "lib" / "model.json").read_text())["model"] == "journeys_tiny"
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["search", "work/lib", "red", "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["path"] == str(work / "red.mp4")


def test_a_model_folder_written_with_a_tilde_is_the_home_folders(tmp_path, monkeypatch, capsys):
    """`--model=~/models/tiny` (a `~` the shell leaves alone after `=`, or quoted) is read by vmm classify, but vmm
    index and vmm search said "model folder ~/models/tiny does not exist", and `--checkpoint=~/models/tiny` loaded
    the folder's weights into videomamba_m16_25m; VideoLibrary.open(model="~/...") failed the same way."""
    from retrieval import VideoLibrary
    save_tiny_model(tmp_path / "models" / "tiny")
    monkeypatch.setenv("HOME", str(tmp_path))
    videos.write_solid(str(tmp_path / "red.mp4"), videos.RED)
    lib = str(tmp_path / "lib")
    assert main(["index", str(tmp_path / "red.mp4"), "--library", lib, "--model=~/models/tiny", "--quiet",
                 "--workers", "0"]) == 0
    assert json.loads((tmp_path / "lib" / "model.json").read_text())["model"] == str(tmp_path / "models" / "tiny")
    capsys.readouterr()
    for option in ("--model=~/models/tiny", "--checkpoint=~/models/tiny"):
        assert main(["search", lib, "red", option, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)[0]["path"] == str(tmp_path / "red.mp4")
    with VideoLibrary.open(lib, model="~/models/tiny") as library:
        assert len(library) == 1


def test_a_damaged_model_json_gives_way_to_the_model_it_asks_for(tmp_path, monkeypatch, capsys):
    """A damaged model.json said "pass --model/--checkpoint explicitly (it is rewritten by vmm index)", and then
    refused vmm search --model, vmm index --model and VideoLibrary.open(model=) with the same words: the only way on
    was to delete the file by hand. Given the model, the file is passed over, and vmm index writes it anew."""
    from retrieval import VideoLibrary
    save_tiny_model(tmp_path / "model")
    videos.write_solid(str(tmp_path / "red.mp4"), videos.RED)
    monkeypatch.chdir(tmp_path)
    assert main(["index", "red.mp4", "--library", "lib", "--model", "model", "--quiet", "--workers", "0"]) == 0
    (tmp_path / "lib" / "model.json").write_text('{"model": ')  # cut short (a full disk, an editor)
    capsys.readouterr()
    assert main(["search", "lib", "red"]) == 2
    assert "model.json is damaged; pass --model/--checkpoint" in capsys.readouterr().err
    assert main(["search", "lib", "red", "--model", "model", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["path"] == str(tmp_path / "red.mp4")
    with VideoLibrary.open("lib", model="model") as library:
        assert len(library) == 1
    assert main(["index", "red.mp4", "--library", "lib", "--model", "model", "--quiet", "--workers", "0"]) == 0
    assert json.loads((tmp_path / "lib" / "model.json").read_text())["model"] == str(tmp_path / "model")
    assert main(["search", "lib", "red"]) == 0


def test_the_python_api_takes_a_tilde_in_the_videos_paths_as_in_the_librarys(tmp_path, monkeypatch):
    """VideoLibrary.open("~/lib") and where=Where(path_glob="~/...") read "~" as the home folder, as `vmm index`
    does its PATHs, but .add("~/videos") was "no such file or folder" and .remove("~/videos") matched nothing."""
    from retrieval import VideoLibrary
    from index import ColorHistogramEncoder, build_library, remove_paths
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "videos").mkdir()
    videos.write_solid(str(tmp_path / "videos" / "red.mp4"), videos.RED)
    save_tiny_model(tmp_path / "model")
    with VideoLibrary.create("~/lib", model=str(tmp_path / "model")) as library:
        assert library.add("~/videos").indexed == 1
        assert library.remove(["~/videos"]) == 1 and len(library) == 0
    hist = ColorHistogramEncoder()
    assert build_library(["~/videos/red.mp4"], "~/lib2", hist, workers=0, progress=False).indexed == 1
    assert remove_paths("~/lib2", ["~/videos/red.mp4"]) == 1


def test_a_weights_file_given_as_the_model_says_so(tmp_path, capsys):
    """`vmm demo --model w.safetensors` (and VideoLibrary.open(..., model=FILE)) looked the file up as a registered
    name: "unknown model" and the list of every name, where create_model says what a weights file needs."""
    from retrieval.library import load_encoder
    from vmm.errors import VmmError
    save_tiny_model(tmp_path / "saved")
    weights = tmp_path / "saved" / "model.safetensors"
    try:
        load_encoder(str(weights), None, "cpu")
    except VmmError as e:
        assert str(e).startswith(f"model {weights} is a weights file, not a model name or folder; pass a registered "
                                 "model name"), e
    else:
        raise AssertionError("a weights file was loaded as a model")
    assert main(["demo", "--out", str(tmp_path / "demo"), "--videos", "2", "--model", str(weights)]) != 0
    # the demo takes no --checkpoint (load_encoder's message offered it): it names the folder to make instead
    assert capsys.readouterr().err.startswith(f"error: --model {weights} (model=) is a weights file, not a model name "
                                              "or folder, and the demo takes no --checkpoint; save it as a model folder "
                                              f"once, vmm.create_model(NAME, pretrained='{weights}').save_pretrained")
    assert not (tmp_path / "demo").exists()


def test_a_video_query_written_with_a_tilde_is_the_home_folders(tmp_path, monkeypatch, capsys):
    """`vmm search LIB --video "~/query.mp4"` (quoted for a space, or --video=~/...) and search(video="~/...") said
    "query video ~/query.mp4 does not exist", where the library's path, --model and --path take "~" as home."""
    from retrieval import VideoLibrary
    monkeypatch.setenv("HOME", str(tmp_path))
    for name, color in (("red", videos.RED), ("blue", videos.BLUE)):
        videos.write_solid(str(tmp_path / f"{name}.mp4"), color)
    videos.write_solid(str(tmp_path / "my query.mp4"), videos.BLUE)
    assert main(["index", str(tmp_path / "red.mp4"), str(tmp_path / "blue.mp4"), "--library", str(tmp_path / "lib"),
                 "--model", "color-histogram", "--quiet", "--workers", "0"]) == 0
    capsys.readouterr()
    assert main(["search", "~/lib", "--video", "~/my query.mp4", "-k", "1", "--json"]) == 0
    assert [hit["path"] for hit in json.loads(capsys.readouterr().out)] == [str(tmp_path / "blue.mp4")]
    with VideoLibrary.open("~/lib") as library:
        assert [hit.path for hit in library.search(video="~/my query.mp4", k=1)] == [str(tmp_path / "blue.mp4")]


def test_moved_weights_given_alone_to_create_add_to_the_librarys_model(tmp_path, monkeypatch):
    """VideoLibrary.create(LIB, checkpoint=NEW_PLACE) on an existing library (what `vmm index --checkpoint NEW_PLACE`
    does) loaded the file into videomamba_m16_25m, load_encoder's default, not the library's recorded model: "does
    not fit model videomamba_m16_25m"."""
    from retrieval import VideoLibrary
    old, vids, lib = _library_inputs(tmp_path, monkeypatch)
    with VideoLibrary.create(lib, model="journeys_tiny", checkpoint=str(old)) as library:
        assert library.add(str(vids), workers=0).indexed == 1
    new = tmp_path / "new.safetensors"
    os.replace(old, new)
    videos.write_solid(str(vids / "blue.mp4"), videos.BLUE)
    with VideoLibrary.create(lib, checkpoint=str(new)) as library:
        assert library.add(str(vids), workers=0).indexed == 1
    assert json.loads((tmp_path / "lib" / "model.json").read_text()) == {
        "model": "journeys_tiny", "checkpoint": str(new), "frames": None}
    with VideoLibrary.open(lib) as library:
        assert len(library) == 2


def test_a_library_indexed_with_checkpoint_default_is_searched_from_any_folder(tmp_path, monkeypatch, capsys):
    """`--checkpoint default` (the model's released file, as create_model(pretrained="default") takes it) was
    recorded in model.json as the file <working folder>/default, as a hub reference was: every later search failed
    with "the model recorded in model.json ... cannot be loaded"."""
    _hub_model(tmp_path, monkeypatch)
    vids = tmp_path / "videos"
    vids.mkdir()
    videos.write_solid(str(vids / "red.mp4"), videos.RED)
    monkeypatch.chdir(vids)
    assert main(["index", ".", "--library", "../lib", "--model", "journeys_tiny", "--checkpoint", "default",
                 "--quiet", "--workers", "0"]) == 0
    assert json.loads((tmp_path / "lib" / "model.json").read_text())["checkpoint"] == "default"
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["search", "lib", "red", "--json"]) == 0
    assert [hit["path"] for hit in json.loads(capsys.readouterr().out)] == [str(vids / "red.mp4")]


def test_an_empty_model_or_checkpoint_is_named(tmp_path, capsys):
    """`--model "$MODEL"` with the variable unset: vmm index and vmm search took an empty --model as none given and
    went for videomamba_m16_25m ("not in the local Hugging Face cache"), and an empty --checkpoint said "pretrained=''
    is empty", an option the commands do not have; VideoLibrary.open(model="") likewise."""
    from retrieval import VideoLibrary
    from vmm.errors import VmmError
    save_tiny_model(tmp_path / "model")
    videos.write_solid(str(tmp_path / "red.mp4"), videos.RED)
    lib = str(tmp_path / "lib")
    run = [str(tmp_path / "red.mp4"), "--library", lib, "--quiet", "--workers", "0"]
    assert main(["index", *run, "--model", str(tmp_path / "model")]) == 0
    capsys.readouterr()
    for command in (["index", *run], ["search", lib, "red"]):
        assert main([*command, "--model", ""]) == 2
        assert capsys.readouterr().err == ("error: --model is empty (model=''); pass a model name such as vmm_nano or "
                                           "a model folder, or leave it out\n")
        assert main([*command, "--checkpoint", " "]) == 2
        assert capsys.readouterr().err == ("error: --checkpoint is empty (checkpoint=' '); pass a weights file, or "
                                           "leave it out\n")
    # the demo ran the shipped model in place of an empty --model
    assert main(["demo", "--out", str(tmp_path / "demo"), "--videos", "2", "--model", ""]) == 2
    assert capsys.readouterr().err == ("error: --model is empty (model=''); pass a model name such as vmm_nano or a "
                                       "model folder, or leave it out\n")
    assert not (tmp_path / "demo").exists()
    try:
        VideoLibrary.open(lib, model="")
    except VmmError as e:
        assert str(e).startswith("--model is empty (model='')"), e
    else:
        raise AssertionError("an empty model was taken as none")
