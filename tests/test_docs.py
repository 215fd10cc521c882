"""Every ```python block in README.md and docs/*.md runs as written (each file's blocks in one namespace)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


@pytest.mark.parametrize("doc", [d for d in DOCS if BLOCK.search(d.read_text())], ids=lambda d: d.name)
def test_python_examples_run(doc, tmp_path):
    code = "\n\n".join(BLOCK.findall(doc.read_text()))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, f"{doc.name} example failed:\n{result.stderr[-3000:]}"


def test_every_export_is_documented():
    """Every name of the `vmm`, `index` and `retrieval` APIs is on a docs page; every function is called in an
    example that the test above runs."""
    import inspect

    import index
    import retrieval
    import vmm
    text = "\n".join(d.read_text() for d in DOCS)
    code = "\n".join(block for d in DOCS for block in BLOCK.findall(d.read_text()))
    unnamed, unrun = [], []
    for module in (vmm, index, retrieval):
        for name in module.__all__:
            if name.startswith("__"):
                continue
            word = re.compile(rf"\b{re.escape(name)}\b")
            if not word.search(text):
                unnamed.append(f"{module.__name__}.{name}")
            elif inspect.isfunction(getattr(module, name)) and not word.search(code):
                unrun.append(f"{module.__name__}.{name}")
    assert unnamed == [] and unrun == [], f"not in the docs: {unnamed}; in no ```python example: {unrun}"
