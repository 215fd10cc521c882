"""Training recipes: typed loading, overrides, and the one-line errors of bad input (exit status 2)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vmm.errors import VmmError
from vmm.train import main
from vmm.training.config import load_config, parse_override
from vmm.training.loop import check_inputs

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "pretrain" / "tiny.yaml")
RECIPES = sorted((REPO / "configs" / "pretrain").glob("*.yaml"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from vmm.data.synthetic import generate_corpus
    root = tmp_path_factory.mktemp("corpus")
    generate_corpus(root, num_videos=12, seed=0, size=32, seconds=1.0, workers=1)
    return root


def data_override(root: Path, anno: str = "train.json") -> str:
    return f"data.train=[{{'anno': '{root / anno}', 'root': '{root}'}}]"


def run_main(capsys, *args) -> tuple[int, str]:
    code = main(["--config", TINY, *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_loads(recipe):
    cfg = load_config(recipe)
    assert cfg.data.train and cfg.optim.lr > 0
    if "stage1" in recipe.name:
        assert cfg.loss.uta > 0 and cfg.teacher.clip_model == "ViT-B-16"
    if "stage2" in recipe.name:
        assert cfg.loss.uta == 0 and cfg.model.init


def test_official_stage_settings():
    s1 = load_config(REPO / "configs/pretrain/videomamba_m16_5m_stage1.yaml")
    s2 = load_config(REPO / "configs/pretrain/videomamba_m16_5m_stage2.yaml")
    assert (s1.optim.lr, s1.optim.weight_decay, s1.optim.betas) == (4e-4, 0.05, [0.9, 0.999])
    assert (s1.schedule.epochs, s1.schedule.warmup_epochs, s1.data.batch_size) == (10, 1, 128)
    assert (s1.loss.video_mask_ratio, s1.loss.image_mask_ratio, s1.loss.mlm_prob) == (0.8, 0.5, 0.5)
    assert (s2.optim.lr, s2.schedule.epochs, s2.schedule.warmup_epochs, s2.data.batch_size) == (8e-5, 1, 0.2, 64)
    assert len(load_config(REPO / "configs/pretrain/videomamba_m16_17m_stage1.yaml").data.train) == 6


def test_overrides_are_typed_literals(tmp_path):
    cfg = load_config(TINY, ["optim.lr=2e-4", "train.output_dir=runs/x y", "loss.uta=0", "model.vision.depth=3",
                             "train.resume=None", "optim.betas=[0.8, 0.9]"])
    assert cfg.optim.lr == 2e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.train.output_dir == "runs/x y" and cfg.loss.uta == 0.0
    assert cfg.model.vision["depth"] == 3 and cfg.model.vision["img_size"] == 32  # merged, not replaced
    assert cfg.train.resume is None and cfg.optim.betas == [0.8, 0.9]
    assert parse_override("data.batch_size=16") == (["data", "batch_size"], 16)


def test_base_recipe_is_merged_underneath(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {TINY}\noptim: {{lr: 5.0e-5}}\n")
    cfg = load_config(child)
    assert cfg.optim.lr == 5e-5 and cfg.optim.weight_decay == 0.05 and cfg.model.vision["depth"] == 2


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown config key optim.lrr; valid keys of optim: lr, weight_decay"),
    ("no_such.key=1", "unknown config key no_such"),
    ("model.vision.dept=2", "unknown config key model.vision.dept"),
    ("optim.lr=fast", "option optim.lr must be a number, got 'fast'"),
    ("data.batch_size=0", "data.batch_size must be >= 1"),
    ("data.train=[{'root': 'x'}]", "data.train[0] needs exactly one of 'anno'"),
    # values that trained without complaint: no steps, gradient ascent, a silent skip of warmup...
    ("schedule.max_steps=-1", "schedule.max_steps must be >= 1"),
    ("schedule.min_lr_ratio=-5", "schedule.min_lr_ratio must lie in [0, 1]"),
    ("schedule.warmup_steps=-3", "schedule.warmup_steps must be >= 0"),
    ("optim.weight_decay=-1", "optim.weight_decay must be >= 0"),
    ("optim.grad_clip=-1", "optim.grad_clip must be > 0"),
    ("optim.eps=-1", "optim.eps must be > 0"),
    ("optim.betas=[0.9,2.0]", "optim.betas must both lie in [0, 1)"),
    ("train.seed=-1", "train.seed must lie in [0, 2**32)"),
    ("data.max_retries=-1", "data.max_retries must be >= 1"),
    ("data.max_missing=0.6", "data.max_missing must lie in [0, 0.5]"),
    ("data.max_missing=-0.1", "data.max_missing must lie in [0, 0.5]"),
    ("data.prefetch_factor=-1", "data.prefetch_factor must be >= 1"),
    ("data.max_text_len=0", "data.max_text_len must be >= 2"),
    ("train.weights_dtype=bf16", "train.weights_dtype must be float32 or bfloat16"),
    ("teacher.clip_renormalize=maybe", "teacher.clip_renormalize"),
    # the recipes' YAML spelling of a list or mapping was one string: "must be a list, got '[...]'"
    ("freeze=[text_encoder.embeddings]", "need quotes (values are Python literals); pass "
                                         "\"freeze=['text_encoder.embeddings']\""),
    ("data.train=[{anno: a.json, root: clips}]", "pass \"data.train=[{'anno': 'a.json', 'root': 'clips'}]\""),
    ("model.vision={depth: 3}", "pass \"model.vision={'depth': 3}\""),
    ("model.name=vmm_nanoo", "model.name 'vmm_nanoo' is not a registered model; did you mean 'vmm_nano'?"),
])
def test_bad_config_is_one_line_exit_2(capsys, override, message):
    code, err = run_main(capsys, override)
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_missing_data_file(capsys, tmp_path):
    code, err = run_main(capsys, data_override(tmp_path, "nope.json"))
    assert code == 2 and f"annotation file {tmp_path / 'nope.json'} not found" in err and err.count("\n") == 1


def test_empty_dataset(capsys, tmp_path):
    (tmp_path / "train.json").write_text("[]")
    code, err = run_main(capsys, data_override(tmp_path))
    assert code == 2 and "is empty (no samples)" in err and err.count("\n") == 1


@pytest.mark.parametrize("caption", ["", "   ", ["a red ball", ""]])
def test_an_empty_caption_is_refused(capsys, corpus, tmp_path, caption):
    """A blank caption was trained on as [CLS] [SEP]: every such clip got the same text embedding."""
    entries = json.loads((corpus / "train.json").read_text())
    entries[2]["caption"] = caption
    anno = tmp_path / "blank.json"
    anno.write_text(json.dumps(entries))
    code, err = run_main(capsys, f"data.train=[{{'anno': '{anno}', 'root': '{corpus}'}}]", "--check")
    assert code == 2 and err.count("\n") == 1
    blank = caption if isinstance(caption, str) else caption[1]
    assert err == (f"error: data.train[0].anno: entry 2 of {anno} ({entries[2]['video']}) has an empty caption "
                   f"({blank!r}, once cleaned); write one or remove the entry\n")


def test_dataset_smaller_than_one_step(capsys, corpus):
    code, err = run_main(capsys, data_override(corpus), "data.batch_size=64")
    assert code == 2 and "gives 10 samples per epoch, fewer than 64 for one optimizer step" in err


def test_media_root_without_the_files(capsys, corpus, tmp_path):
    code, err = run_main(capsys, f"data.train=[{{'anno': '{corpus / 'train.json'}', 'root': '{tmp_path}'}}]")
    assert code == 2 and err.count("\n") == 1
    assert f"10 of 10 media files listed in {corpus / 'train.json'} are missing under {tmp_path}" in err
    assert "fix data.train[0].root" in err and "max_missing" not in err  # no fraction can help here


def test_windows_path_separators_in_an_annotation_list_are_named(capsys, corpus, tmp_path):
    """A list written on Windows ("videos\\a.mp4") was refused as a wrong root, which it is not."""
    entries = json.loads((corpus / "train.json").read_text())
    for entry in entries:
        entry["video"] = entry["video"].replace("/", "\\")
    (tmp_path / "win.json").write_text(json.dumps(entries))
    code, err = run_main(capsys, f"data.train=[{{'anno': '{tmp_path / 'win.json'}', 'root': '{corpus}'}}]")
    assert code == 2 and err.count("\n") == 1
    assert err.endswith(f"its paths are separated with \\ (Windows), which names no folder here: write them with / "
                        f"(e.g. {entries[0]['video'].replace(chr(92), '/')})\n")


@pytest.fixture
def partly_missing(corpus, tmp_path) -> Path:
    """The corpus's 10 training clips with 4 entries pointing at files that are not there (a half-copied corpus)."""
    entries = json.loads((corpus / "train.json").read_text())
    for i in (2, 5, 6, 9):
        entries[i]["video"] = f"videos/not_copied_{i}.mp4"
    (tmp_path / "partial.json").write_text(json.dumps(entries))
    return tmp_path / "partial.json"


