"""Fixtures for the docstring examples that `pytest` runs in vmm/, index/ and retrieval/ (tests/ has its own)."""
import shutil
import tempfile

import pytest


@pytest.fixture(autouse=True)
def _doctest_temp_folder(request):
    # Docstring examples make their folders with tempfile.mkdtemp(), as a user would, and never delete them;
    # pointing tempfile at a folder of our own removes them after each example. The folder stays directly
    # under the system temp folder so paths stay short (the distributed examples open Unix sockets there).
    if not isinstance(request.node, pytest.DoctestItem):
        yield
        return
    folder = tempfile.mkdtemp(prefix="vmm-doctest-")
    before = tempfile.tempdir
    tempfile.tempdir = folder
    try:
        yield
    finally:
        tempfile.tempdir = before
        shutil.rmtree(folder, ignore_errors=True)
