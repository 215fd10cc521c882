"""A sweep of every command's options with the values scripts pass by mistake: an empty or blank string (an unset
"$VAR"), a quoted "~/..." the shell left alone, and inf where a number of seconds goes. Each ends in one
`error: ...` line naming the option (exit status 2, nothing written), or does what the value means."""
import json
import os

import pytest

from tests import videos
from tests.tiny_model import save_tiny_model
from vmm.cli import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    save_tiny_model(root / "model")
    (root / "videos").mkdir()
    videos.write_red_green_square(root / "videos")
    (root / "ann.json").write_text(json.dumps([{"video": name, "caption": f"a {name[:-4]} video"}
                                               for name in ("red.mp4", "green.mp4", "square.mp4")]))
    assert main(["index", str(root / "videos"), "--library", str(root / "lib"), "--model", str(root / "model"),
                 "--quiet", "--workers", "0"]) == 0
    return root


def refused(args, capsys, needle):
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert needle in err, err


def _eval(root, *extra):
    return ["eval", "msrvtt", "--annotations", str(root / "ann.json"), "--videos", str(root / "videos"),
            "--model", str(root / "model"), "--device", "cpu", "--workers", "0", "--no-progress", *extra]


@pytest.mark.parametrize("value", ["", " "])
@pytest.mark.parametrize("command, option", [
    ("eval", "--json"), ("eval", "--markdown"), ("eval", "--save-scores"),
    ("search", "--queries"), ("search", "--video"),
    ("classify", "--model"), ("classify", "--checkpoint"),
    ("encode", "--model"),
])
def test_a_blank_value_is_named_as_empty(setup, tmp_path, monkeypatch, capsys, command, option, value):
    # Path("") is the working folder: "--json  is a directory", "--queries  is a folder"; " " wrote a report named
    # " "; classify dropped --checkpoint '' beside a model folder and ran its own weights.
    monkeypatch.chdir(tmp_path)
    args = {"eval": _eval(setup),
            "search": ["search", str(setup / "lib")],
            "classify": ["classify", str(setup / "videos" / "red.mp4"), "--model", str(setup / "model")],
            "encode": ["encode"]}[command]
    refused(args + [option, value], capsys, f"{option} is empty ({value!r})")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("value", ["", "\t"])
def test_demo_and_index_name_a_blank_folder(setup, tmp_path, monkeypatch, capsys, value):
    monkeypatch.chdir(tmp_path)
    refused(["demo", "--out", value], capsys, "--out is empty; pass a folder")
    # " " was "no model given", and with --model a library in a folder named " "
    refused(["index", str(setup / "videos"), "--library", f" {value} ", "--model", str(setup / "model"), "--quiet",
             "--workers", "0"], capsys, "--library is empty")
    assert os.listdir(tmp_path) == []


def test_eval_takes_a_quoted_home_path(setup, tmp_path, monkeypatch, capsys):
    # --json=~/r.json wrote ./~/r.json, and --annotations "~/ann.json" was "does not exist"
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (home / "ann.json").write_text((setup / "ann.json").read_text())
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    args = _eval(setup, "--json", "~/r.json")
    args[args.index("--annotations") + 1] = "~/ann.json"
    assert main(args) == 0, capsys.readouterr().err
    assert json.loads((home / "r.json").read_text())["num_videos"] == 3
    assert os.listdir(work) == []


def test_index_max_seconds_inf_is_the_whole_video(setup, tmp_path, capsys):
    # manifest.json got a bare `Infinity`, which is no JSON: strict readers (jq, JSON.parse) refused the file
    library = tmp_path / "lib"
    index = ["index", str(setup / "videos"), "--library", str(library), "--quiet", "--workers", "0"]
    assert main(index + ["--model", str(setup / "model"), "--max-seconds", "inf"]) == 0
    text = (library / "manifest.json").read_text()
    assert json.loads(text, parse_constant=lambda word: pytest.fail(f"{word} in manifest.json"))["max_seconds"] is None
    assert main(index + ["--max-seconds", "inf"]) == 0  # the same setting again, as the library records it
    refused(index + ["--max-seconds", "3"], capsys, "uses max_seconds=None but max_seconds=3.0")


@pytest.mark.parametrize("override, key", [("model.init=''", "model.init"), ("train.resume=", "train.resume"),
                                           ("teacher.clip_weights=' '", "teacher.clip_weights")])
def test_train_refuses_a_blank_path(override, key):
    # model.init '' was dropped without a word: a stage-2 run trained from random weights
    from vmm.errors import VmmError
    from vmm.training.config import load_config
    recipe = os.path.join(os.path.dirname(__file__), "..", "configs", "pretrain", "tiny.yaml")
    with pytest.raises(VmmError, match=rf"^{key} is empty \("):
        load_config(recipe, [override])


def test_train_config_blank_or_quoted_home(tmp_path, monkeypatch, capsys):
    from vmm.train import main as train
    monkeypatch.setenv("HOME", str(tmp_path))
    recipe = os.path.join(os.path.dirname(__file__), "..", "configs", "pretrain", "tiny.yaml")
    (tmp_path / "t.yaml").write_text(open(recipe).read())
    assert train(["--config", " ", "--check"]) == 2
    assert capsys.readouterr().err == "error: --config is empty (' '); pass --config configs/pretrain/<recipe>.yaml\n"
    # found at home (the tiny recipe's data is not there: the check goes on to name that)
    assert train(["--config", "~/t.yaml", "--check"]) == 2
    assert "data.train[0].anno" in capsys.readouterr().err
