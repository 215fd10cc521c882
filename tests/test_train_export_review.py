"""Recipe files as users write them (repeated keys, YAML 1.1 words, numbers that are names, ``~``) and training
exports that were damaged after they were written."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from vmm.errors import VmmError
from vmm.train import main
from vmm.training.config import load_config

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "tiny.yaml")


def recipe(tmp_path: Path, text: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"base: {TINY}\n{text}")
    return str(path)


@pytest.mark.parametrize("text, line, key", [
    ("optim:\n  lr: 2.0e-3\nschedule: {max_steps: 1}\noptim:\n  weight_decay: 0.1\n", 5, "optim"),
    ("optim:\n  lr: 2.0e-3\n  lr: 1.0e-2\n", 4, "lr"),
])
def test_a_key_given_twice_is_refused_naming_the_line(capsys, tmp_path, text, line, key):
    # YAML keeps the last: the first optim: section's lr was dropped, or the first lr, without a word.
    path = recipe(tmp_path, text)
    assert main(["--config", path, "--check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: config {path} line {line} is not valid YAML (key '{key}' is given twice")
    assert err.count("\n") == 1


def test_yaml_merge_keys_may_repeat_what_they_merge(tmp_path):
    cfg = load_config(recipe(tmp_path, "model:\n  text: {<<: {num_hidden_layers: 2, hidden_size: 64}, "
                                       "num_hidden_layers: 1}\n"))
    assert (cfg.model.text["num_hidden_layers"], cfg.model.text["hidden_size"]) == (1, 64)


def test_yaml_words_and_exponents_mean_what_the_options_take(capsys, tmp_path):
    cfg = load_config(recipe(tmp_path, "train: {precision: no}\nschedule: {max_steps: 1e3, warmup_steps: 2E+1}\n"
                                       "optim: {lr: 4e-4}\n"))
    assert cfg.train.precision == "no" and cfg.schedule.max_steps == 1000 and cfg.schedule.warmup_steps == 20
    assert cfg.optim.lr == 4e-4
    assert main(["--config", recipe(tmp_path, "train: {progress: yes}\n"), "--check"]) == 2
    assert capsys.readouterr().err == "error: option train.progress must be true/false, got 'yes'\n"


def test_a_number_given_to_a_string_option_keeps_its_spelling(tmp_path):
    cfg = load_config(recipe(tmp_path, "train: {output_dir: 2024_01_15}\nmodel: {vision: {depth: 3}}\n"),
                      ["data.train[0].root=2024_01", "data.train[0].name=1.10", "model.vision.embed_dim=96"])
    assert cfg.train.output_dir == "2024_01_15"  # was 20240115: the run wrote into another folder
    assert (cfg.data.train[0].root, cfg.data.train[0].name) == ("2024_01", "1.10")
    assert load_config(TINY, ["train.output_dir=1e3"]).train.output_dir == "1e3"  # was '1000.0'
    # Numbers stay plain ints where they are numbers: the run's train_config.yaml is written with safe_dump.
    assert type(cfg.model.vision["depth"]) is int and type(cfg.model.vision["embed_dim"]) is int
    assert yaml.safe_load(yaml.safe_dump(cfg.to_dict()))["train"]["output_dir"] == "2024_01_15"


def test_home_in_recipe_paths_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_config(recipe(tmp_path, "train: {output_dir: ~/runs/a}\n"),
                      ["data.train=[{'anno': '~/data/train.json', 'root': '~/data'}]", "model.init=~/stage1/final"])
    assert cfg.train.output_dir == str(tmp_path / "runs/a")  # was '~/runs/a': a folder named ~ in the cwd
    assert (cfg.data.train[0].anno, cfg.data.train[0].root) == (str(tmp_path / "data/train.json"),
                                                                 str(tmp_path / "data"))
    assert cfg.model.init == str(tmp_path / "stage1/final") and cfg.train.resume is None
    # base: ~/... was read as a folder named ~ beside the recipe ("its base ~/recipe.yaml does not exist").
    stage2 = tmp_path / "elsewhere" / "stage2.yaml"
    stage2.parent.mkdir()
    stage2.write_text("base: ~/recipe.yaml\noptim: {lr: 2.0e-3}\n")
    cfg = load_config(stage2)
    assert (cfg.optim.lr, cfg.train.output_dir) == (2e-3, str(tmp_path / "runs/a"))


def test_an_empty_output_dir_is_refused(capsys):
    # train.output_dir=$RUN with RUN unset: the run went into the current folder.
    assert main(["--config", TINY, "train.output_dir=", "--check"]) == 2
    assert capsys.readouterr().err == ("error: train.output_dir is empty; pass the run's folder, e.g. "
                                       "train.output_dir=runs/my_run\n")


@pytest.mark.parametrize("override, guess", [("optim.lrr=1", "optim.lr"), ("trian.seed=1", "train"),
                                              ("model.vision.dpeth=3", "model.vision.depth"),
                                              ("optim.LR=1", "optim.lr")])  # (no hint for another case before)
def test_an_unknown_key_suggests_the_closest(capsys, override, guess):
    assert main(["--config", TINY, override, "--check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: unknown config key {override.split('=')[0].split('.')[0]}")
    assert err.endswith(f"; did you mean {guess}?\n") and err.count("\n") == 1


# -- trainable-only exports ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A trainable-only export of vmm_nano's real MiniLM tower with its embeddings frozen, and its model."""
    import vmm
    from vmm.training.export import _init_source_keys, save_trainable
    torch.manual_seed(0)
    model = vmm.create_model("vmm_nano", vision={"depth": 1, "embed_dim": 64, "img_size": 32, "num_frames": 2,
                                                   "clip_output_dim": 32})
    frozen = sorted(k for k in _init_source_keys(model) if k.startswith("text_encoder.embeddings."))
    folder = save_trainable(model, tmp_path_factory.mktemp("export") / "final", frozen)
    return folder, model


