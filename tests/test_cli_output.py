"""The real `vmm` process when its output cannot be written or it is interrupted while starting: one line on
stderr and an exit status, never a traceback, and the work done stays done."""
import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import videos
from tests.conftest import terminal_sigint
from tests.tiny_model import save_tiny_model

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    root = tmp_path_factory.mktemp("output")
    save_tiny_model(root / "model")
    (root / "vids").mkdir()
    videos.write_red_green_square(root / "vids")
    (root / "vids" / "a.json").write_text(json.dumps([{"video": f"{c}.mp4", "caption": c}
                                                      for c in ("red", "green", "square")]))
    return root


def vmm(*args, stdout=subprocess.PIPE, shell_suffix="", env=None):
    command = [sys.executable, "-m", "vmm.cli", *map(str, args)]
    if shell_suffix:
        command = ["bash", "-c", " ".join(f"'{a}'" for a in command) + shell_suffix]
    return subprocess.run(command, stdout=stdout, stderr=subprocess.PIPE, text=True, env={**ENV, **(env or {})},
                          timeout=300)


def one_error_line(r, *needles):
    err = r.stderr.strip()
    assert r.returncode == 2 and err.startswith("error: ") and "\n" not in err, (r.returncode, err)
    for needle in needles:
        assert needle in err, err


@needs_dev_full
def test_a_full_stdout(lib):
    with open("/dev/full", "w") as full:
        r = vmm("index", lib / "vids", "--library", lib / "lib", "--model", lib / "model", "--quiet",
                "--workers", "0", stdout=full)
        one_error_line(r, "cannot write to standard output", "No space left")
        for extra in ([], ["--json"]):
            one_error_line(vmm("search", lib / "lib", "red", *extra, stdout=full), "No space left")
        r = vmm("eval", "msrvtt", "--annotations", lib / "vids" / "a.json", "--videos", lib / "vids", "--model",
                lib / "model", "--workers", "0", "--device", "cpu", "--no-progress", "--json", lib / "report.json",
                stdout=full)
        one_error_line(r, "No space left")
    assert (lib / "report.json").is_file()  # the report file is still written
    r = vmm("search", lib / "lib", "red", "--json")  # the index finished before its summary failed
    assert r.returncode == 0 and r.stdout.count('"rank"') == 3


def test_a_closed_stdout(lib):
    r = vmm("search", lib / "missing", "red", shell_suffix=" >&-")
    one_error_line(r, "standard output is closed")


def test_python_dash_m_vmm():
    # for an environment whose scripts folder is not on PATH: "No module named vmm.__main__", status 1
    from vmm import __version__
    r = subprocess.run([sys.executable, "-m", "vmm", "--version"], capture_output=True, text=True, env=ENV, timeout=300)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"vmm {__version__}\n", "")


def test_a_closed_stderr(lib):
    # print(file=sys.stderr) with stderr closed printed the error on stdout, among the results
    r = vmm("search", lib / "missing", "red", shell_suffix=" 2>&-")
    assert (r.returncode, r.stdout) == (2, "")


def test_paths_a_non_utf8_locale_cannot_encode(tmp_path):
    # In a Latin-1 locale the table of a file named with a snowman was a UnicodeEncodeError traceback, status 1.
    video = videos.write_solid(str(tmp_path / "snow ☃.mp4"), videos.WHITE, seconds=1)
    from vmm.cli import main
    assert main(["index", video, "--library", str(tmp_path / "lib"), "--model", "color-histogram", "--quiet",
                 "--workers", "0"]) == 0
    r = vmm("search", tmp_path / "lib", "--video", video, env={"PYTHONIOENCODING": "latin-1"})
    assert r.returncode == 0 and r.stderr == "" and "snow \\u2603.mp4" in r.stdout, r


def test_sigterm_is_one_line(lib, tmp_path):
    # SIGTERM (a job scheduler, `timeout`) ended the command on the spot without a word, and without the clean-up
    # a Ctrl-C runs. Reading a FIFO, vmm eval waits at a known place for the signal.
    fifo = tmp_path / "annotations.json"
    os.mkfifo(fifo)
    p = subprocess.Popen([sys.executable, "-m", "vmm.cli", "eval", "msrvtt", "--annotations", str(fifo), "--videos",
                          str(lib / "vids"), "--workers", "0", "--device", "cpu"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 120
    while True:  # opening the FIFO's other end succeeds once vmm eval has opened it
        try:
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.05)
    try:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=120)
    finally:
        os.close(writer)
    assert (p.returncode, out, err) == (128 + signal.SIGTERM, "", "stopped by SIGTERM\n")


