"""Resuming a stopped run: the command's optimizer settings, another epoch plan, TensorBoard's steps, checkpoint
retention after a rerun from an earlier step, and a disk that fills up while a checkpoint or the model is written."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import file_size_limit
from tests.test_train_loop import TINY, metrics
from vmm.errors import VmmError
from vmm.training.config import load_config
from vmm.training.loop import TrainerState, find_latest_checkpoint, save_checkpoint, train


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """19 training clips (4 micro-batches of 4 per epoch), and the first 8 of them as a smaller annotation list."""
    from vmm.data.synthetic import generate_corpus
    root = tmp_path_factory.mktemp("resume")
    generate_corpus(root, num_videos=24, seed=0, size=32, seconds=1.0, workers=1)
    (root / "small.json").write_text(json.dumps(json.loads((root / "train.json").read_text())[:8]))
    return root


def cfg(corpus: Path, out: Path, *extra: str, anno: str = "train.json"):
    return load_config(TINY, [f"data.train=[{{'anno': '{corpus / anno}', 'root': '{corpus}'}}]",
                              f"train.output_dir={out}", "train.progress=False", "loss.uta=0", *extra])


@pytest.fixture(scope="module")
def five_steps(corpus, tmp_path_factory) -> Path:
    """A 5-step run with checkpoints at steps 3 (mid-epoch: 3 of 4 micro-batches) and 5."""
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(True)
    out = tmp_path_factory.mktemp("five")
    train(cfg(corpus, out, "schedule.max_steps=5", "train.save_every=3", "train.keep_last=5"))
    return out


def test_a_resume_trains_with_the_commands_optimizer_settings(five_steps, corpus, tmp_path):
    """load_state brought back the saved weight decay and eps: the run went on with them while the warning said
    "the steps from here use this command's"."""
    train(cfg(corpus, tmp_path, "schedule.max_steps=4", "optim.weight_decay=0.5", "optim.eps=1e-3",
              "optim.betas=[0.8, 0.9]", f"train.resume={five_steps / 'checkpoints/step_00000003'}"))
    groups = torch.load(tmp_path / "checkpoints/step_00000004/optimizer.bin")["param_groups"]
    assert [(g["name"], g["weight_decay"], g["eps"], tuple(g["betas"])) for g in groups] == \
        [("decay", 0.5, 1e-3, (0.8, 0.9)), ("no_decay", 0.0, 1e-3, (0.8, 0.9))]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("anno, extra, epoch", [("small.json", [], "an epoch of 4, an epoch of this run has 2"),
                                                ("train.json", ["train.grad_accum=3"],
                                                 "an epoch of 4, an epoch of this run has 3")])
def test_a_mid_epoch_resume_with_another_epoch_plan_is_refused(five_steps, corpus, tmp_path, anno, extra, epoch):
    """3 micro-batches into an epoch of 4, resumed on data giving 2 per epoch (or with grad_accum=3, 3 per epoch and
    the steps out of line with it): nothing was left to skip to, or the epoch's end fell between two optimizer
    steps, and the loop began the same epoch again for ever (a hang at 100% CPU)."""
    checkpoint = five_steps / "checkpoints/step_00000003"
    with pytest.raises(VmmError, match=rf"^train\.resume: {checkpoint} stopped 3 micro-batches into {epoch} "
                                       r"\(data\.train or train\.grad_accum differ\); resume with the settings it "
                                       r"was saved with$"):
        train(cfg(corpus, tmp_path, "schedule.max_steps=5", f"train.resume={checkpoint}", *extra, anno=anno))


@pytest.mark.timeout(120)
def test_a_mid_epoch_resume_drawing_other_batches_is_refused(five_steps, corpus, tmp_path):
    """Another seed gives an epoch of as many micro-batches, other ones: the resume skipped 3 of them, which were not
    those the checkpoint trained on, so samples of the epoch were trained twice or never. The same plan with another
    number of decoding workers still resumes (test_train_loop)."""
    checkpoint = five_steps / "checkpoints/step_00000003"
    with pytest.raises(VmmError, match=rf"^train\.resume: {checkpoint} stopped 3 micro-batches into epoch 0, whose "
                                       r"batches this run draws differently \(train\.seed, data\.train or "
                                       r"data\.caption_sampling differ\); resume with the settings it was saved with$"):
        train(cfg(corpus, tmp_path / "mid", "schedule.max_steps=5", f"train.resume={checkpoint}", "train.seed=5"))


@pytest.mark.parametrize("extra, refusal", [("data.batch_size=3", "with 4 samples per micro-batch, this run has 3"),
                                            ("train.grad_accum=3", "into an epoch of 4, an epoch of this run has 3"),
                                            ("train.seed=5", "into epoch 0, whose batches this run draws differently")])
def test_check_refuses_a_mid_epoch_resume_the_run_would_refuse(five_steps, corpus, tmp_path, capsys, extra, refusal):
    """--check said "ok" and the run refused the checkpoint only after building the model and the teacher (minutes
    for VideoMamba-M, once the job had its GPUs)."""
    from vmm.train import main
    checkpoint = five_steps / "checkpoints/step_00000003"
    code = main(["--config", TINY, f"data.train=[{{'anno': '{corpus / 'train.json'}', 'root': '{corpus}'}}]",
                 f"train.output_dir={tmp_path / 'out'}", "loss.uta=0", "schedule.max_steps=5",
                 f"train.resume={checkpoint}", extra, "--check"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and err[-1].startswith(f"error: train.resume: {checkpoint} stopped ") and refusal in err[-1]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("launcher", [{}, {"WORLD_SIZE": "2", "RANK": "0"}])
def test_check_before_launching_takes_the_checkpoints_process_count(five_steps, corpus, tmp_path, capsys,
                                                                      monkeypatch, launcher):
    """The checkpoint of 4 samples per micro-batch is that of 2 processes of data.batch_size=2 too. `--check` run
    before `accelerate launch` (no launcher: 1 process counted) refused it "with 4 samples per micro-batch, this run
    has 2", a resume the launched run accepts."""
    from vmm.train import main
    for name in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in launcher.items():
        monkeypatch.setenv(name, value)
    code = main(["--config", TINY, f"data.train=[{{'anno': '{corpus / 'train.json'}', 'root': '{corpus}'}}]",
                 f"train.output_dir={tmp_path / 'out'}", "loss.uta=0", "schedule.max_steps=5", "data.batch_size=2",
                 f"train.resume={five_steps / 'checkpoints/step_00000003'}", "--check"])
    out, err = capsys.readouterr()
    assert code == 0 and out.startswith("ok: "), err