def test_missing_media_files_refuse_the_run(capsys, corpus, partly_missing):
    """Past the first 10 entries or not, missing files used to be replaced by other samples without a word."""
    override = f"data.train=[{{'anno': '{partly_missing}', 'root': '{corpus}'}}]"
    code, err = run_main(capsys, override, "loss.uta=0")
    assert code == 2 and err.startswith("error: data.train[0]: ") and err.count("\n") == 1
    assert f"4 of 10 media files listed in {partly_missing} are missing under {corpus}" in err
    assert f"(e.g. {corpus / 'videos/not_copied_2.mp4'})" in err and "data.max_missing" in err
    code, err = run_main(capsys, override, "loss.uta=0", "data.max_missing=0.3")
    assert code == 2 and "4 of 10" in err and "data.max_missing (now 0.3)" in err


def test_allowed_missing_media_warn_and_pass(capsys, corpus, partly_missing):
    code = main(["--config", TINY, f"data.train=[{{'anno': '{partly_missing}', 'root': '{corpus}'}}]", "loss.uta=0",
                 "data.max_missing=0.4", "--check"])
    out, err = capsys.readouterr()
    assert code == 0 and out.startswith("ok: ") and "(10 items)" in out
    # (tiny.yaml's random-teacher settings, unused with loss.uta=0, get a warning line of their own)
    missing = [line for line in err.splitlines() if "media files" in line]
    assert len(missing) == 1 and missing[0].startswith("warning: data.train[0]: 4 of 10 media files")
    assert "replaced by other samples (data.max_missing=0.4)" in missing[0]


