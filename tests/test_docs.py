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


# The indexer's writes: docs/index.md names them and tells users to change a library through build_library and
# remove_paths instead (they take no library lock), so no example calls them.
NOT_FOR_EXAMPLES = {"Catalog.commit", "Catalog.set_setting", "Catalog.prune_tombstones"}


def test_every_public_method_is_documented():
    """Every public method and property of the exported classes, and of the models and encoders the public functions
    build, is named on a docs page; every method is called in an example that test_python_examples_run runs."""
    import inspect

    import index
    import retrieval
    import vmm
    from vmm.embedder import VideoTextEncoder
    from vmm.models.multimodal import VideoTextModel
    from vmm.models.videomamba import VideoMamba
    from vmm.tokenizer import Tokenizer
    text = "\n".join(d.read_text() for d in DOCS)
    code = "\n".join(block for d in DOCS for block in BLOCK.findall(d.read_text()))
    classes = [getattr(m, n) for m in (vmm, index, retrieval) for n in m.__all__ if inspect.isclass(getattr(m, n))]
    unnamed, unrun = [], []
    for cls in {*classes, VideoTextModel, VideoMamba, VideoTextEncoder, Tokenizer}:
        for name, member in vars(cls).items():
            method = isinstance(member, (classmethod, staticmethod)) or inspect.isfunction(member)
            if name.startswith("_") or name == "forward" or not (method or isinstance(member, property)):
                continue  # forward is model(x), which the examples call
            if not re.search(rf"\b{name}\b", text):
                unnamed.append(f"{cls.__name__}.{name}")
            elif method and not re.search(rf"\.{name}\(", code) and f"{cls.__name__}.{name}" not in NOT_FOR_EXAMPLES:
                unrun.append(f"{cls.__name__}.{name}")
    assert unnamed == [] and unrun == [], f"not in the docs: {sorted(unnamed)}; in no ```python example: {sorted(unrun)}"


def test_readme_multimodal_example_scores_deterministically():
    """The README's scoring example is what a user copies to score videos: its model must be in eval mode (it came
    back in training mode, so dropout changed the similarity it prints on every call)."""
    import torch
    namespace = {}
    exec(BLOCK.findall((REPO / "README.md").read_text())[0], namespace)
    model, video, ids, mask = (namespace[name] for name in ("model", "video", "ids", "mask"))
    with torch.no_grad():
        scores = [model.similarity(model.encode_video(video, per_frame=True), model.encode_text(ids, mask))
                  for _ in range(2)]
    assert torch.equal(*scores)
