"""Two CPU processes (gloo) under the real launcher: what one process sees alone must reach the user once; a run
learns, resumes bit-exactly and exports a model that indexes and searches."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_train_interrupt import ACCELERATE, TWO_PROCESSES, assert_all_gone
from tests.test_train_loop import REPO, TINY


@pytest.fixture
def corpus(tmp_path) -> Path:
    from vmm.data.synthetic import generate_corpus
    root = tmp_path / "corpus"
    generate_corpus(root, num_videos=24, seed=0, size=32, seconds=1.0, workers=1)
    return root


@pytest.mark.slow
def test_corrupt_data_of_one_process_stops_both_with_its_error_line(corpus, tmp_path):
    """Process 1 alone drew corrupt samples past data.max_retries: it printed nothing (errors are process 0's to
    print), and process 0, waiting for it in the contrastive all-gather, died with gloo's "Connection closed by
    peer" traceback. So the run ended with no word of the data. Now every process stops with that error, printed
    once."""
    from vmm.training.data import EpochPlan
    entries = json.loads((corpus / "train.json").read_text())
    # Process 0's first batch decodes; everything else (process 1's batch and its replacements) is corrupt.
    first = EpochPlan([len(entries)], [1.0], batch_size=2, world=2, seed=0).rank_batches(0, 0)[0]
    keep = {unit for _, _, unit in first}
    for i, entry in enumerate(entries):
        if i not in keep:
            (corpus / entry["video"]).write_bytes(b"\x00" * 500)
    out = tmp_path / "run"
    cmd = [ACCELERATE, "launch", *TWO_PROCESSES, "-m", "vmm.train", "--config", TINY,
           f"data.train=[{{'anno': '{corpus / 'train.json'}', 'root': '{corpus}'}}]", f"train.output_dir={out}",
           "data.batch_size=2", "data.max_retries=1", "schedule.max_steps=3", "train.progress=False", "loss.uta=0"]
    run = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"),
                         capture_output=True, text=True, timeout=400)
    assert_all_gone(out)
    assert run.returncode == 1, run.stderr[-3000:]  # accelerate's, whatever its processes return
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "[process 1] 2 corrupt samples in a row" in errors[0], run.stderr[-3000:]
    assert "Connection closed by peer" not in run.stderr and "[rank0]" not in run.stderr, run.stderr[-3000:]
    assert not (out / "checkpoints").exists()


def _launch(corpus: Path, out: Path, *extra: str) -> None:
    cmd = [ACCELERATE, "launch", *TWO_PROCESSES, "-m", "vmm.train", "--config", TINY,
           f"data.train=[{{'anno': '{corpus / 'train.json'}', 'root': '{corpus}'}}]", f"train.output_dir={out}",
           "data.batch_size=2", "schedule.max_steps=8", "train.save_every=3", "train.keep_last=5",
           "train.progress=False", *extra]
    run = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"),
                         capture_output=True, text=True, timeout=400)
    assert run.returncode == 0 and "on 2 process(es)" in run.stdout, run.stderr[-3000:]


def _vmm(*args: str) -> str:
    run = subprocess.run([sys.executable, "-m", "vmm", *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


@pytest.mark.slow
def test_two_processes_learn_resume_bit_exactly_and_export_a_model_that_searches(corpus, tmp_path):
    """The whole path a user takes: 2 gloo processes through accelerate launch, a resume from a mid-epoch checkpoint
    (each process's RNG, the optimizer and the epoch plan restored: the same losses to the bit and the same
    weights), then vmm index and vmm search on the exported model."""
    import torch
    _launch(corpus, tmp_path / "a")
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9)) and {"vtc", "vtm", "mlm", "uta"} <= set(rows[0])
    assert (rows[-1]["loss"] + rows[-2]["loss"]) / 2 < (rows[0]["loss"] + rows[1]["loss"]) / 2 - 0.5, rows
    step3 = tmp_path / "a" / "checkpoints" / "step_00000003"
    assert json.loads((step3 / "trainer_state.json").read_text())["micro_in_epoch"] == 3  # of 4: mid-epoch
    _launch(corpus, tmp_path / "b", f"train.resume={step3}")
    resumed = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    keys = ("step", "epoch", "lr", "loss", "vtc", "vtm", "mlm", "uta", "temp")
    assert [{k: r[k] for k in keys} for r in resumed] == [{k: r[k] for k in keys} for r in rows[3:]]
    a, b = (torch.load(tmp_path / run / "checkpoints/step_00000008/pytorch_model.bin") for run in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    library, final = tmp_path / "library", tmp_path / "b" / "final"
    _vmm("index", str(corpus / "videos"), "--library", str(library), "--model", str(final), "--window", "0",
         "--workers", "1", "--device", "cpu", "--quiet")
    caption = json.loads((corpus / "train.json").read_text())[0]["caption"]
    hits = json.loads(_vmm("search", str(library), caption, "-k", "5", "--device", "cpu", "--json"))
    videos = {str(p) for p in (corpus / "videos").glob("*.mp4")}
    assert len(hits) == 5 and all(h["path"] in videos for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
