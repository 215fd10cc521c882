"""Ctrl-C and SIGTERM stop a training run at once: every process, one line, nothing left running, resumable.

Real runs of the tiny recipe in subprocesses: ``python -m vmm.train`` and ``accelerate launch`` with 2 CPU
processes (gloo). A terminal's Ctrl-C goes to its foreground process group. Under the launcher that group is the
launcher alone (torchrun starts every process in a session of its own) and the launcher passes the signal on.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.test_train_loop import REPO, TINY, ctrl_c_a_run, metrics

# The repo first, then what the caller had: a PYTHONPATH holding the packages themselves (decord on a machine
# where they live outside the interpreter) was dropped, and the launched run could not import them.
PYTHONPATH = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))

# the launcher beside this Python (a virtual environment), else the one on PATH (a system Python)
_BESIDE = Path(sys.executable).with_name("accelerate")
ACCELERATE = str(_BESIDE) if _BESIDE.is_file() else shutil.which("accelerate") or "accelerate"
# Port 0 (accelerate picks a free one): the default 29500 is shared with any other job on the host.
TWO_PROCESSES = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--main_process_port", "0",
                 "--mixed_precision", "no", "--dynamo_backend", "no"]


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture
def corpus(tmp_path) -> Path:
    """19 training clips, a copy per test: the stuck-read tests replace its videos."""
    from vmm.data.synthetic import generate_corpus
    root = tmp_path / "corpus"
    generate_corpus(root, num_videos=24, seed=0, size=32, seconds=1.0, workers=1)
    return root


class StuckMount:
    """The corpus's videos replaced by FIFOs that nobody writes: a decoder that opens one waits for ever, like a
    read from a dead network mount. ``blocked()`` says when one does (a FIFO opens for writing, without waiting,
    only while a reader has it open); the write end is kept open, so the reader then waits in its read."""

    def __init__(self, corpus: Path):
        self.videos, self.aside = corpus / "videos", corpus.with_name(corpus.name + "_aside")
        self.writer = None

    def block(self) -> None:
        shutil.move(self.videos, self.aside)
        self.videos.mkdir()
        for video in self.aside.iterdir():
            os.mkfifo(self.videos / video.name)

    def blocked(self) -> bool:
        for fifo in self.videos.iterdir():
            try:
                self.writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                return True
            except OSError as e:
                assert e.errno == errno.ENXIO, e  # no reader yet
        return False

    def restore(self) -> None:
        if self.writer is not None:
            os.close(self.writer)
            self.writer = None
        if self.aside.is_dir():
            shutil.rmtree(self.videos)
            shutil.move(self.aside, self.videos)

    def once_checkpointed(self):
        """A ``ready`` test: after the first checkpoint, block the videos and wait for a decoder to be stuck."""
        from vmm.training.loop import find_latest_checkpoint

        def ready(out: Path) -> bool:
            if find_latest_checkpoint(out) is None:
                return False
            if not self.aside.is_dir():
                self.block()
            return self.blocked()
        return ready


def processes_of(out: Path) -> list[int]:
    """Every process whose command line names ``out``: the launcher, the training processes, their workers
    (forked, so with the same command line), wherever their sessions are."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    if str(out).encode() in f.read():
                        found.append(int(entry.name))
            except OSError:
                pass
    return found


