"""vmm installed from its wheel, not from the checkout: what a user of `pip install` gets."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_target_install_finds_its_model_configs(tmp_path):
    """`pip install --target DIR` puts the model configs in DIR/share, where the registry did not look: vmm_nano
    was an unknown model there."""
    wheels, target, source = tmp_path / "wheels", tmp_path / "site", tmp_path / "source"
    # Built from a copy: building in the checkout leaves build/ and egg-info there.
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", ".device", "build", "*.egg-info",
                                                                "__pycache__", ".pytest_cache", "demo_output"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source),
                    "-w", str(wheels)], check=True, capture_output=True, timeout=300)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                    *map(str, wheels.glob("*.whl"))], check=True, capture_output=True, timeout=300)
    code = "import vmm; m = vmm.create_model('vmm_nano'); print(vmm.__file__.startswith(sys.argv[1]), m.model_name)"
    r = subprocess.run([sys.executable, "-c", "import sys; " + code, str(target)], capture_output=True, text=True,
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)}, timeout=300)
    assert r.returncode == 0 and r.stdout == "True vmm_nano\n", r.stderr
