import contextlib
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"


def golden_files(marker: str) -> list:
    """The golden fixtures in the reference folder that hold a ``marker`` array (``sm/state_dict/`` for the
    classifier part of the d2 format, ``config_json`` for the multimodal format...), as pytest parameters: the
    parity tests run on every fixture of a format, not only on the ones named here."""
    import numpy as np
    found = []
    for path in sorted(REFERENCE.glob("videomamba_golden_*.npz")) if REFERENCE.is_dir() else []:
        with np.load(path, allow_pickle=False) as z:
            if any(k == marker or k.startswith(marker) for k in z.files):
                found.append(pytest.param(path, id=path.stem))
    # None found (no shared/ folder, or a fixture format renamed): one parameter that fails on load, where an
    # empty list would make pytest skip the parity tests without a word.
    return found or [pytest.param(REFERENCE / f"no videomamba_golden_*.npz holds {marker!r}", id="missing")]


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.fail(f"reference data not found at {REFERENCE} (the shared/ folder must sit beside the checkout)")
    return REFERENCE


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _torch_threads():
    """A command run in-process with --threads 1 (vmm encode, vmm classify) set torch's thread count for the rest
    of the session: every later test ran on one thread in the suite and on all cores alone."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture
def one_faiss_thread():
    """FAISS with one OpenMP thread: on a loaded 2-core machine its thread pool adds ~20 ms to every search."""
    import faiss
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps its state in a process-wide singleton: each training test starts and ends without one."""
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def terminal_sigint() -> None:
    """``preexec_fn`` for a child that stands for a command typed at a terminal, where Ctrl-C is never ignored: a
    test run started in the background of a non-interactive shell (``make test &``) hands SIGINT down ignored, and
    the command then rightly keeps it ignored, as under nohup."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """Within the block, writes that would grow a file past ``nbytes`` fail with EFBIG, as on a full disk or over
    a quota (Python ignores SIGXFSZ). A block, not a fixture: pytest reports a test's result before its fixtures'
    teardown, and with its output going to a file larger than the limit (``make test > log``) that report failed
    with "File too large" and ended the whole run (an INTERNALERROR)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