def test_teacher_file_absent(capsys, corpus, tmp_path):
    code, err = run_main(capsys, data_override(corpus), f"teacher.clip_weights={tmp_path / 'clip.bin'}")
    assert code == 2 and f"CLIP teacher weights file {tmp_path / 'clip.bin'} not found" in err
    # A hub download folder exists: "not found" sent the user looking for a path that is there.
    code, err = run_main(capsys, data_override(corpus), f"teacher.clip_weights={tmp_path}")
    assert code == 2 and f"CLIP teacher weights file {tmp_path} is a folder (a hub download?), not a file" in err


def test_bad_resume_folder(capsys, corpus, tmp_path):
    code, err = run_main(capsys, data_override(corpus), f"train.resume={tmp_path}", "loss.uta=0")
    assert code == 2 and "is not a vmm checkpoint" in err


@pytest.mark.parametrize("word", ["none", "Off", "no"])
def test_resume_none_or_off_means_a_new_run(capsys, corpus, tmp_path, word):
    """"auto" is a keyword, so the words for no resume are too: train.resume=none was refused as a checkpoint folder
    named "none", and a recipe could not undo its base's resume: auto."""
    code, err = run_main(capsys, data_override(corpus), f"train.output_dir={tmp_path / 'new'}", "loss.uta=0",
                         f"train.resume={word}", "--check")
    assert code == 0 and "error" not in err
    (tmp_path / "base.yaml").write_text(f"base: {TINY}\ntrain: {{resume: auto}}\n")
    (tmp_path / "child.yaml").write_text(f"base: base.yaml\ntrain: {{resume: {word}}}\n")
    assert load_config(tmp_path / "child.yaml").train.resume is None


