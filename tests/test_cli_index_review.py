"""`vmm index` and `vmm encode` as a user types them: `~` the shell left alone, --json summaries, refused
option values and the help texts."""
import json
import os

import pytest

from tests import videos
from vmm.cli import build_parser, main

HIST = ["--model", "color-histogram", "--quiet", "--workers", "0"]


def test_a_tilde_the_shell_did_not_expand(tmp_path, monkeypatch, capsys):
    # `--library=~/lib` and a quoted "~/My Videos" reach vmm with the '~': the library was built in a folder named
    # '~' under the working folder, and the quoted PATH was "no such file or folder".
    home, work = tmp_path / "home", tmp_path / "work"
    (home / "My Videos").mkdir(parents=True)
    work.mkdir()
    red = videos.write_solid(str(home / "My Videos" / "red.mp4"), videos.RED, seconds=1)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    assert main(["index", "~/My Videos", "--library=~/lib", *HIST]) == 0
    assert capsys.readouterr().out.startswith("indexed 1 files (1 clips)")
    assert os.listdir(work) == [] and (home / "lib" / "catalog.sqlite").is_file()
    assert main(["index", "~/My Videos/red.mp4", "--library=~/lib", "--remove"]) == 0
    assert capsys.readouterr().out == f"removed 1 file(s) from {home / 'lib'}\n"
    assert main(["encode", "~/My Videos/red.mp4", "--model", "vmm_nano", "--frames", "2", "--threads", "1",
                 "--device", "cpu"]) == 0
    assert "input (1, 3, 2, 64, 64) -> embedding (1, 256)" in capsys.readouterr().out
    assert os.path.exists(red)


def test_json_summary_tells_a_script_what_failed(tmp_path, capsys):
    vids = tmp_path / "vids"
    vids.mkdir()
    red = videos.write_solid(str(vids / "red.mp4"), videos.RED, seconds=1)
    bad = vids / "bad.mp4"
    bad.write_bytes(b"not a video" * 100)
    library = str(tmp_path / "lib")
    assert main(["index", str(vids), "--library", library, *HIST, "--json"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)  # stdout holds the JSON alone; the failure is also listed on stderr for a person
    assert (report["library"], report["indexed"], report["clips"], report["failed"]) == (library, 1, 1, 1)
    assert report["failures"] == [{"path": str(bad), "error": "not a video: the file holds text"}]
    assert err == f"failed: {bad}: not a video: the file holds text\n"
    os.remove(red)
    assert main(["index", str(vids), "--library", library, "--quiet", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["indexed"], report["removed"], report["failed"], report["skipped_failed"]) == (0, 1, 0, 1)
    assert main(["index", str(bad), str(tmp_path / "elsewhere"), "--library", library, "--remove", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {"library": library, "removed": 1, "not_found": [str(tmp_path / "elsewhere")]}


def test_json_summary_names_files_kept_for_an_empty_folder(tmp_path, capsys):
    """The files of a folder found empty (a drive not mounted) are kept; --json gave them as [path, folder] pairs
    where its other lists say which is which."""
    nas = tmp_path / "nas"
    nas.mkdir()
    red = videos.write_solid(str(nas / "red.mp4"), videos.RED, seconds=1)
    library = str(tmp_path / "lib")
    assert main(["index", str(nas), "--library", library, *HIST]) == 0
    os.remove(red)
    capsys.readouterr()
    assert main(["index", str(nas), "--library", library, *HIST, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["removed"], report["kept"]) == (0, [{"path": red, "folder": str(nas)}])


@pytest.mark.parametrize("options, message", [
    (["--stride", "inf"], "--stride inf is longer than the window (10 s, the default); pass a --stride of at most 10 "
                          "seconds, or a longer --window"),
    (["--stride", "20"], "--stride 20 is longer than the window (10 s, the default)"),
    (["--window", "2", "--stride", "2.5"], "--stride 2.5 is longer than the window (2 s); pass a --stride of at "
                                           "most 2 seconds"),
])
def test_a_stride_longer_than_the_window_names_the_options(tmp_path, capsys, options, message):
    # The decoder's own check answered "stride must be > 0 and <= window (10.0 s), got inf; fix the option".
    red = videos.write_solid(str(tmp_path / "red.mp4"), videos.RED, seconds=1)
    library = tmp_path / "lib"
    assert main(["index", red, "--library", str(library), *HIST, *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not library.exists()


@pytest.mark.parametrize("command", ["index", "encode"])
def test_every_option_help_says_its_default(command):
    parser = build_parser().commands[command]
    undocumented = [action.option_strings[-1] for action in parser._actions
                    if action.option_strings and action.nargs != 0 and not action.required
                    and "default" not in action.help and "[" not in action.help]
    assert undocumented == []


def test_remove_json_names_the_paths_that_matched_nothing_absolute(tmp_path, monkeypatch, capsys):
    # `not_found` held the PATHs as typed ("elsewhere") beside an absolute `library`: a script reading the object
    # could not tell what they were relative to.
    red = videos.write_solid(str(tmp_path / "red.mp4"), videos.RED, seconds=1)
    library = str(tmp_path / "lib")
    assert main(["index", red, "--library", library, *HIST]) == 0
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    assert main(["index", "red.mp4", "elsewhere", "--library", "lib", "--remove", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {"library": library, "removed": 1, "not_found": [str(tmp_path / "elsewhere")]}
    assert err == "not in the library: elsewhere (check the path; nothing under it was indexed)\n"


def test_remove_refuses_quiet_which_it_would_ignore(tmp_path, capsys):
    # --remove draws no progress bar: --quiet was accepted and did nothing, unlike --model and the other options
    # only indexing uses.
    red = videos.write_solid(str(tmp_path / "red.mp4"), videos.RED, seconds=1)
    library = str(tmp_path / "lib")
    assert main(["index", red, "--library", library, *HIST]) == 0
    capsys.readouterr()
    assert main(["index", red, "--library", library, "--remove", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --remove takes only PATHs, --library and --json; --quiet would be ignored, drop it")
    assert err.count("\n") == 1, err
    assert main(["index", red, "--library", library, "--remove"]) == 0  # still there: the refusal removed nothing
    assert capsys.readouterr().out == f"removed 1 file(s) from {library}\n"


def test_each_rank_takes_its_own_gpu_of_the_node(monkeypatch):
    """Under a launcher that sets RANK and WORLD_SIZE but not LOCAL_RANK every rank took cuda:0, and a node running
    more ranks than GPUs asked for a cuda:N that was not there."""
    import torch

    from index.distributed import launch_info
    from vmm.commands.index import _rank_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    env = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}  # rank 5 is the second of its node
    assert _rank_device(launch_info(environ=env)) == "cuda:1"
    assert _rank_device(launch_info(environ={**env, "LOCAL_RANK": "3"})) == "cuda:1"  # 4 ranks on 2 GPUs
    assert _rank_device(launch_info(environ={**env, "LOCAL_RANK": "0"})) == "cuda:0"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _rank_device(launch_info(environ=env)) is None