def assert_all_gone(out: Path, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while (left := processes_of(out)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes of the run outlived it by {within:g} s: {left}"


def launch(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [ACCELERATE, "launch", *TWO_PROCESSES, "-m", "vmm.train", "--config", TINY,
            f"data.train=[{{'anno': '{corpus / 'train.json'}', 'root': '{corpus}'}}]", f"train.output_dir={out}",
            "data.batch_size=2", "train.progress=False", "loss.uta=0", *extra]


def signal_a_launched_run(corpus: Path, out: Path, sig: int, ready, *extra: str) -> tuple[int, str, list[str]]:
    """Launch 2 processes, and once a checkpoint exists and ``ready(out)``, send ``sig`` to the launcher's group
    (a terminal's Ctrl-C; a job scheduler's SIGTERM). Returns the launcher's status, stderr and stdout lines; fails
    if the run has not exited 25 s after the signal (the launcher itself gives up after 30 s and kills its
    processes)."""
    from vmm.training.loop import find_latest_checkpoint
    env = dict(os.environ, PYTHONPATH=PYTHONPATH, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    stderr_file = out.with_name(out.name + ".stderr")
    with open(stderr_file, "w") as stderr:
        proc = subprocess.Popen(launch(corpus, out, "schedule.max_steps=100000", "data.num_workers=1",
                                       "train.save_every=1", *extra),
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300  # two processes import torch and build the model on 2 loaded cores
        while not (any(line.startswith("training ") for line in lines) and find_latest_checkpoint(out) is not None
                   and ready(out)):
            assert proc.poll() is None, f"the run ended before the signal:\n{stderr_file.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the run did not get ready within 300 s"
            time.sleep(0.1)
        os.killpg(proc.pid, sig)
        try:
            status = proc.wait(timeout=25)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the run was still running 25 s after the signal:\n"
                                 f"{stderr_file.read_text()[-3000:]}") from None
        assert_all_gone(out)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in processes_of(out):
            os.kill(pid, signal.SIGKILL)
        reader.join(timeout=5)
    return status, stderr_file.read_text(), lines


def assert_only_the_launchers_traceback(stderr: str) -> None:
    """accelerate's launcher reports a signal with torchrun's SignalException traceback (nothing turns it off);
    no process of the run may add one, or an 'Exception ignored' report."""
    assert f'File "{REPO / "vmm"}' not in stderr and "Exception ignored" not in stderr, stderr[-4000:]
    raised = set(re.findall(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit))\b", stderr, re.M))
    assert raised <= {"torch.distributed.elastic.multiprocessing.api.SignalException"}, stderr[-4000:]


@pytest.mark.slow
def test_ctrl_c_stops_two_processes_at_once_with_a_decoder_stuck_in_a_read(corpus, tmp_path):
    """Both processes held the Ctrl-C until a batch came, the one waiting for its peer sat in a gloo collective,
    and after 30 s the launcher killed them: no line, and a run that seemed to hang. Now both stop at once, one
    line is printed (by process 0), nothing is left running, and the hint works from the last checkpoint."""
    from vmm.training.loop import find_latest_checkpoint
    out, stuck = tmp_path / "run", StuckMount(corpus)
    try:
        status, stderr, _ = signal_a_launched_run(corpus, out, signal.SIGINT, stuck.once_checkpointed())
    finally:
        stuck.restore()
    assert status == 1, stderr[-3000:]  # accelerate's, whatever its processes return (see docs/training.md)
    assert stderr.count("interrupted; resume with train.resume=auto\n") == 1, stderr[-3000:]
    assert_only_the_launchers_traceback(stderr)
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))  # every line complete
    checkpoint = find_latest_checkpoint(out)
    step = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
    resumed = subprocess.run(launch(corpus, out, "train.resume=auto", f"schedule.max_steps={step + 1}"), cwd=REPO,
                             env=dict(os.environ, PYTHONPATH=PYTHONPATH, OMP_NUM_THREADS="1"), capture_output=True,
                             text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {checkpoint} at step {step}" in resumed.stdout
    assert [r["step"] for r in metrics(out)] == list(range(1, step + 2))


@pytest.mark.slow
def test_sigterm_stops_two_processes_with_one_line(corpus, tmp_path):
    """A job scheduler's SIGTERM killed every process without a word; now it is stopped like a Ctrl-C."""
    status, stderr, _ = signal_a_launched_run(corpus, tmp_path / "run", signal.SIGTERM, lambda out: True)
    assert status == 1, stderr[-3000:]
    assert stderr.count("stopped by SIGTERM; resume with train.resume=auto\n") == 1, stderr[-3000:]
    assert_only_the_launchers_traceback(stderr)


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.parametrize("sig, line", [(signal.SIGINT, "interrupted; resume with train.resume=auto\n"),
                                       (signal.SIGTERM, "stopped by SIGTERM; resume with train.resume=auto\n")])
def test_a_stop_ends_two_gpu_processes_when_one_waits_on_nccl(corpus, tmp_path, sig, line):
    """On GPUs the processes talk over NCCL: with one decoder stuck, its peer waits in C code (``.item()`` on an
    all-reduce that never completes), where Python runs no signal handler. On two H200s it outlived its peer by
    40 s without its line until the watcher thread of vmm/training/stop.py; now both end at once."""
    import torch
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA GPUs")
    out, stuck = tmp_path / "run", StuckMount(corpus)
    try:
        status, stderr, stdout = signal_a_launched_run(corpus, out, sig, stuck.once_checkpointed())
    finally:
        stuck.restore()
    assert any(" on 2 process(es), device cuda:" in text for text in stdout), stdout  # GPUs, so NCCL
    assert status == 1, stderr[-3000:]
    assert stderr.count(line) == 1, stderr[-3000:]
    assert_only_the_launchers_traceback(stderr)


def test_ctrl_c_does_not_wait_for_a_decoder_stuck_in_a_read(corpus, tmp_path):
    """The Ctrl-C used to be held until the batch came, which was never: only a second Ctrl-C ended the run."""
    stuck = StuckMount(corpus)
    try:
        status, stderr = ctrl_c_a_run(corpus, tmp_path / "run", "train.save_every=1", ready=stuck.once_checkpointed())
    finally:
        stuck.restore()
    assert status == 130, stderr[-3000:]
    assert "Traceback" not in stderr and stderr.splitlines()[-1] == "interrupted; resume with train.resume=auto"


def test_sigterm_stops_a_run_like_ctrl_c(corpus, tmp_path):
    """SIGTERM used to kill the process silently (status -15); now: status 143 and the resume hint."""
    from vmm.training.loop import find_latest_checkpoint
    status, stderr = ctrl_c_a_run(corpus, tmp_path / "run", "train.save_every=2", sig=signal.SIGTERM,
                                  ready=lambda out: find_latest_checkpoint(out) is not None)
    assert status == 143, stderr[-3000:]
    assert "Traceback" not in stderr and stderr.splitlines()[-1] == "stopped by SIGTERM; resume with train.resume=auto"


def test_a_stop_inside_a_folder_swap_waits_for_its_end(tmp_path):
    """A signal that arrives while a complete checkpoint or final model replaces the old one ends the process
    right after the swap, never between its two renames."""
    marker = tmp_path / "swapped"
    script = (f"import os, signal, sys\n"
              f"from vmm.training import stop\n"
              f"with stop.on_signals(lambda s: f'stopped by signal {{s}}'):\n"
              f"    with stop.deferred():\n"
              f"        os.kill(os.getpid(), signal.SIGTERM)\n"
              f"        open({str(marker)!r}, 'w').write('done')\n"
              f"    print('not reached')\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=PYTHONPATH))
    assert (proc.returncode, proc.stdout, proc.stderr) == (128 + signal.SIGTERM, "", "stopped by signal 15\n")
    assert marker.read_text() == "done"


def test_checkpoint_save_clears_what_an_interrupted_save_left(tmp_path):
    """Hidden folders of saves a stop cut short are removed by the next save; saving a step again replaces it."""
    from accelerate import Accelerator

    from vmm.training.loop import TrainerState, save_checkpoint
    root = tmp_path / "checkpoints"
    for stale in (".tmp_step_00000003", ".old_step_00000002"):
        (root / stale).mkdir(parents=True)
        (root / stale / "model.bin").write_bytes(b"partial")
    accelerator = Accelerator(cpu=True)
    save_checkpoint(accelerator, tmp_path, TrainerState(global_step=5), keep_last=2)
    assert sorted(p.name for p in root.iterdir()) == ["step_00000005"]
    save_checkpoint(accelerator, tmp_path, TrainerState(global_step=5, samples=40), keep_last=2)
    assert sorted(p.name for p in root.iterdir()) == ["step_00000005"]
    assert json.loads((root / "step_00000005" / "trainer_state.json").read_text())["samples"] == 40
    # keep_last=2 keeps the two newest and deletes the older ones, by step (10 sorts after 9, zero-padded)
    for step in (6, 9, 10):
        save_checkpoint(accelerator, tmp_path, TrainerState(global_step=step), keep_last=2)
    assert sorted(p.name for p in root.iterdir()) == ["step_00000009", "step_00000010"]


def run_under_on_signals(body: str, sig: int, wait: float) -> tuple[int, str, str, float]:
    """Run ``body`` (which prints "ready" once it is where the signal should land) inside ``stop.on_signals`` in
    a subprocess, send it ``sig``, and return its status, stdout, stderr and the seconds it took to exit."""
    script = ("import os, signal, sys, time\n"
              "from vmm.training import stop\n"
              "with stop.on_signals(lambda s: f'stopped by signal {s}'):\n"
              + textwrap.indent(textwrap.dedent(body), "    "))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=PYTHONPATH, PYTHONUNBUFFERED="1"))
    try:
        assert proc.stdout.readline() == "ready\n", proc.stderr.read()
        start = time.monotonic()
        proc.send_signal(sig)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {wait:g} s after the signal") from None
        return proc.returncode, proc.stdout.read(), proc.stderr.read(), time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_stop_reaches_a_main_thread_waiting_in_c_code():
    """Python runs a handler only when the main thread is back in Python; a process of a GPU run waiting in
    .item() for an NCCL collective whose peer had stopped never was (2 H100s: it outlived its peer until killed,
    without the line). A C call that waits with the signal retried inside stands in for it here: a TCPStore get
    of a key that never comes."""
    status, out, err, took = run_under_on_signals("""
        import datetime
        from torch.distributed import TCPStore
        store = TCPStore("127.0.0.1", 0, 1, True, timeout=datetime.timedelta(seconds=120))
        print("ready")
        store.get("never")
    """, signal.SIGTERM, wait=20)
    assert (status, err) == (128 + signal.SIGTERM, "stopped by signal 15\n"), err
    assert took < 10


def test_a_forked_childs_signal_does_not_stop_its_parent():
    """A forked child (a decoding worker) inherits the wakeup fd that tells the watcher thread of a signal; a
    signal only the child receives must not stop the parent."""
    status, out, err, took = run_under_on_signals("""
        pid = os.fork()
        if pid == 0:
            os.kill(os.getpid(), signal.SIGTERM)  # before its own set-up a worker ignores it: its parent decides
            time.sleep(0.2)
            os._exit(0)
        os.waitpid(pid, 0)
        time.sleep(stop.GRACE_S + 1)
        print("ready")
        time.sleep(60)
    """, signal.SIGINT, wait=20)
    assert (status, out, err) == (128 + signal.SIGINT, "", "stopped by signal 2\n"), err


def test_a_workers_sigchld_inside_the_stop_handler_is_not_reported_as_a_crash():
    """A scheduler's SIGTERM to the process group kills the decoding workers too. When their SIGCHLD came while
    Python was entering the SIGTERM handler, Python ran torch's SIGCHLD handler at the handler's first bytecode,
    before it switched that handler off, and its "DataLoader worker (pid N) is killed by signal" traceback replaced
    the one line (1 run in about 5 of the two-process SIGTERM test). That moment is reproduced here exactly: a
    worker really killed, and the SIGCHLD handler called from a profiler hook at the entry of the stop handler."""
    script = textwrap.dedent("""
        import multiprocessing, os, signal, sys, time
        from torch.utils.data import DataLoader
        from vmm.training import stop
        from vmm.training.data import batches
        with stop.on_signals(lambda s: "stopped"):
            loaded = batches(DataLoader(list(range(8)), batch_size=2, num_workers=1))
            next(loaded)
            handler = signal.signal(signal.SIGCHLD, lambda *_: None)  # the real SIGCHLD would land anywhere
            (worker,) = multiprocessing.active_children()
            os.kill(worker.pid, signal.SIGKILL)
            while open(f"/proc/{worker.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
                time.sleep(0.01)
            time.sleep(0.1)  # its SIGCHLD is handled by now, by the lambda

            def reported(frame):
                try:
                    handler(signal.SIGCHLD, frame)
                except RuntimeError as e:
                    return str(e)
                return None
            inside = []

            def at_entry(frame, event, arg):
                if event == "call" and frame.f_code is stop._stop.__code__:
                    sys.setprofile(None)
                    inside.append(reported(frame))
            stop._owner = -1  # so that the handler returns at once instead of ending this process
            sys.setprofile(at_entry)
            stop._stop(signal.SIGTERM, None)
            sys.setprofile(None)
            print(inside[0])
            print(reported(sys._getframe()))  # anywhere else, torch's report of a crashed worker stands
            os._exit(0)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=PYTHONPATH))
    assert done.returncode == 0, done.stderr[-3000:]
    inside, elsewhere = done.stdout.splitlines()
    assert inside == "None"
    assert "DataLoader worker (pid" in elsewhere and "is killed by signal" in elsewhere, elsewhere


def test_a_checkpoint_reaches_the_disk_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    """Without an fsync the rename could reach the disk before the data: after a power loss resume=auto found a
    checkpoint of empty files, refused as damaged, where the previous one was whole."""
    from accelerate import Accelerator

    from vmm.training import loop
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(loop.os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                      real_fsync(fd))[1])
    monkeypatch.setattr(loop.os, "replace", lambda a, b: (events.append(("replace", str(a))), real_replace(a, b))[1])
    loop.save_checkpoint(Accelerator(cpu=True), tmp_path, loop.TrainerState(global_step=3), keep_last=2)
    final = tmp_path / "checkpoints" / "step_00000003"
    tmp = str(final.with_name(".tmp_step_00000003"))
    swap = events.index(("replace", tmp))
    flushed = {path for kind, path in events[:swap] if kind == "fsync"}
    written = {str(p).replace(str(final), tmp) for p in final.rglob("*")}
    assert len(written) >= 2 and written | {tmp} <= flushed, (written, flushed)
    assert ("fsync", str(final.parent)) in events[swap:]  # the rename itself