def wait_for_main(p: subprocess.Popen) -> None:
    """Wait until ``vmm.cli.main`` runs in ``p``: it is what imports numpy (the parser), so numpy's library is
    mapped. Before main, Python itself is starting, where no program can turn a Ctrl-C into one word; a fixed delay
    after the start landed there on a loaded machine (a traceback of site.py or argparse)."""
    deadline = time.monotonic() + 120
    while "/numpy/" not in Path(f"/proc/{p.pid}/maps").read_text():
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.01)


def test_ctrl_c_while_starting(lib):
    # A Ctrl-C while torch is imported; a library's import may swallow one now and then, so several delays.
    results = []
    for delay in (0.0, 0.3, 0.6):
        p = subprocess.Popen([sys.executable, "-m", "vmm.cli", "encode", str(lib / "vids" / "red.mp4")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                             preexec_fn=terminal_sigint)
        wait_for_main(p)
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
        results.append((p.returncode, err.strip()))
    assert all("Traceback" not in err for _, err in results), results
    # -2: ended by the signal itself after the line (now and then, when it lands as the interpreter winds down);
    # a shell shows both as status 130.
    stopped = [(130, "interrupted"), (-signal.SIGINT, "interrupted")]
    assert any(r in stopped for r in results) and all(r in (*stopped, (0, "")) for r in results), results


def test_index_into_a_log_writes_plain_progress_lines_not_a_bar(lib, tmp_path):
    """With stderr not a terminal (a log file, a batch job), rich printed the bar's last frame as a line of bar
    characters above the summary; then, with no bar there, hours of indexing logged nothing. Now plain lines: the
    first update, one a minute, the last file; --quiet none."""
    r = vmm("index", lib / "vids", "--library", tmp_path / "lib", "--model", "color-histogram", "--workers", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("indexed 3 files (3 clips)"), (r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert lines and lines[-1].startswith("indexing: 3/3 files, 3 clips, "), r.stderr
    assert all(re.fullmatch(r"indexing: \d/3 files, \d clips, [\d.]+ clips/s, \d+:\d\d:\d\d elapsed.*", line)
               for line in lines), r.stderr
    (tmp_path / "more").mkdir()
    videos.write_solid(str(tmp_path / "more" / "grey.mp4"), (128, 128, 128))
    r = vmm("index", tmp_path / "more", "--library", tmp_path / "lib", "--workers", "0", "--quiet")
    assert r.returncode == 0 and r.stderr == "" and r.stdout.startswith("indexed 1 files (1 clips)"), r


OUT_OF_MEMORY = """
import resource, sys
import torch
from vmm.cli import main
used = int(next(line for line in open("/proc/self/status") if line.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (used + (256 << 20), resource.RLIM_INFINITY))
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="no /proc")
def test_out_of_memory_is_one_line():
    # torch's "DefaultCPUAllocator: can't allocate memory" ended `vmm encode --frames 64` on a machine without the
    # memory with a traceback and status 1, as if vmm had a bug; 256 MiB of room make any machine that machine.
    r = subprocess.run([sys.executable, "-c", OUT_OF_MEMORY, "encode", "--model", "videomamba_tiny", "--frames", "64",
                        "--threads", "1", "--device", "cpu"], capture_output=True, text=True, env=ENV, timeout=300)
    one_error_line(r, "error: out of memory (could not allocate ", " MiB more); ", "fewer --frames")
    assert r.stdout == ""


def test_a_deleted_current_folder(tmp_path):
    # A shell left in a folder deleted since (a rebuilt output folder): importing torch there ended the command with
    # "Intel oneMKL FATAL ERROR: Cannot load .../libtorch_cpu.so", and relative paths could not be resolved.
    (tmp_path / "gone").mkdir()
    r = subprocess.run(["bash", "-c", 'cd "$1" && rmdir "$1" && exec "$2" -m vmm.cli encode --model vmm_nano',
                        "-", str(tmp_path / "gone"), sys.executable], capture_output=True, text=True, env=ENV,
                       timeout=300)
    one_error_line(r, "the current folder", "no longer exists", "cd ")
    assert r.stdout == ""


def test_index_progress_in_a_log_names_each_rank(capsys):
    """Each rank of a multi-process run logs its own shard: unnamed, the lines of 8 ranks read as one run's."""
    from index.distributed import LaunchInfo
    from index.progress import ProgressUpdate
    from vmm.commands.index import _progress
    assert _progress(True, None) is False  # --quiet
    report = _progress(False, LaunchInfo(rank=1, world_size=2, local_rank=1, local_world_size=2))
    report(ProgressUpdate(2, 2, 3, 1.5, None))
    assert capsys.readouterr().err == "rank 1: indexing: 2/2 files, 3 clips, 2.0 clips/s, 0:00:01 elapsed\n"