def test_resume_auto_in_any_case_finds_the_checkpoint(corpus, tmp_path):
    done = tmp_path / "checkpoints" / "step_00000005"
    done.mkdir(parents=True)
    (done / "trainer_state.json").write_text("{}")
    cfg = load_config(TINY, [data_override(corpus), f"train.output_dir={tmp_path}", "train.resume=AUTO",
                             "loss.uta=0"])
    assert cfg.train.resume == "auto" and check_inputs(cfg).resume_dir == done


def test_check_inputs_passes_on_good_data(corpus, tmp_path):
    cfg = load_config(TINY, [data_override(corpus), f"train.output_dir={tmp_path / 'out'}", "loss.uta=0"])
    inputs = check_inputs(cfg)
    assert len(inputs.corpora[0]) == 10 and inputs.clip_weights is None and inputs.resume_dir is None


def test_cli_subprocess_unknown_key_and_offline_teacher(corpus, tmp_path):
    """The real command: status 2, one stderr line, no traceback; the 'openai' tag offline and uncached."""
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "vmm.train", "--config", TINY, data_override(corpus)]
    bad_key = subprocess.run(cmd + ["train.epochz=1"], cwd=REPO, env=env, capture_output=True, text=True)
    assert bad_key.returncode == 2 and bad_key.stdout == ""
    assert bad_key.stderr.startswith("error: unknown config key train.epochz") and bad_key.stderr.count("\n") == 1
    offline = subprocess.run(cmd + ["teacher.clip_weights=openai", "loss.uta=1"], cwd=REPO, env=env,
                             capture_output=True, text=True)
    assert offline.returncode == 2 and "Traceback" not in offline.stderr
    lines = [line for line in offline.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "not in the local cache and the hub is offline" in lines[0]
    assert "teacher.clip_weights=/path/to/" in lines[0]


def test_fresh_run_into_a_folder_with_checkpoints_is_refused(capsys, corpus, tmp_path):
    done = tmp_path / "checkpoints" / "step_00000005"
    done.mkdir(parents=True)
    (done / "trainer_state.json").write_text("{}")
    code, err = run_main(capsys, data_override(corpus), f"train.output_dir={tmp_path}", "loss.uta=0")
    assert code == 2 and "already holds checkpoints of a run; pass train.resume=auto" in err
    cfg = load_config(TINY, [data_override(corpus), f"train.output_dir={tmp_path}", "train.resume=auto"])
    assert check_inputs(cfg).resume_dir == done


def test_hflip_is_a_checked_probability_and_reaches_the_transform():
    from vmm.training.config import load_config
    from vmm.transforms import TrainTransform
    import random
    recipe = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "tiny.yaml"
    assert load_config(recipe, ["data.hflip=0.0"]).data.hflip == 0.0
    with pytest.raises(VmmError, match="data.hflip must be a probability"):
        load_config(recipe, ["data.hflip=1.5"])
    frames = np.zeros((2, 16, 16, 3), np.uint8)
    frames[:, :, :4] = 255  # bright left edge
    never = TrainTransform(16, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)
    for seed in range(20):
        out = never(frames, random.Random(seed))
        assert out[:, :, :, :4].mean() > out[:, :, :, -4:].mean()


@pytest.mark.parametrize("override, option", [
    ("optim.lr=inf", "optim.lr"),
    ("optim.lr=1e400", "optim.lr"),
    ("loss.uta=inf", "loss.uta"),
    ("optim.weight_decay=inf", "optim.weight_decay"),
    ("optim.betas=[0.9, 1e400]", "optim.betas"),
    ("schedule.epochs=inf", "schedule.epochs"),
    ("data.train[0].weight=nan", "data.train[0].weight"),
])
def test_a_number_that_is_not_finite_is_refused(capsys, corpus, override, option):
    """inf passed every range check (inf > 0): lr or a loss weight of inf trained to NaN without a word, and
    schedule.epochs=inf or a NaN corpus weight ended in a traceback."""
    code, err = run_main(capsys, data_override(corpus), override, "--check")
    assert code == 2 and err.startswith(f"error: option {option} must be a finite number, got ") and \
        err.count("\n") == 1, err


def test_a_recipe_with_an_infinite_value_is_one_line_in_the_real_command(corpus, tmp_path):
    recipe = tmp_path / "inf.yaml"
    recipe.write_text(f"base: {TINY}\nschedule: {{epochs: .inf}}\n")
    done = subprocess.run([sys.executable, "-m", "vmm.train", "--config", str(recipe), data_override(corpus),
                           f"train.output_dir={tmp_path / 'out'}", "--check"],
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "error: option schedule.epochs must be a finite number, got inf\n"


def test_a_missing_base_names_the_recipe_that_sets_it(capsys, tmp_path):
    """It said "config file .../nope.yaml not found; pass --config ...", pointing at the --config path, which
    exists; the base: line inside it is what to fix."""
    child = tmp_path / "child.yaml"
    child.write_text("base: nope.yaml\n")
    code = main(["--config", str(child), "--check"])
    err = capsys.readouterr().err
    assert code == 2 and err == (f"error: config {child}: its base {tmp_path / 'nope.yaml'} does not exist; "
                                 f"set base: to a recipe file (a path relative to {tmp_path})\n")
    child.write_text(f"base: {tmp_path}\n")
    assert main(["--config", str(child), "--check"]) == 2
    assert f"its base {tmp_path} is a folder, not a file" in capsys.readouterr().err


def test_freezing_every_parameter_is_refused_by_check_and_run(capsys, corpus, tmp_path):
    """Nothing left to train: the run started, then stopped on a backward traceback."""
    out = tmp_path / "out"
    for extra in (["--check"], []):
        code, err = run_main(capsys, data_override(corpus), f"train.output_dir={out}", "freeze=['*']", *extra)
        assert code == 2 and err.startswith("error: freeze patterns ['*'] freeze every parameter") and \
            err.count("\n") == 1, err
        assert not out.exists()


def test_config_that_is_not_utf8(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\xff\xfe model:\n")
    code = main(["--config", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and "is not UTF-8 text" in err and err.count("\n") == 1


@pytest.mark.parametrize("override, message", [
    ("model.vision.depth=0", "model.vision.depth=0: depth must be a whole number >= 1"),
    ("model.vision.img_size=8", "model.vision.img_size=8 is smaller than patch_size=16"),
    ("model.vision.drop_path_rate=2.0", "model.vision.drop_path_rate=2.0: drop_path_rate must be a number >= 0"),
    ("model.text.num_attention_heads=5", "model.text.num_attention_heads=5 does not divide hidden_size=64"),
    ("model.overrides.embed_dim=-1", "model.overrides.embed_dim=-1: embed_dim must be a whole number >= 1"),
    ("model.overrides.max_text_len=100", "model.overrides.max_text_len=100 is more than the text tower's 64"),
    ("model.overrides.foo=1", "model.overrides: unknown model option(s) foo"),
    ("model.overrides={'vision': {'depth': 3}}", "model.overrides.vision: set vision options in model.vision"),
    ("model.name=videomamba_tiny", "model.name 'videomamba_tiny' has no text tower"),
    ("data.max_text_len=100", "data.max_text_len=100 is more than the text tower's 64 positions"),
])
def test_check_refuses_every_bad_model_field(capsys, corpus, tmp_path, override, message):
    """These passed --check (ok:) and failed only once the real run had started."""
    code, err = run_main(capsys, data_override(corpus), f"train.output_dir={tmp_path / 'out'}", override, "--check")
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize("override, message", [
    ("freeze=['text_encoder.nope']", "error: freeze pattern 'text_encoder.nope' matches no parameter"),
    ("model.vision.clip_output_dim=16", "error: teacher ViT-B-16 has patch 16 and output 32, the student patch 16 "
                                        "and clip_output_dim 16; set model.vision.clip_output_dim to match"),
    ("model.vision.tubelet_size=2", "error: loss.uta=1.0 needs model.vision.tubelet_size=1 (the CLIP teacher masks "
                                    "patches frame by frame), got 2; set it to 1 or loss.uta=0"),
    ("model.vision.frame_mode=per_frame", "error: loss.uta=1.0 needs model.vision.frame_mode='joint' (a per-frame "
                                          "encoder takes no token mask), got 'per_frame'; train it with loss.uta=0"),
    ("teacher.clip_overrides={'bogus': 1}", "error: teacher.clip_model='ViT-B-16' with teacher.clip_overrides keys "
                                            "['bogus']: open_clip cannot build it (CLIP.__init__() got an "
                                            "unexpected keyword argument 'bogus')"),
    ("teacher.clip_model=ViT-Nope", "error: teacher.clip_model='ViT-Nope' with teacher.clip_overrides keys "
                                    "['embed_dim', 'text_cfg', 'vision_cfg']: open_clip cannot build it (Model "
                                    "config for 'ViT-Nope' not found in built-ins.)"),
])
def test_check_refuses_a_bad_freeze_pattern_or_teacher_as_the_run_does(capsys, corpus, tmp_path, override, message):
    """--check said ok: for these, and the run then failed once the model was built (the last two with an open_clip
    traceback); both must give the same line before the model, the teacher or train.output_dir exist."""
    out = tmp_path / "out"
    args = [data_override(corpus), f"train.output_dir={out}", "train.progress=False", override]
    for extra in (["--check"], []):
        code, err = run_main(capsys, *args, *extra)
        assert code == 2 and err.startswith(message) and err.count("\n") == 1, err
        assert not out.exists()


def test_check_passes_a_freeze_pattern_that_matches(capsys, corpus, tmp_path):
    code, err = run_main(capsys, data_override(corpus), f"train.output_dir={tmp_path / 'out'}",
                         "freeze=['text_encoder.encoder.layer.0', 'vision_encoder.layers.*.norm']", "--check")
    assert code == 0 and "error" not in err


def test_a_bad_model_field_stops_the_real_run_before_it_creates_anything(corpus, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "vmm.train", "--config", TINY, data_override(corpus), f"train.output_dir={out}",
           "model.vision.depth=0"]
    done = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "error: model.vision.depth=0: depth must be a whole number >= 1\n"
    assert not out.exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_output_dir_that_cannot_be_created_is_refused_by_check_and_run(capsys, corpus, tmp_path):
    # /proc refuses new folders even to root, whose permission bits say every folder is writable.
    code, err = run_main(capsys, data_override(corpus), "train.output_dir=/proc/vmm_x", "--check")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: train.output_dir: cannot create /proc/vmm_x (/proc: ")
    cmd = [sys.executable, "-m", "vmm.train", "--config", TINY, data_override(corpus), "train.output_dir=/proc/vmm_x"]
    done = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("error: train.output_dir: cannot create /proc/vmm_x")
    assert done.stderr.count("\n") == 1
    # A creatable one passes --check, which creates nothing (its probe folder is removed).
    code, _ = run_main(capsys, data_override(corpus), f"train.output_dir={tmp_path / 'new' / 'run'}", "--check")
    assert code == 0 and list(tmp_path.iterdir()) == []


def test_an_override_can_set_one_entry_of_data_train():
    """The one-line errors name a corpus's options data.train[0].root, data.train[0].weight ...: that spelling
    works as an override too, and a bad index is one line."""
    cfg = load_config(TINY, ["data.train[0].weight=2", "data.train[0].name=first"])
    assert (cfg.data.train[0].weight, cfg.data.train[0].name, cfg.data.train[0].root) == (2.0, "first", "data/tiny")
    with pytest.raises(VmmError, match=r"^override data.train\[1\].root: data.train has 1 entry, so \[1\] is out"):
        load_config(TINY, ["data.train[1].root=x"])
    with pytest.raises(VmmError, match=r"^override freeze\[0\]: the recipe does not set freeze"):
        load_config(TINY, ["freeze[0]=x"])
    with pytest.raises(VmmError, match=r"^unknown config key data.train\[0\].wieght"):
        load_config(TINY, ["data.train[0].wieght=2"])
    # A misspelt list is an unknown key (the advice to pass the whole list led to that error anyway).
    with pytest.raises(VmmError, match=r"^unknown config key data.trian; valid keys of data: train, "):
        load_config(TINY, ["data.trian[0].weight=2"])
    with pytest.raises(VmmError, match=r"indices count from 0; negative ones are not taken"):
        load_config(TINY, ["data.train[-1].weight=2"])
    assert load_config(TINY, ["data.train [0].weight=3"]).data.train[0].weight == 3.0


def test_a_negative_warmup_is_refused():
    with pytest.raises(VmmError, match=r"^schedule.warmup_epochs must be >= 0"):
        load_config(TINY, ["schedule.warmup_epochs=-1", "schedule.warmup_steps=null"])
    # warmup_steps overrides warmup_epochs, which is then not read: as before, not refused
    assert load_config(TINY, ["schedule.warmup_epochs=-1", "schedule.warmup_steps=5"]).schedule.warmup_steps == 5


def test_a_warmup_as_long_as_the_run_is_warned_about(corpus, tmp_path, capsys):
    """schedule.max_steps on a recipe whose warmup is in epochs can leave the whole run in warmup."""
    code, err = run_main(capsys, data_override(corpus), f"train.output_dir={tmp_path / 'o'}", "schedule.max_steps=3",
                         "schedule.warmup_steps=null", "schedule.warmup_epochs=2", "--check")
    assert code == 0
    assert re.search(r"warning: the warmup, schedule.warmup_epochs=2 \((\d+) steps of (\d+) per epoch\), is not "
                     r"shorter than the run, schedule.max_steps=3: the learning rate stays below optim.lr=0.001 "
                     r"\(at most \d+% of it\)", err), err
    code, err = run_main(capsys, data_override(corpus), f"train.output_dir={tmp_path / 'o'}", "--check")
    assert code == 0 and "warmup" not in err


def test_start_up_warnings_come_from_the_first_process_of_any_launcher(monkeypatch, capsys):
    """Under an MPI launcher (no RANK, only OMPI_COMM_WORLD_RANK / PMI_RANK) every process printed the warnings."""
    from vmm.training.loop import _warn
    for var in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        monkeypatch.delenv(var, raising=False)
    for var, rank, shown in [("OMPI_COMM_WORLD_RANK", "1", False), ("PMI_RANK", "2", False),
                             ("OMPI_COMM_WORLD_RANK", "0", True)]:
        monkeypatch.setenv(var, rank)
        _warn("warning: x")
        assert (capsys.readouterr().err == "warning: x\n") == shown
        monkeypatch.delenv(var)


def test_a_fractional_warmup_that_ends_inside_the_last_step_is_warned_about():
    """The warmup is no longer rounded (0.9 epoch of 4 steps is 3.6): the last of 4 steps, step 3, is still in
    warmup at 3 / 3.6 of optim.lr, which is a warmup as long as the run, though 3.6 < 4."""
    from types import SimpleNamespace as NS
    from vmm.training.loop import warmup_note

    def note(warmup_epochs, epochs=1):
        cfg = NS(schedule=NS(warmup_steps=None, warmup_epochs=warmup_epochs, max_steps=None, epochs=epochs,
                             min_lr_ratio=0.0), optim=NS(lr=1e-3))
        return warmup_note(cfg, 4)
    assert "is not shorter than the run" in note(0.9) and "(at most 83% of it)" in note(0.9)
    assert note(0.75) is None  # 3 steps: step 3 runs past the warmup
    assert note(0.74) is None and "(at most 75% of it)" in note(1.0)


def test_a_vocabulary_smaller_than_the_tokenizers_is_refused(capsys, corpus, tmp_path):
    """model.text.vocab_size below the tokenizer's 30522 ids passed --check; the run then failed at its first step
    with an IndexError traceback, leaving a folder the corrected command refused."""
    out = tmp_path / "out"
    for extra in (["--check"], []):
        code, err = run_main(capsys, data_override(corpus), f"train.output_dir={out}", "train.progress=False",
                             "model.text.vocab_size=1000", *extra)
        assert code == 2 and err == ("error: model.text.vocab_size=1000 is less than the tokenizer's 30522 tokens; "
                                     "pass model.text.vocab_size=30522 or more\n"), err
        assert not out.exists()


def test_a_folder_left_by_a_run_that_saved_no_checkpoint_is_named_as_such(capsys, corpus, tmp_path):
    """A run that failed before its first checkpoint (out of memory at step 1) leaves train_config.yaml and
    tensorboard/: the corrected command was refused as "not empty" with no word of why or what to do."""
    out = tmp_path / "out"
    (out / "tensorboard").mkdir(parents=True)
    (out / "train_config.yaml").write_text("model: {}\n")
    code, err = run_main(capsys, data_override(corpus), f"train.output_dir={out}", "--check")
    assert code == 2 and err == (f"error: train.output_dir {out} holds the start of a run that saved no checkpoint "
                                 f"(tensorboard, train_config.yaml); delete it (rm -r {out}) or choose a new "
                                 "train.output_dir\n"), err
    (out / "notes.txt").write_text("mine\n")  # anything else: the general refusal
    code, err = run_main(capsys, data_override(corpus), f"train.output_dir={out}", "--check")
    assert code == 2 and "is not empty (it holds notes.txt, tensorboard, train_config.yaml)" in err


def test_the_tokenizer_of_the_model_config_is_the_one_checked_and_trained_with(capsys, corpus, tmp_path):
    """model.overrides.tokenizer is written into the exported config.json; training tokenized with the model
    name's tokenizer instead, so the saved model named a vocabulary it had never been trained with."""
    from vmm.tokenizer import find_vocab
    missing = tmp_path / "no-such-vocab"
    code, err = run_main(capsys, data_override(corpus), f"model.overrides.tokenizer={missing}", "--check")
    assert code == 2 and err == f"error: tokenizer vocabulary {missing} not found; pass a folder containing " \
                                "vocab.txt\n", err
    bigger = tmp_path / "bigger"
    bigger.mkdir()
    words = find_vocab().read_text(encoding="utf-8").splitlines()
    (bigger / "vocab.txt").write_text("\n".join(words + [f"[unused_extra{i}]" for i in range(8)]) + "\n",
                                      encoding="utf-8")
    code, err = run_main(capsys, data_override(corpus), f"model.overrides.tokenizer={bigger}", "--check")
    assert code == 2 and f"is less than the tokenizer's {len(words) + 8} tokens" in err, err
