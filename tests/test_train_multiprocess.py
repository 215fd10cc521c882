"""Two CPU processes (gloo) under the real launcher: what one process sees alone must reach the user once."""
from __future__ import annotations

import json
import os
import subprocess
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
