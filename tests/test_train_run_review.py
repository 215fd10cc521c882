"""A run's output folder over its life: one run at a time (the run lock), a checkpoint of another run continued in
a folder that holds one, a full disk at the start, what a killed start leaves, and a link to a missing folder."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState

from tests.conftest import file_size_limit
from tests.test_train_loop import REPO, TINY
from vmm.errors import RunFinished, VmmError
from vmm.training import loop
from vmm.training.config import load_config
from vmm.training.loop import LOCK_FILE, RunLock, check_inputs, train

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from vmm.data.synthetic import generate_corpus
    root = tmp_path_factory.mktemp("runs")
    generate_corpus(root, num_videos=24, seed=0, size=32, seconds=1.0, workers=1)
    return root


def overrides(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.train=[{{'anno': '{corpus / 'train.json'}', 'root': '{corpus}'}}]", f"train.output_dir={out}",
            "train.progress=False", "loss.uta=0", *extra]


def cfg(corpus: Path, out: Path, *extra: str):
    return load_config(TINY, overrides(corpus, out, *extra))


@pytest.fixture(scope="module")
def four_steps(corpus, tmp_path_factory) -> Path:
    """A finished 4-step run with checkpoints at steps 2 and 4."""
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(True)
    out = tmp_path_factory.mktemp("four") / "run"
    train(cfg(corpus, out, "schedule.max_steps=4", "train.save_every=2"))
    AcceleratorState._reset_state(True)
    return out


def contents(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


IN_USE = (r"^train\.output_dir {out} is in use by a run that is still going \(pid {pid} on host {host}\); wait for "
          r"it to end, stop it, or choose another train\.output_dir$")


def in_use(out: Path) -> str:
    """IN_USE for a folder this process holds, with its path and the host name escaped: a TMPDIR such as /tmp/ci+1
    made the pattern miss the message."""
    return IN_USE.format(out=re.escape(str(out)), pid=os.getpid(), host=re.escape(socket.gethostname()))


def test_a_live_runs_folder_is_refused_to_a_new_run_and_to_a_resume(four_steps, corpus, tmp_path):
    """A second run into a folder holding a live run's first files was told to `rm -r` it (deleting the live run);
    a resume=auto of a live run's folder resumed it, and both wrote its checkpoints and metrics."""
    started = tmp_path / "started"
    started.mkdir()
    (started / "train_config.yaml").write_text("train: {}\n")
    busy = tmp_path / "busy"
    shutil.copytree(four_steps, busy)
    for out, extra in [(started, []), (started, ["train.resume=auto"]),
                       (busy, ["train.resume=auto", "schedule.max_steps=6"])]:
        lock = RunLock(out)  # the live run, in this process
        try:
            with pytest.raises(VmmError, match=in_use(out)):
                check_inputs(cfg(corpus, out, *extra))
        finally:
            lock.release()
        if out == busy:  # refused before any change, and free again once the run has gone
            assert contents(busy) == {**contents(four_steps), LOCK_FILE: (busy / LOCK_FILE).read_bytes()}
            assert check_inputs(cfg(corpus, out, *extra)).resume_dir == busy / "checkpoints/step_00000004"


