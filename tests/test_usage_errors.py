"""Command-line mistakes of the documented commands outside ``vmm`` itself are one ``error:`` line with status 2,
as docs/training.md and the README promise for every command."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv", [[], ["--config"], ["--config", "configs/pretrain/tiny.yaml", "--no-such-option"]])
def test_train_usage_mistake_is_one_line(argv, capsys):
    from vmm.train import main
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    out, err = capsys.readouterr()
    # argparse printed its usage block above the error: two lines, and no pointer to --help.
    assert out == "" and len(err.splitlines()) == 1 and err.startswith("error: ")
    assert "`python -m vmm.train --help` lists the options" in err


def _ship(*args, cwd):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "ship_checkpoint.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def test_ship_checkpoint_refuses_what_is_not_a_trainable_export(tmp_path):
    import vmm
    saved = vmm.save_pretrained(vmm.create_model("videomamba_tiny", depth=1, num_frames=2, img_size=32), tmp_path / "m")
    for source in (tmp_path / "missing", saved):  # a KeyError or FileNotFoundError traceback before
        done = _ship(source, tmp_path / "out", cwd=tmp_path)
        assert done.returncode == 2 and done.stdout == "", done.stderr
        assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"error: {source} is not a trainable-only")
    assert not (tmp_path / "out").exists()


def test_ship_checkpoint_usage(tmp_path):
    assert _ship("--help", cwd=tmp_path).returncode == 0
    wrong = _ship("only-one", cwd=tmp_path)
    assert wrong.returncode == 2 and wrong.stderr.startswith("error: expected 2 arguments")


# A value argparse took but the run could not use was a traceback (or a silent empty run) partway through a
# benchmark; each of these now stops before any work with one line naming the option.
BENCHMARK_MISTAKES = [
    ("scan_cpu.py", ["--rounds", "0"], "--rounds"),  # ValueError: min() of no timings
    ("scan_cpu.py", ["--naive-every", "0"], "--naive-every"),  # ZeroDivisionError
    ("cpu_encoder.py", ["--models", "tiny"], "--models"),  # VmmError traceback
    ("cpu_encoder.py", ["--models", "videomamba_tiny", "--baseline", "tiny"], "--baseline"),  # no baseline timed
    # a text-video model: a traceback after the models before it had been timed
    ("cpu_encoder.py", ["--models", "videomamba_tiny", "vmm_nano", "--baseline"], "--models"),
    ("encoder_speed.py", ["--sections", "encoder"], "--sections"),  # nothing run, empty tables written
    ("encoder_speed.py", ["--frames", "0"], "--frames"),
    ("encoder_accuracy.py", ["--batch", "0"], "--batch"),
    ("indexing.py", ["--video-dir", "{tmp}/missing"], "--video-dir"),  # VmmError traceback
    ("indexing.py", ["--video-dir", "{tmp}"], "--video-dir"),  # a run of 0 videos written as the result
    ("indexing.py", ["--workers", "0"], "--workers"),  # ZeroDivisionError
    ("indexing.py", ["--model", "nope"], "--model"),  # VmmError traceback after writing the videos
    ("indexing.py", ["--sizes", "20", "--skip", "indexing", "merge"], "--sizes"),  # ValueError traceback
    ("indexing.py", ["--skip", "indexing", "search", "merge"], "--skip"),  # an empty run written as the result
    ("train_throughput.py", ["--steps", "0"], "--steps"),  # every launched job failed
    ("train_throughput.py", ["--precision", "fp17"], "--precision"),
    ("nano_synthetic.py", ["--baseline", "{tmp}/missing"], "--baseline"),  # a traceback after the corpus
    ("kernel_sass.py", ["--tile", "3"], "--tile"),  # Triton CompilationError traceback
]


@pytest.mark.parametrize("script,argv,option", BENCHMARK_MISTAKES,
                         ids=[f"{s}-{' '.join(a)}" for s, a, _ in BENCHMARK_MISTAKES])
def test_benchmark_usage_mistake_is_one_line(script, argv, option, tmp_path):
    import os
    argv = [a.format(tmp=tmp_path) for a in argv]
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *argv, "--out", str(tmp_path / "out")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2 and done.stdout == "", done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"error: argument {option}: "), done.stderr
    assert not (tmp_path / "out").exists()