def test_a_checkpoint_of_another_model_names_the_changed_settings(five_steps, corpus, tmp_path):
    """A resume whose model or freeze list differs from the run's could not load the checkpoint and said only
    "(Error(s) in loading state_dict for PretrainObjective:); it is damaged or from another model config", while
    the setting that changed, which the resume's warning names, was printed only after a load that succeeded."""
    checkpoint = five_steps / "checkpoints/step_00000003"
    with pytest.raises(VmmError) as depth:
        train(cfg(corpus, tmp_path / "depth", "schedule.max_steps=5", "model.vision.depth=3",
                  f"train.resume={checkpoint}"))
    assert str(depth.value).startswith(f"train.resume: cannot load {checkpoint} (Missing key(s) in state_dict: ")
    assert str(depth.value).endswith(f"with this command's settings: 1 setting(s) differ from those of the run's last "
                                     f"start ({five_steps / 'train_config.yaml'}): model.vision.depth 2 -> 3; resume "
                                     f"with the settings it was saved with")
    with pytest.raises(VmmError, match=r"^train\.resume: cannot load .*: freeze \[\] -> "
                                       r"\['text_encoder\.embeddings'\]; resume with the settings it was saved with$"):
        train(cfg(corpus, tmp_path / "freeze", "schedule.max_steps=5", "freeze=['text_encoder.embeddings']",
                  f"train.resume={checkpoint}"))


def test_a_run_of_another_process_count_is_refused_before_the_model_is_built(five_steps, corpus, tmp_path,
                                                                              monkeypatch):
    """--check takes the checkpoint's process count where no launcher gives one; the run itself, 1 process of
    data.batch_size=2 here, still refuses the checkpoint of 4 samples per micro-batch, before building the model and
    the teachers (minutes for VideoMamba-M)."""
    import vmm.training.loop as loop

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the checkpoint's epoch plan was checked")
    monkeypatch.setattr(loop, "build_model", no_model)
    checkpoint = five_steps / "checkpoints/step_00000003"
    with pytest.raises(VmmError, match=rf"^train\.resume: {checkpoint} stopped mid-epoch with 4 samples per "
                                       r"micro-batch, this run has 2 \(data\.batch_size x processes\)"):
        train(cfg(corpus, tmp_path, "schedule.max_steps=5", "data.batch_size=2", f"train.resume={checkpoint}"))


def test_a_resume_with_moved_starting_weights_warns_of_no_change(five_steps, corpus, tmp_path, capsys):
    """A resume reads no model.init: one pointed at the stage-1 folder's new place was warned of as a setting that
    differs, "the steps from here use this command's"."""
    run = tmp_path / "run"
    shutil.copytree(five_steps, run, ignore=shutil.ignore_patterns("final"))
    capsys.readouterr()
    train(cfg(corpus, run, "schedule.max_steps=5", "train.resume=auto", f"model.init={tmp_path / 'moved'}",
              f"model.vision_init={tmp_path / 'moved.pth'}"))
    said = "".join(capsys.readouterr())
    assert "resumed from" in said and "differ from those of the run's last start" not in said, said
    assert (run / "final").is_dir()