def test_a_run_started_while_another_checks_the_folder_again_under_the_lock(corpus, tmp_path, monkeypatch):
    """Both runs pass check_inputs on an empty folder: the one that does not get the lock is refused, and the one
    that gets it after the other wrote there is refused too (it went on and wrote over the other's files)."""
    monkeypatch.setattr(loop, "_LOCK_WAIT_S", 0.1)
    out = tmp_path / "run"
    inputs = check_inputs(cfg(corpus, out, "schedule.max_steps=1"))
    out.mkdir()
    lock = RunLock(out)
    try:
        with pytest.raises(VmmError, match=in_use(out)):
            train(cfg(corpus, out, "schedule.max_steps=1"), inputs)
    finally:
        lock.release()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')  # the other run's, which has ended
    with pytest.raises(VmmError, match=r"holds the start of a run that saved no checkpoint \(metrics\.jsonl\)"):
        train(cfg(corpus, out, "schedule.max_steps=1"), inputs)
    assert (out / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_a_resume_auto_that_finds_a_checkpoint_only_under_the_lock_is_refused(four_steps, corpus, tmp_path):
    """check_inputs found no checkpoint (a new run); another run saved one before this one took the lock: starting
    fresh would mix the two runs' checkpoints, resuming would skip what --check reported."""
    out = tmp_path / "run"
    auto = cfg(corpus, out, "schedule.max_steps=6", "train.resume=auto")
    inputs = check_inputs(auto)
    shutil.copytree(four_steps / "checkpoints", out / "checkpoints")
    with pytest.raises(VmmError, match=rf"^train\.output_dir {re.escape(str(out))} was changed by another run "
                                       r"while this one started; run the command again$"):
        train(auto, inputs)
    assert not (out / "metrics.jsonl").exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_commands_started_together_into_one_folder(corpus, tmp_path):
    """Both passed the empty-folder check and trained to the end: metrics.jsonl held every step twice. Then the
    live run is killed (SIGKILL, no clean-up): its lock goes with it and the folder resumes."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "vmm.train", "--config", TINY,
               *overrides(corpus, out, "schedule.max_steps=200", "train.save_every=2")]
    runs = [subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    deadline = time.monotonic() + 120
    while all(r.poll() is None for r in runs) and time.monotonic() < deadline:
        time.sleep(0.1)
    refused = next(r for r in runs if r.poll() is not None)
    live = next(r for r in runs if r is not refused)
    assert refused.returncode == 2 and live.poll() is None
    assert refused.stderr.read().splitlines()[-1] == (
        f"error: train.output_dir {out} is in use by a run that is still going (pid {live.pid} on host "
        f"{socket.gethostname()}); wait for it to end, stop it, or choose another train.output_dir")
    deadline = time.monotonic() + 120
    while loop.find_latest_checkpoint(out) is None and live.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    live.send_signal(signal.SIGKILL)
    live.wait()
    step = json.loads((loop.find_latest_checkpoint(out) / "trainer_state.json").read_text())["global_step"]
    resumed = subprocess.run([*command[:-2], f"schedule.max_steps={step + 1}", "train.resume=auto"], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    steps = [json.loads(row)["step"] for row in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, step + 2))


def test_another_runs_checkpoint_is_not_continued_in_a_folder_holding_a_run(four_steps, corpus, tmp_path):
    """The later checkpoints, metrics lines and final model of the folder's run were deleted without a word."""
    other = tmp_path / "other"
    shutil.copytree(four_steps, other)
    before = contents(other)
    with pytest.raises(VmmError, match=rf"^train\.output_dir {re.escape(str(other))} already holds checkpoints of a "
                                       r"run; pass train\.resume=auto to continue it or choose a new "
                                       r"train\.output_dir$"):
        train(cfg(corpus, other, "schedule.max_steps=3", f"train.resume={four_steps}/checkpoints/step_00000002"))
    assert contents(other) == before
    # Its own earlier checkpoint (another continuation, as documented) and a new folder are still fine.
    own = f"train.resume={other}/checkpoints/step_00000002"
    assert check_inputs(cfg(corpus, other, "schedule.max_steps=3", own)).resume_dir.name == "step_00000002"
    assert check_inputs(cfg(corpus, tmp_path / "new", "schedule.max_steps=3",
                            f"train.resume={four_steps}/checkpoints/step_00000002")).resume_dir is not None


def test_a_full_disk_at_the_start_is_one_line_and_leaves_the_folder_reusable(corpus, tmp_path, capsys):
    """A traceback from yaml's write, and the cut .train_config.yaml.tmp left behind made the rerun refuse the
    folder as 'not empty'."""
    out = tmp_path / "run"
    inputs = check_inputs(cfg(corpus, out, "schedule.max_steps=1"))
    with pytest.raises(VmmError, match=rf"^train\.output_dir: cannot write train_config\.yaml in "
                                       rf"{re.escape(str(out))} \(File too large; .* MB free there\); free disk "
                                       r"space, then run again into a new or empty train\.output_dir$"):
        # train_config.yaml, the run's first file, is larger (with capsys, pytest's own capture file is limited too)
        with file_size_limit(600):
            train(cfg(corpus, out, "schedule.max_steps=1"), inputs)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    assert check_inputs(cfg(corpus, out, "schedule.max_steps=1")).resume_dir is None


def test_what_a_start_killed_while_writing_its_config_leaves_is_named_as_a_start(corpus, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_FILE).write_text("pid 1 on host gone\n")
    (out / ".train_config.yaml.tmp").write_text("model:")
    with pytest.raises(VmmError, match=r"holds the start of a run that saved no checkpoint \(\.train_config\.yaml"
                                       r"\.tmp\); delete it"):
        check_inputs(cfg(corpus, out))


def test_an_output_dir_through_a_link_to_a_missing_folder_is_refused_by_the_check(corpus, tmp_path):
    """--check said ok, then the run stopped with 'cannot create ... (File exists)'."""
    link = tmp_path / "scratch"
    link.symlink_to(tmp_path / "unmounted" / "runs")
    for out in (link, link / "run"):
        with pytest.raises(VmmError, match=rf"^train\.output_dir: cannot create {re.escape(str(out))} "
                                           rf"\({re.escape(str(link))} is a link to {re.escape(str(tmp_path))}/"
                                           r"unmounted/runs, which does not exist\); create that folder"):
            check_inputs(cfg(corpus, out))
    assert not (tmp_path / "unmounted").exists()


def test_a_run_continued_past_its_export_and_stopped_before_the_next_is_not_finished(four_steps, corpus, tmp_path,
                                                                                      monkeypatch):
    """Trained on from step 4 to 6, the export failed (a full disk): its message says to resume, and the resume said
    "done: the run is finished" with step 4's model in final/, the step-6 weights never exported."""
    from safetensors.torch import load_file

    from vmm.models.multimodal import VideoTextModel
    out = tmp_path / "run"
    shutil.copytree(four_steps, out)
    on_to_6 = cfg(corpus, out, "schedule.max_steps=6", "train.save_every=2", "train.resume=auto")

    def full_disk(*args):
        raise OSError(28, "No space left on device")
    with monkeypatch.context() as patch:
        patch.setattr(VideoTextModel, "save_pretrained", full_disk)
        with pytest.raises(VmmError, match=r"cannot write the final model .* resume with train\.resume=auto$"):
            train(on_to_6)
    assert loop.exported_step(out / "final") == 4 and loop.find_latest_checkpoint(out).name == "step_00000006"
    AcceleratorState._reset_state(True)
    assert train(on_to_6)["steps"] == 6  # exports step 6 without training
    assert loop.exported_step(out / "final") == 6
    exported = load_file(str(out / "final" / "model.safetensors"))
    saved = torch.load(out / "checkpoints" / "step_00000006" / "pytorch_model.bin", map_location="cpu")
    assert all(torch.equal(exported[k], saved[f"model.{k}"]) for k in exported)
    with pytest.raises(RunFinished):
        train(on_to_6)
