"""The CPU-runnable parts of the benchmark scripts: what they compute from their timings and what they write."""
import argparse
import ast
import importlib.util
import json
import os
import re
import resource
import runpy
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

import pytest

from tests.videos import write_moving_square

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
REPO = BENCHMARKS.parent
PARSE_ARGS = argparse.ArgumentParser.parse_args


@pytest.fixture
def load(monkeypatch):
    """Imports a benchmark script as a module, as running it would (its folder first on sys.path)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))

    def load_script(name):
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load_script


def test_scan_cpu_row_takes_both_directions_and_compares_forward_with_forward(load):
    scan_cpu = load("scan_cpu")
    # Ti's target is 15 ms a call: the forward meets it, the reverse does not, and every layer runs both.
    row = scan_cpu.summary("videomamba_tiny", {False: [14.0, 20.0], True: [16.0, 18.0]}, [140.0, 150.0], 1e-7)
    assert row["ms_per_call_forward"] == 14.0 and row["ms_per_call_reverse"] == 16.0
    assert row["meets_target"] is False
    assert row["speedup_vs_naive"] == 10.0  # the naive loop is timed forward only
    assert row["naive_median_ms"] == 145.0 and row["naive_calls"] == 2  # the baseline's spread had no record
    assert row["encoder_scan_ms"] == (14.0 + 16.0) * 24 and row["scan_calls_per_clip"] == 48
    # The naive loop against the reverse direction when that was the faster: 140 / 12 flattered it as 11.7x.
    faster_reverse = scan_cpu.summary("videomamba_tiny", {False: [14.0], True: [12.0]}, [140.0], 1e-7)
    assert faster_reverse["speedup_vs_naive"] == 10.0 and faster_reverse["meets_target"] is True


def test_encoder_speed_without_matplotlib_writes_no_plot_and_says_so(load, monkeypatch, tmp_path, capsys):
    encoder_speed = load("encoder_speed")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError, as when missing
    stale = tmp_path / "encoder_speed.png"
    stale.write_bytes(b"a plot of an earlier run")
    rows = [{"model": "videomamba_m/fused", "frames": 8, "clips_per_s": 600.0}]
    # A ModuleNotFoundError traceback after the whole GPU run, in place of the ratios and the closing line.
    assert encoder_speed.plot({"gpu": "H100", "encoders": rows}, stale) is False
    assert not stale.exists()  # it would not match the encoder_speed.json written beside it
    assert "matplotlib is not installed" in capsys.readouterr().out


def test_cpu_encoder_records_no_target_as_none_not_met(load, monkeypatch, tmp_path):
    cpu_encoder = load("cpu_encoder")
    # One layer of the real model at the real 8x224x224 input: the timing loop, the rows and the file as run.
    monkeypatch.setattr(cpu_encoder.vmm, "create_model", partial(cpu_encoder.vmm.create_model, depth=1))
    out = tmp_path / "cpu.json"
    monkeypatch.setattr(sys, "argv", ["cpu_encoder.py", "--models", "videomamba_small_vision", "--baseline",
                                      "--repeats", "1", "--out", str(out)])
    cpu_encoder.main()
    (row,) = json.loads(out.read_text())["rows"]
    # The model has no target: "meets_target": true claimed one met.
    assert row["model"] == "videomamba_small_vision" and row["target_s"] is None and row["meets_target"] is None
    assert row["seconds"] > 0 and "speedup_vs_naive" not in row


def test_cpu_encoder_times_the_baseline_in_rounds_with_the_candidate_and_records_their_spread(load, monkeypatch,
                                                                                             tmp_path):
    cpu_encoder = load("cpu_encoder")
    create_model, backends = cpu_encoder.vmm.create_model, []

    def one_layer(*args, **kwargs):  # the real model at the real input, one layer deep, its scan choices recorded
        model = create_model(*args, depth=1, **kwargs)
        choose = model.set_scan_backend
        model.set_scan_backend = lambda name: (backends.append(name), choose(name))
        return model
    monkeypatch.setattr(cpu_encoder.vmm, "create_model", one_layer)
    out = tmp_path / "cpu.json"
    monkeypatch.setattr(sys, "argv", ["cpu_encoder.py", "--models", "videomamba_small_vision", "--baseline",
                                      "videomamba_small_vision", "--repeats", "2", "--out", str(out)])
    cpu_encoder.main()
    # The baseline was one timing taken after all of the candidate's: the load of another moment, and no spread.
    assert backends == ["reference", "naive_loop"] * 3  # a warm-up each, then two rounds of both
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    for key in ("seconds", "baseline_seconds"):
        assert 0 < row[f"{key}_min"] <= row[key] <= row[f"{key}_max"]
    # of the medians as timed: the row's are rounded to the ms
    assert row["speedup_vs_naive"] == pytest.approx(row["baseline_seconds"] / row["seconds"],
                                                    rel=0.01 + 0.001 / row["seconds"])
    assert len(result["load_average_1min"]) == 2 and result["logical_cores"] == os.cpu_count()


def test_a_result_the_run_cannot_finish_writing_leaves_the_recorded_file_as_it_was(load, monkeypatch, tmp_path):
    recorded = tmp_path / "scan_cpu.json"
    recorded.write_text('{"recorded": true}\n')

    def file_size_limit():  # 256 bytes, as a full disk: a write past it fails with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (256, 256))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    done = subprocess.run([sys.executable, str(BENCHMARKS / "scan_cpu.py"), "--models", "videomamba_tiny", "--rounds",
                           "1", "--out", str(recorded)], capture_output=True, text=True, timeout=300,
                          preexec_fn=file_size_limit)
    # It was a traceback, and a JSON cut at the limit in place of the recorded result.
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: cannot write {recorded} (File too large); the run's numbers are printed")
    assert '"model": "videomamba_tiny"' in done.stdout
    assert recorded.read_text() == '{"recorded": true}\n' and list(tmp_path.iterdir()) == [recorded]
    # A Ctrl-C after the new text is written, before it replaces the old: the old stays, nothing is left beside it.
    common = load("common")
    monkeypatch.setattr(common.os, "replace", lambda *paths: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        common.write_result(recorded, '{"cut": ')
    assert recorded.read_text() == '{"recorded": true}\n' and list(tmp_path.iterdir()) == [recorded]


@pytest.mark.slow
@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="copies the layout of the virtual environment it runs in")
def test_train_throughput_runs_several_processes_without_an_accelerate_script_beside_python(tmp_path):
    # The same environment through an interpreter whose folder holds no `accelerate` script, as pip install
    # --user or a system Python leaves it: every multi-process job was a FileNotFoundError traceback.
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    shutil.copy(Path(sys.prefix) / "pyvenv.cfg", env)
    (env / "bin" / "python").symlink_to(Path(sys.executable).resolve())
    (env / "lib").symlink_to(Path(sys.prefix) / "lib")
    out = tmp_path / "throughput.json"
    done = subprocess.run([str(env / "bin" / "python"), str(BENCHMARKS / "train_throughput.py"), "--cpu", "--models",
                           "vmm_nano", "--stages", "2", "--processes", "2", "--batch-size", "1", "--steps", "1",
                           "--warmup", "0", "--out", str(out)], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:  # the failed job's whole output, which its row names, is what tells why
        logs = re.findall(r"whole output: (\S+?\.log)", done.stdout)
        pytest.fail(f"{done.stdout}\n{done.stderr[-2000:]}\n" + "".join(Path(f).read_text()[-4000:] for f in logs))
    (row,) = json.loads(out.read_text())["results"]
    assert row["processes"] == 2 and row["samples_per_s"] > 0 and row["device"].startswith("CPU: ")


def test_train_throughput_keeps_a_failed_jobs_whole_output_and_launches_on_a_free_port(load, monkeypatch, tmp_path):
    # The row kept only the launcher's last line, usually its own summary: why a job failed was lost. And every
    # multi-process job took the default port 29500, shared with any other job on the host.
    mod = load("train_throughput")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    launched = []

    def failing(cmd, **kwargs):
        launched.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="Traceback (most recent call last):\n"
                                           "RuntimeError: Connection closed by peer\nE1127 launcher summary line\n")
    monkeypatch.setattr(mod.subprocess, "run", failing)
    args = argparse.Namespace(batch_size=1, steps=1, warmup=0, precision="no", cpu=True, grad_checkpointing=False)
    row = mod.launch(args, "vmm_nano", 2, 2, tmp_path / "result.json")
    assert row["error"].startswith("E1127 launcher summary line (whole output: ")
    (log,) = tmp_path.glob("train_throughput_vmm_nano_stage2_2p_*.log")
    assert str(log) in row["error"] and "RuntimeError: Connection closed by peer" in log.read_text()
    (cmd,) = launched
    # a port of its own, not "0": accelerate before 1.7 passed 0 on to torchrun, and the job hung
    port = int(cmd[cmd.index("--main_process_port") + 1])
    assert 1024 <= port < 65536 and port != 29500


@pytest.mark.slow
def test_indexing_prints_and_records_its_ratios_against_the_baselines_of_the_run(tmp_path):
    out = tmp_path / "indexing.json"
    run = subprocess.run([sys.executable, str(BENCHMARKS / "indexing.py"), "--videos", "2", "--video-seconds", "2",
                          "--video-size", "192x144", "--skip", "search", "merge", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    ix, ratios = result["indexing"], result["ratios"]
    model = ix["model"]["clips_per_s"]
    assert ratios["indexing_model_vs_color_histogram"] == pytest.approx(
        model / ix["color_histogram"]["clips_per_s"], abs=1e-3)
    assert ratios["indexing_model_vs_decode_only"] == pytest.approx(model / ix["decode_only"]["clips_per_s"], abs=1e-3)
    assert (f"ratios: {ratios['indexing_model_vs_color_histogram']:.2f}x the colour-histogram baseline's clips/s, "
            f"{ratios['indexing_model_vs_decode_only']:.2f}x the decode-only rate") in run.stdout
    assert "the median of 3 rounds" in run.stdout and len(ix["model"]["clips_per_s_runs"]) == ix["repeats"] == 3


def test_indexing_search_speedup_is_against_flat_at_the_same_size_and_threads(load):
    indexing = load("indexing")

    def row(n, index, threads, p50):
        return {"n": n, "index": index, "faiss_threads": threads, "batch32_p50_ms": p50}
    # "IDMap2,Flat" is what VectorStore names an exact index (the test before used a bare "Flat", as the code did).
    search = [row(10_000, "IDMap2,Flat", 2, 1.0), row(1_000_000, "IDMap2,Flat", 2, 40.0),
              row(1_000_000, "IVF4096,Flat", 2, 2.0), row(1_000_000, "IVF4096,Flat", 1, 3.0)]
    # The 1-thread IVF row has no 1-thread Flat row to compare with (a 1M flat scan on one thread is skipped).
    assert indexing.ratios({"search": search}) == {
        "search_IVF4096,Flat_n1000000_2threads_speedup_vs_flat": 20.0}


def test_indexing_search_records_each_ivf_rows_speedup_over_the_flat_rows_of_its_run(load, monkeypatch):
    indexing = load("indexing")
    # auto picks IVF from 5000 vectors here, so a library of 10k runs the Flat and the IVF rows in seconds.
    monkeypatch.setattr(indexing, "resolve_factory", partial(indexing.resolve_factory, flat_max=5_000))
    rows = indexing.bench_search(argparse.Namespace(sizes=[10_000], ivf_train_per_list=16))
    flat = {r["faiss_threads"]: r["batch32_p50_ms"] for r in rows if "nprobe" not in r}
    ivf = [r for r in rows if "nprobe" in r]
    assert ivf and {r["faiss_threads"] for r in ivf} == set(flat)
    # Every IVF row's ratio was missing: the Flat rows were looked for as "Flat", the store names them IDMap2,Flat.
    assert indexing.ratios({"search": rows}) == {
        indexing._speedup_key(r): round(flat[r["faiss_threads"]] / r["batch32_p50_ms"], 2) for r in ivf}


@pytest.mark.parametrize("script, args, folder", [
    ("cpu_encoder", [], False), ("scan_cpu", [], False), ("indexing", ["--quick"], False),
    ("train_throughput", ["--cpu"], False), ("nano_synthetic", ["--baseline", "vmm/weights/vmm_nano"], False),
    ("encoder_speed", ["--quick"], True), ("encoder_accuracy", [], True)])
def test_an_output_the_run_could_not_write_is_refused_before_it_starts(load, monkeypatch, tmp_path, capsys, script,
                                                                        args, folder):
    module = load(script)
    monkeypatch.chdir(BENCHMARKS.parent)
    in_the_way = tmp_path / "a file"
    in_the_way.write_text("kept")
    # A file where the output's folder must go, and a folder given for a file or a file for a folder: each was a
    # traceback at the very end, after minutes of timing, and the run's numbers were lost.
    for out in (in_the_way / "result", in_the_way if folder else tmp_path):
        monkeypatch.setattr(sys, "argv", [f"{script}.py", *args, "--out", str(out)])
        with pytest.raises(SystemExit) as exited:
            module.main()
        err = capsys.readouterr().err
        assert exited.value.code == 2 and err.startswith("error: argument --out: ") and err.count("\n") == 1, err
    assert in_the_way.read_text() == "kept" and sorted(tmp_path.iterdir()) == [in_the_way]


def parsed_arguments(monkeypatch, script: str, argv: list[str]) -> argparse.Namespace:
    """What ``python benchmarks/SCRIPT ARGV`` parses its command line into; the run itself stops there."""
    class Parsed(Exception):
        pass

    def stop(self, args=None, namespace=None):
        raise Parsed(PARSE_ARGS(self, args, namespace))
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    monkeypatch.setattr(sys, "argv", [script, *argv])
    with pytest.raises(Parsed) as parsed:
        runpy.run_path(str(REPO / script), run_name="__main__")
    return parsed.value.args[0]


def documented_commands():
    """(where, script, arguments) of every ``python benchmarks/...`` command line of the scripts' docstrings, the
    README and docs/, continuation lines joined, ``[optional]`` brackets dropped."""
    texts = [(path.name, ast.get_docstring(ast.parse(path.read_text())) or "") for path in BENCHMARKS.glob("*.py")]
    texts += [(path.name, path.read_text()) for path in [REPO / "README.md", *(REPO / "docs").glob("*.md")]]
    for where, text in texts:
        for line in text.replace("\\\n", " ").splitlines():
            found = re.match(r"\s*`?(?:PYTHONPATH=\S+ )?python (benchmarks/\w+\.py)([^`]*)", line)
            if found:
                yield where, found[1], shlex.split(re.sub(r"[][]", " ", found[2]), comments=True)


def test_every_documented_command_line_parses(load, monkeypatch):
    load("common")  # the scripts' folder on sys.path, as running one puts it
    commands = list(documented_commands())
    assert len({script for _, script, _ in commands}) >= 10
    for where, script, argv in commands:
        try:
            parsed_arguments(monkeypatch, script, argv)
        except SystemExit:
            pytest.fail(f"{where}: python {script} {shlex.join(argv)} is refused")


def test_readme_training_step_row_is_what_its_command_times(load, monkeypatch):
    load("common")
    row = next(line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("| GPU training step"))
    what, _, where = row.strip("| ").split(" | ")
    script, *argv = shlex.split(where)
    # The row is batch 32, as every recorded run; the command's default was 16, so running it timed another step.
    assert int(re.search(r"batch (\d+)", what)[1]) == parsed_arguments(monkeypatch, script, argv).train_batch


@pytest.mark.slow  # each imports torch in a new process
@pytest.mark.parametrize("settings, says", [
    ({}, "sees no CUDA GPU to build for; run it on the GPU host, or set CUDA_ARCH"),
    ({"CUDA_ARCH": "90"}, "no mamba_ssm-*.tar.gz in "),
    ({"PYTHON": f"{sys.executable} -S"}, "cannot import torch; set PYTHON"),  # no site-packages, as a bare python3
])
def test_build_mamba_ssm_refuses_a_host_or_folder_it_cannot_build_from_in_one_line(tmp_path, settings, says):
    sdists = tmp_path / "sdist"
    sdists.mkdir()
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "",
           "BUILD_DIR": str(tmp_path / "build"), **settings}
    # A Python traceback (no GPU), or a page of ls and tar errors (no sdist) with a build still running behind it.
    done = subprocess.run(["bash", str(BENCHMARKS / "build_mamba_ssm.sh"), str(sdists)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and says in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == [sdists] and not any(sdists.iterdir())  # nothing built or created


@pytest.mark.parametrize("option, value", [("--max-wall", "0"), ("--max-wall", "-5"), ("--budget", "nan"),
                                           ("--budget", "-1")])
def test_encoder_speed_refuses_a_time_limit_that_measures_nothing_in_one_line(load, tmp_path, capsys, option, value):
    encoder_speed = load("encoder_speed")
    # --max-wall 0 skipped every encoder (on a GPU host: after the scan section) and wrote empty tables over --out.
    with pytest.raises(SystemExit) as exited:
        encoder_speed.main([option, value, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: argument {option}: {value!r} is not a number of seconds > 0 ")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("script", ["encoder_speed", "encoder_accuracy"])
def test_a_gpu_benchmark_on_a_host_without_cuda_is_a_usage_error_in_one_line(tmp_path, script):
    # It exited with status 1 and a bare "encoder_speed.py needs a CUDA GPU", unlike every other usage error of the
    # scripts (one `error:` line, status 2). No GPU is visible to the run, whatever the host.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(BENCHMARKS / f"{script}.py"), "--out", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == "", (done.returncode, done.stdout, done.stderr)
    assert done.stderr.startswith(f"error: {script}.py needs a CUDA GPU") and done.stderr.count("\n") == 1, done.stderr
    assert not any(tmp_path.iterdir())


def test_indexing_times_the_model_and_its_baselines_on_the_same_files_and_frames(load, tmp_path):
    indexing = load("indexing")
    import vmm
    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    for v in range(2):
        write_moving_square(str(videos / f"video{v:03d}.mp4"), 1.0)
    # A folder of one's own (--video-dir) with a subfolder: the indexing runs took it in, decoding alone did not,
    # and 16 frames a clip for the model against 8 for decoding alone and the colour histogram.
    shutil.copy(videos / "video000.mp4", videos / "sub" / "copy.mp4")
    model = tmp_path / "nano16"
    vmm.create_model("vmm_nano", vision={"num_frames": 16}).save_pretrained(model)
    ix = indexing.bench_indexing(argparse.Namespace(video_dir=str(videos), model=str(model), batch_size=2,
                                                    workers=None, repeats=2), tmp_path / "work")
    assert ix["videos"] == 2 and ix["color_histogram"]["files"] == ix["model"]["files"] == 2
    assert ix["decode_only"]["clips"] == ix["color_histogram"]["clips"] == ix["model"]["clips"] == 2
    assert ix["decode_only"]["frames"] == ix["model"]["frames"] == 16
    # Each row was one pass: a number of one moment of the load, with no spread beside it.
    for key in ("decode_only", "color_histogram", "model"):
        rates = ix[key]["clips_per_s_runs"]
        assert len(rates) == 2 and ix[key]["clips_per_s"] == min(rates)  # of two rounds, the slower middle one


def test_benchmark_paths_read_a_leading_tilde_as_the_home_folder(load, monkeypatch, tmp_path):
    common = load("common")
    monkeypatch.setenv("HOME", str(tmp_path))
    # A quoted "~/..." or --out=~/... (which no shell expands) wrote into a folder named "~" in the current one.
    assert common.output_path(common.parser("x.py", "x"), "~/results/r.json") == tmp_path / "results" / "r.json"
    (tmp_path / "videos").mkdir()
    args = parsed_arguments(monkeypatch, "benchmarks/indexing.py", ["--video-dir", "~/videos", "--model", "~/m"])
    assert (args.video_dir, args.model) == (str(tmp_path / "videos"), str(tmp_path / "m"))
    args = parsed_arguments(monkeypatch, "benchmarks/nano_synthetic.py", ["--baseline", "~/b", "--corpus", "~/c"])
    assert (args.baseline, args.corpus) == (str(tmp_path / "b"), str(tmp_path / "c"))


@pytest.mark.slow
def test_nano_synthetic_leaves_no_regenerated_corpus_behind(load, monkeypatch, tmp_path):
    nano_synthetic = load("nano_synthetic")
    import vmm.data.synthetic
    generate = vmm.data.synthetic.generate_corpus
    # 60 videos in place of the real run's 1500: the same code path, in seconds.
    monkeypatch.setattr(vmm.data.synthetic, "generate_corpus",
                        lambda out, num_videos, seed: generate(out, num_videos=60, seed=seed))
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    out = tmp_path / "nano.json"
    nano = str(REPO / "vmm" / "weights" / "vmm_nano")
    monkeypatch.setattr(sys, "argv", ["nano_synthetic.py", "--baseline", nano, "--out", str(out)])
    nano_synthetic.main()
    result = json.loads(out.read_text())
    assert result["corpus"].startswith("synthetic seed 0") and result["frame_mean_baseline"]["pair_accuracy"]["pairs"]
    assert not any(temp.iterdir())  # each run left its corpus of 1500 videos in the temp folder


@pytest.mark.parametrize("script", ["cpu_encoder", "scan_cpu", "indexing", "nano_synthetic", "train_throughput",
                                    "kernel_sass", "encoder_speed", "encoder_accuracy"])
def test_a_ctrl_c_during_a_run_is_one_line_and_status_130(load, monkeypatch, capsys, script):
    load("common")

    def interrupted(self, args=None, namespace=None):
        raise KeyboardInterrupt  # as a Ctrl-C minutes into the run
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", interrupted)
    monkeypatch.setattr(sys, "argv", [f"{script}.py"])
    # It was a traceback (vmm's own commands and the retrieval scripts say "interrupted").
    with pytest.raises((SystemExit, KeyboardInterrupt)) as exited:
        runpy.run_path(str(BENCHMARKS / f"{script}.py"), run_name="__main__")
    assert exited.type is SystemExit and exited.value.code == 130
    assert capsys.readouterr().err == "interrupted\n"


@pytest.mark.parametrize("argv, message", [
    (["--clips", "10"], "argument --clips: 10 clips make fewer than 20 files, of which the filter keeps one; pass at "
                        "least 400"),
    (["--queries", "0"], "argument --queries: '0' is not a whole number >= 1"),
])
def test_search_many_refuses_a_library_too_small_or_no_queries_in_one_line(argv, message, tmp_path):
    """Its own option checks (it writes no result file, so the shared usage-error table does not take it)."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "search_many.py"), *argv], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2 and done.stdout == "" and done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"error: {message}"), done.stderr