def test_a_cut_checkpoint_of_a_run_given_more_steps_is_called_damaged(five_steps, corpus, tmp_path):
    """A setting that changes nothing the checkpoint holds (more steps, another lr) was named as the reason a cut
    weights file could not be loaded, with "resume with the settings it was saved with", which cannot load it."""
    run = tmp_path / "run"
    shutil.copytree(five_steps, run, ignore=shutil.ignore_patterns("step_00000005", "final"))
    checkpoint = run / "checkpoints/step_00000003"
    weights = checkpoint / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(VmmError, match=rf"^train\.resume: cannot load {checkpoint} \(.*\); it is damaged or from "
                                       r"another model config: resume from an earlier checkpoint"):
        train(cfg(corpus, run, "schedule.max_steps=8", "optim.lr=2e-3", "train.resume=auto"))


@pytest.mark.timeout(120)
def test_a_resume_needs_no_starting_weights(five_steps, corpus, tmp_path):
    """Stage 2 stopped, and the stage-1 folder its model.init names was moved since (or the run goes on on another
    machine): the resume was refused with "model.init: ... not found" for weights its checkpoint replaces."""
    stage1 = tmp_path / "stage1"
    shutil.copytree(five_steps / "final", stage1)
    run = tmp_path / "run"
    train(cfg(corpus, run, f"model.init={stage1}", "schedule.max_steps=3", "train.save_every=2", "train.keep_last=5"))
    stopped = tmp_path / "stopped"
    shutil.copytree(run, stopped, ignore=shutil.ignore_patterns("step_00000003", "final"))
    stage1.rename(tmp_path / "moved")
    train(cfg(corpus, stopped, f"model.init={stage1}", "schedule.max_steps=3", "train.resume=auto"))
    resumed, uninterrupted = metrics(stopped)[-1], metrics(run)[-1]
    assert resumed == pytest.approx({**uninterrupted, "samples_per_s": resumed["samples_per_s"]})  # step 3 alike
    with pytest.raises(VmmError, match=rf"^model\.init: {stage1} not found"):  # a new run does need them
        train(cfg(corpus, tmp_path / "new", f"model.init={stage1}", "schedule.max_steps=3"))


def test_tensorboard_keeps_one_value_per_step_after_a_resume(five_steps, corpus, tmp_path):
    """Stopped after logging step 5, before its checkpoint: the resume logged steps 4 and 5 again, and TensorBoard
    showed both (a zigzag), while metrics.jsonl was cut to the checkpoint's step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run = tmp_path / "run"
    shutil.copytree(five_steps, run, ignore=shutil.ignore_patterns("step_00000005", "final"))
    train(cfg(corpus, run, "schedule.max_steps=5", "train.save_every=3", "train.keep_last=5", "train.resume=auto"))
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    logged = events.Scalars("train/loss")
    assert [e.step for e in logged] == [1, 2, 3, 4, 5]
    assert [e.value for e in logged] == pytest.approx([r["loss"] for r in metrics(run)], rel=1e-6)


def test_a_rerun_from_an_earlier_checkpoint_keeps_its_own_checkpoints(tmp_path):
    """Resumed from step 2 in its own folder, where steps 4 and 6 of the abandoned continuation were: with
    keep_last=2 the save of step 3 deleted step 3 itself, and resume=auto then took the old step 6."""
    from accelerate import Accelerator
    accelerator = Accelerator(cpu=True)
    for step in (2, 4, 6):
        save_checkpoint(accelerator, tmp_path, TrainerState(global_step=step), keep_last=5)
    save_checkpoint(accelerator, tmp_path, TrainerState(global_step=3), keep_last=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000002", "step_00000003"]
    assert find_latest_checkpoint(tmp_path).name == "step_00000003"


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_last_checkpoint(tmp_path):
    """torch.save's "[enforce fail at inline_container.cc] unexpected pos" traceback, its half-written hidden
    folder left holding the space; and safetensors' SafetensorError traceback for the final model."""
    from accelerate import Accelerator

    from vmm.training.loop import build_model, export_final
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(512, 1024))  # 2 MB of weights
    small = Accelerator(cpu=True)
    save_checkpoint(small, tmp_path, TrainerState(global_step=1), keep_last=2)  # RNG states only: a few kB
    with pytest.raises(VmmError, match=rf"^train\.output_dir: cannot write checkpoint step_00000002 in {tmp_path} "
                                       r"\(.* MB free there\); free disk space, then resume with train\.resume=auto$"):
        with file_size_limit(1 << 20):  # writes of more than 1 MB fail
            save_checkpoint(accelerator, tmp_path, TrainerState(global_step=2), keep_last=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000001"]
    tiny, _ = build_model(load_config(TINY, ["loss.uta=0"]))
    assert model.weight.numel() * 4 > 1 << 20 and sum(p.numel() for p in tiny.parameters()) * 4 > 1 << 20
    with pytest.raises(VmmError, match=rf"^train\.output_dir: cannot write the final model in {tmp_path} \(.*\); "
                                       r"free disk space, then resume with train\.resume=auto$"):
        with file_size_limit(1 << 20):
            export_final(tiny, tmp_path, [], trainable_only=False, step=2)
    assert not (tmp_path / "final").exists() and not (tmp_path / ".final.tmp").exists()
