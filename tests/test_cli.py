"""The `vmm` entry point itself and `vmm encode`."""
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import videos
from vmm.cli import _stopping_on_sigterm, build_parser, main

REPO = Path(__file__).resolve().parents[1]


def test_every_command_has_help(capsys):
    parser = build_parser()
    names = set(parser._subparsers._group_actions[0].choices)
    assert {"demo", "index", "search", "eval", "classify", "encode"} <= names
    for name in names:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
    capsys.readouterr()
    assert main([]) == 2  # a usage mistake: its help went to stdout, where results go
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("usage: vmm") and "encode" in err


@pytest.mark.parametrize("argv, hint", [
    (["serch", "LIB", "red"], "); did you mean 'search'? (`vmm --help`"),
    (["indx", "VIDEOS", "--library", "LIB"], "); did you mean 'index'? (`vmm --help`"),
    (["help", "index"], "); for a command's options run `vmm index --help` (`vmm --help`"),
    (["help"], "); for a command's options run `vmm COMMAND --help` (`vmm --help`"),
    (["Search", "LIB", "red"], "); did you mean 'search'? (`vmm --help`"),  # a capital, as a phone's keyboard types
    (["ENCODE"], "); did you mean 'encode'? (`vmm --help`"),
    (["nosuch"], "'encode') (`vmm --help`"),  # nothing close: no guess
])
def test_a_mistyped_command_names_the_likely_one(argv, hint, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and f"invalid choice: {argv[0]!r}" in err, err
    assert hint in err, err


@pytest.mark.parametrize("model, frames, shape", [("videomamba_tiny", 2, "(1, 192)"), ("vmm_nano", 4, "(1, 256)")])
def test_encode_a_video_file(tmp_path, capsys, model, frames, shape):
    path = videos.write_moving_square(str(tmp_path / "clip.mp4"), seconds=1.0)
    assert main(["encode", path, "--model", model, "--frames", str(frames)]) == 0
    out = capsys.readouterr().out
    assert f"-> embedding {shape}" in out and f"input (1, 3, {frames}," in out


def test_encode_bad_input(tmp_path, capsys, monkeypatch):
    import vmm
    built = []
    monkeypatch.setattr(vmm, "create_model_and_transforms", lambda *a, **k: built.append(a))
    # a missing file is named with its fix before any model is built (and not as a search's "query video")
    assert main(["encode", str(tmp_path / "none.mp4"), "--model", "videomamba_middle"]) == 2
    assert capsys.readouterr().err == f"error: video {tmp_path / 'none.mp4'} does not exist; check the path\n"
    assert built == []
    monkeypatch.undo()
    (tmp_path / "notes.mp4").write_text("not a video")
    assert main(["encode", str(tmp_path / "notes.mp4"), "--model", "vmm_nano"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "notes.mp4" in err and "\n" not in err
    assert main(["encode", "--model", "no_such_model"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["encode", "--checkpoint", ""]) == 2  # was "pretrained='' is empty", the Python API's name
    assert capsys.readouterr().err == ("error: --checkpoint is empty; pass a weights file or model folder, or leave "
                                       "it out for random weights\n")


@pytest.mark.parametrize("argv, message", [
    (["search", "LIB", "red", "-k", "abc"], "error: vmm search: argument -k: invalid int value: 'abc'"),
    (["search", "LIB", "red", "--bogus"], "error: vmm search: unrecognized arguments: --bogus"),
    (["index", "--library", "LIB"], "error: vmm index: the following arguments are required: PATH"),
    (["nosuch"], "error: vmm: argument COMMAND: invalid choice: 'nosuch'"),
])
def test_usage_mistakes_are_one_line(argv, message, capsys):
    # The README promises one `error: ...` line; argparse printed its usage block first, and an unknown option
    # was blamed on `vmm` rather than the command whose --help lists the options.
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and err.startswith(message), err
    command = "vmm " + argv[0] if argv[0] != "nosuch" else "vmm"
    assert err.endswith(f"(`{command} --help` lists the options)\n"), err


def test_index_paths_may_follow_the_options(tmp_path, capsys):
    a = videos.write_solid(str(tmp_path / "a.mp4"), videos.RED, seconds=1)
    b = videos.write_solid(str(tmp_path / "b.mp4"), videos.GREEN, seconds=1)
    library = str(tmp_path / "lib")
    assert main(["index", a, "--library", library, "--model", "color-histogram", "--quiet", b]) == 0
    assert capsys.readouterr().out.startswith("indexed 2 files (2 clips)")
    assert main(["index", a, "--library", library, "--remove", b]) == 0
    assert capsys.readouterr().out.startswith("removed 2 file(s)")


def test_paths_after_a_double_dash_may_follow_the_options(tmp_path, capsys, monkeypatch):
    # `vmm index a.mp4 --library L -- -b.mp4`, as the hint for a dash file suggests and POSIX tools take: argparse
    # left "-- -b.mp4" over and the command failed with "unrecognized arguments: -- -b.mp4".
    monkeypatch.chdir(tmp_path)
    for name in ("a.mp4", "-b.mp4", "c.mp4"):
        videos.write_solid(name, videos.RED, seconds=1)
    index = ["index", "a.mp4", "--library", "lib", "--model", "color-histogram", "--quiet", "--workers", "0"]
    assert main([*index, "--", "-b.mp4", "c.mp4"]) == 0
    assert capsys.readouterr().out.startswith("indexed 3 files (3 clips)")
    assert main([*index, "c.mp4", "--"]) == 0  # a script's `-- "$@"` with no arguments
    assert capsys.readouterr().out.startswith("indexed 0 files (0 clips), 2 unchanged")
    with pytest.raises(SystemExit):  # before the --, a word that starts with '-' is still an option
        main([*index, "--bogus", "--", "c.mp4"])
    assert "unrecognized arguments: --bogus -- c.mp4" in capsys.readouterr().err


def test_a_query_that_starts_with_a_dash(tmp_path, capsys):
    # argparse left "-- -red" over, so such a query could not be given at all, and the error did not say why.
    videos.write_solid(str(tmp_path / "red.mp4"), videos.RED, seconds=1)
    library = str(tmp_path / "lib")
    assert main(["index", str(tmp_path / "red.mp4"), "--library", library, "--model", "vmm_nano", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["search", library, "-k", "1", "--json", "--", "-red screen"]) == 0
    assert '"rank": 1' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["search", library, "-red"])
    assert "a query that starts with '-' reads as an option: give it last, after --: vmm search LIB [options] -- " \
           "-red" in capsys.readouterr().err


def test_a_query_may_follow_the_options(tmp_path, capsys):
    # argparse fills LIB and the optional query together: `vmm search LIB -k 5 "red screen"` left the query over,
    # "unrecognized arguments: red screen", although a query after -- worked.
    videos.write_solid(str(tmp_path / "red.mp4"), videos.RED, seconds=1)
    library = str(tmp_path / "lib")
    assert main(["index", str(tmp_path / "red.mp4"), "--library", library, "--model", "vmm_nano", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["search", library, "red screen", "-k", "1", "--json"]) == 0
    first = capsys.readouterr().out
    assert main(["search", library, "-k", "1", "--json", "red screen"]) == 0
    assert capsys.readouterr().out == first and '"rank": 1' in first
    for argv in (["search", library, "-k", "1", "red", "screen"], ["search", library, "red", "-k", "1", "screen"],
                 ["search", library, "-k", "1", "--", "red", "screen"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert "a query of several words is one argument, quote it: vmm search LIB 'red screen'" in \
            capsys.readouterr().err
    assert main(["search", library, "--video", str(tmp_path / "red.mp4"), "-k", "1", "red"]) == 2
    assert capsys.readouterr().err == "error: give a text query, --video QUERY.mp4 or --queries FILE (exactly one)\n"


def test_encode_a_model_folder_whose_name_holds_a_newline(tmp_path, capsys):
    import shutil
    folder = shutil.copytree(REPO / "vmm" / "weights" / "vmm_nano", tmp_path / "nano\nv2")
    assert main(["encode", "--model", str(folder), "--threads", "1"]) == 0
    out = capsys.readouterr().out  # the name was printed as is: the line split in two
    assert out.count("\n") == 1 and out.startswith(f"model {tmp_path}/nano\\nv2: input (1, 3, 8, 64, 64)"), out


def test_encode_runs_a_checkpoint_file_at_its_own_frame_count(tmp_path, capsys):
    import torch

    import vmm
    torch.manual_seed(0)
    path = tmp_path / "videomamba_t16_f4.pth"
    torch.save(vmm.create_model("videomamba_tiny", num_frames=4).state_dict(), path)
    args = ["encode", "--model", "videomamba_tiny", "--checkpoint", str(path), "--threads", "1"]
    assert main(args) == 0
    assert "input (1, 3, 4, 224, 224)" in capsys.readouterr().out  # 4 frames, not the config's 8
    assert main([*args, "--frames", "2"]) == 0
    assert "input (1, 3, 2, 224, 224)" in capsys.readouterr().out


def test_output_the_locale_cannot_encode(tmp_path, capsys):
    # capsys writes strict UTF-8, as Python does in a UTF-8 locale: a --path holding bytes that are no UTF-8 was
    # echoed in the "no results" line and ended the command with a UnicodeEncodeError traceback.
    red = videos.write_solid(str(tmp_path / "red.mp4"), videos.RED, seconds=1)
    library = str(tmp_path / "lib")
    assert main(["index", red, "--library", library, "--model", "color-histogram", "--quiet", "--workers", "0"]) == 0
    capsys.readouterr()
    assert main(["search", library, "--video", red, "--path", os.fsdecode(b"/videos/\xff*")]) == 0
    assert capsys.readouterr().out == "no results: no indexed video matches --path /videos/\\udcff*; widen or drop it\n"


def _sleep_after_touching(path):
    open(path, "w").close()
    time.sleep(60)


def test_forked_workers_end_without_a_traceback(tmp_path, capfd):
    # vmm demo renders in a fork pool, whose workers inherit vmm's SIGTERM handler, and a pool ends its workers with
    # SIGTERM when it closes: a worker still busy printed a traceback of the handler's exception.
    started = tmp_path / "started"
    with _stopping_on_sigterm(), multiprocessing.get_context("fork").Pool(1) as pool:
        pool.apply_async(_sleep_after_touching, (str(started),))
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    assert started.exists() and "Traceback" not in capfd.readouterr().err


# Options that do nothing unless given (a filter, an output file, an override): they have no default to show.
NO_DEFAULT = {("search", "--video"), ("search", "--queries"), ("search", "--path"), ("search", "--min-duration"),
              ("search", "--max-duration"), ("search", "--model"), ("search", "--checkpoint"), ("eval", "--json"),
              ("eval", "--markdown"), ("eval", "--save-scores"), ("classify", "--model-arg")}


def test_every_option_help_shows_its_default():
    """`vmm demo --help` said "--workers WORKERS  decoder processes", `vmm classify --help` "--threads CPU threads
    for torch" and `vmm search --help` nothing of --rerank's 0: what a run does without them was a guess."""
    parser = build_parser()
    missing = []
    for name, command in parser._subparsers._group_actions[0].choices.items():
        for action in command._actions:
            if (action.required or not action.option_strings or action.nargs == 0
                    or (name, action.option_strings[-1]) in NO_DEFAULT):
                continue  # flags, positionals and required options have no default
            if "[" not in action.help and "default" not in action.help:
                missing.append(f"vmm {name} {action.option_strings[-1]}")
    assert missing == []


def test_help_does_not_import_torch():
    """`vmm --help` and each command's --help took 1.5-2 s: two commands asked torch for their --device default
    while the parser was built, which imported it (and CUDA's libraries) before any option was read."""
    from vmm.cli import COMMANDS
    script = ("import sys\nfrom vmm.cli import main\nfor argv in sys.argv[1:]:\n"
              "    try:\n        main(argv.split())\n    except SystemExit:\n        pass\n"
              "print('torch' in sys.modules, file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", script, "--help", *(f"{name} --help" for name in COMMANDS)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.stderr.splitlines()[-1] == "False", proc.stderr[-2000:]
    assert all(f"vmm {name}" in proc.stdout for name in COMMANDS)