def damaged(export, tmp_path, edit) -> Path:
    folder = tmp_path / "copy"
    shutil.copytree(export[0], folder)
    edit(folder)
    return folder


def edit_entry(**changes):
    def edit(folder):
        cfg = json.loads((folder / "config.json").read_text())
        cfg["trainable_only"] = changes["entry"] if "entry" in changes else {**cfg["trainable_only"], **changes}
        (folder / "config.json").write_text(json.dumps(cfg))
    return edit


def cut(folder):
    weights = folder / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:100_000])


def test_a_trainable_export_loads_the_trained_weights(export):
    import vmm
    folder, model = export
    loaded = vmm.create_model(str(folder)).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("edit, message", [
    (cut, r"copy/trainable\.safetensors is not a complete safetensors file \(.+\); copy it again or re-export"),
    (edit_entry(weights="other.safetensors"), r"copy/other\.safetensors is missing \(config\.json names it\)"),
    (edit_entry(weights="../final/trainable.safetensors"), r"copy/config\.json: its \"trainable_only\" entry is not"),
    (edit_entry(entry="yes"), r"copy/config\.json: its \"trainable_only\" entry is not a training export's"),
    (edit_entry(frozen=5), r"copy/config\.json: its \"trainable_only\" entry is not a training export's"),
])
def test_a_damaged_trainable_export_is_one_line_naming_the_file(export, tmp_path, edit, message):
    # These were a SafetensorError, FileNotFoundError, AttributeError or TypeError traceback.
    import vmm
    folder = damaged(export, tmp_path, edit)
    with pytest.raises(VmmError, match=message):
        vmm.create_model(str(folder))


def test_overrides_may_stand_on_both_sides_of_an_option(capsys):
    from vmm.train import build_parser
    args = build_parser().parse_args(["optim.lr=1e-3", "--config", TINY, "loss.uta=0", "--check", "train.seed=3"])
    assert (args.config, args.check, args.overrides) == (TINY, True, ["optim.lr=1e-3", "loss.uta=0", "train.seed=3"])
    # The group after --check is read as overrides (it was refused as "unrecognized arguments").
    assert main(["--config", TINY, "loss.uta=0", "--check", "optim.lrr=1"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown config key optim.lrr;")
