"""The examples in the index package's docstrings and in docs/index.md run as written."""
import doctest
import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULES = ["index", "index.distributed", "index.encoder", "index.discovery", "index.decode", "index.pool", "index.store", "index.catalog",
           "index.progress", "index.library", "index.ingest", "index.reader"]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_docs_page_examples(tmp_path, monkeypatch):
    blocks = BLOCK.findall((REPO / "docs" / "index.md").read_text())
    assert len(blocks) >= 8
    monkeypatch.chdir(tmp_path)
    exec(compile("\n\n".join(blocks), "docs/index.md", "exec"), {"__name__": "docs_index"})
