"""vmm.atomic, the one crash-safe file replacement, and the writers that use it: each flushes the new file's data
before the rename and the folder after it (a rename of unflushed data can leave an empty file after a power cut),
keeps a replaced file's mode, follows a symlink, and leaves the old file and no temporary behind on a failure."""
import json
import os
import stat

import pytest

from vmm.atomic import atomic_write_bytes, atomic_write_file, atomic_write_text


@pytest.fixture
def disk(monkeypatch):
    """The fsyncs (by the path their descriptor names) and renames made, in order."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst, **kwargs):
        events.append(("replace", os.path.realpath(src), os.path.realpath(dst)))
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def assert_durable(events, target):
    """``target`` was renamed into place from a file flushed before the rename, and its folder flushed after."""
    target = os.path.realpath(target)
    renames = [i for i, e in enumerate(events) if e[0] == "replace" and e[2] == target]
    assert renames, f"{target} was not renamed into place: {events}"
    at = renames[-1]
    assert ("fsync", events[at][1]) in events[:at], f"data not flushed before the rename: {events}"
    assert ("fsync", os.path.dirname(target)) in events[at + 1:], f"folder not flushed after the rename: {events}"


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


# -- the helper ------------------------------------------------------------------------------------------------
def test_a_writer_that_fails_midway_leaves_the_old_file_whole_and_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old, whole\n")

    def half_then_fail(tmp):
        with open(tmp, "w") as f:
            f.write('{"half": ')
        raise ValueError("the writer failed")

    with pytest.raises(ValueError, match="the writer failed"):
        atomic_write_file(str(path), half_then_fail)
    assert path.read_text() == "old, whole\n"
    assert os.listdir(tmp_path) == ["state.json"]


def test_an_interrupt_midway_leaves_no_temporary_either(tmp_path):
    path = tmp_path / "scores.npz"

    def interrupted(tmp):
        open(tmp, "wb").close()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_file(str(path), interrupted)
    assert os.listdir(tmp_path) == []


def test_a_write_is_flushed_renamed_and_leaves_only_the_file(tmp_path, disk):
    path = tmp_path / "a.txt"
    atomic_write_text(str(path), "é\n")
    assert path.read_bytes() == "é\n".encode() and os.listdir(tmp_path) == ["a.txt"]
    assert_durable(disk, path)


def test_a_new_file_has_the_umask_mode_and_a_replaced_one_keeps_its_own(tmp_path, umask_027):
    new = tmp_path / "new.json"
    atomic_write_bytes(str(new), b"1")
    assert mode(new) == 0o640  # as open() makes it; tempfile.mkstemp's 0600 would lock the group out
    kept = tmp_path / "kept.json"
    kept.write_text("0")
    os.chmod(kept, 0o604)
    atomic_write_bytes(str(kept), b"1")
    assert kept.read_text() == "1" and mode(kept) == 0o604


def test_a_writer_that_makes_its_file_anew_gets_the_mode_anyway(tmp_path, umask_027):
    """safetensors and FAISS take a file name and create the file themselves, 0600 for safetensors."""
    path = tmp_path / "w.bin"

    def private(tmp):
        os.remove(tmp)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600))

    atomic_write_file(str(path), private)
    assert mode(path) == 0o640


def test_a_symlink_keeps_pointing_at_its_target_which_gets_the_new_content(tmp_path):
    target = tmp_path / "real" / "report.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "report.json"
    link.symlink_to(target)
    atomic_write_bytes(str(link), b"new")
    assert link.is_symlink() and target.read_text() == "new"
    assert os.listdir(target.parent) == ["report.json"]


# -- the writers that use it -----------------------------------------------------------------------------------
def test_the_index_state_writer_keeps_the_mode_and_a_symlink(tmp_path):
    """index.store.atomic_write_bytes (index-state.json, staged batches) replaced a symlink by a file, and a file
    by one with the umask's mode."""
    from index.store import atomic_write_bytes as store_write
    path = tmp_path / "index-state.json"
    path.write_text("{}")
    os.chmod(path, 0o600)
    store_write(str(path), b'{"generation": 2}')
    assert mode(path) == 0o600
    target = tmp_path / "elsewhere.json"
    target.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    store_write(str(link), b"[]")
    assert link.is_symlink() and target.read_text() == "[]"


def test_the_faiss_file_is_flushed_before_its_rename(tmp_path, disk):
    import faiss
    import numpy as np

    from index.store import VectorStore
    store = VectorStore(faiss.IndexIDMap2(faiss.IndexFlatIP(4)), "Flat")
    store.add(np.eye(4, dtype=np.float32), np.arange(4))
    store.save(str(tmp_path / "v.faiss"))
    assert_durable(disk, tmp_path / "v.faiss")
    assert VectorStore.load(str(tmp_path / "v.faiss"), "Flat").ntotal == 4


def test_a_training_run_file_is_flushed_before_its_rename(tmp_path, disk):
    """metrics.jsonl, cut at a resume, and train_config.yaml were renamed unflushed: a power cut could leave an
    empty metrics.jsonl, every earlier step's metrics lost."""
    from vmm.training.loop import _write_text_atomic
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n')
    _write_text_atomic(path, '{"step": 1}\n{"step": 2}\n')
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n' and os.listdir(tmp_path) == ["metrics.jsonl"]
    assert_durable(disk, path)


def test_a_run_folder_with_a_stopped_rewrites_temporary_is_the_start_of_a_run(tmp_path):
    """A run killed while rewriting metrics.jsonl leaves metrics.jsonl.tmp.PID: the next run says to delete the
    start of a run, not that the folder holds someone else's files."""
    from vmm.errors import VmmError
    from vmm.training.config import TrainConfig
    from vmm.training.loop import check_output_dir
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    (out / "metrics.jsonl.tmp.4242").write_text('{"st')
    (out / ".train_config.yaml.tmp").write_text("mo")  # an earlier vmm's temporary
    cfg = TrainConfig()
    cfg.train.output_dir = str(out)
    with pytest.raises(VmmError, match="holds the start of a run that saved no checkpoint"):
        check_output_dir(cfg, steps_per_epoch=1)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(VmmError, match="is not empty"):
        check_output_dir(cfg, steps_per_epoch=1)


def test_an_evaluation_report_is_flushed_before_its_rename(tmp_path, disk):
    """retrieval.report.atomic_write (--json, --markdown, --save-scores, benchmark results) never flushed."""
    from retrieval.report import atomic_write
    path = tmp_path / "out" / "report.json"
    atomic_write(path, lambda f: f.write(json.dumps({"dataset": "x"})))
    assert json.loads(path.read_text()) == {"dataset": "x"} and os.listdir(path.parent) == ["report.json"]
    assert_durable(disk, path)


def test_a_librarys_model_file_rename_is_flushed(tmp_path, disk):
    """model.json's data was flushed but not its folder: the rename could be lost to a power cut, and the library
    then recorded no model."""
    from retrieval.library import _write_model_file
    _write_model_file(str(tmp_path), "color-histogram", None, 8)
    assert json.loads((tmp_path / "model.json").read_text()) == {"model": "color-histogram", "checkpoint": None,
                                                                 "frames": 8}
    assert os.listdir(tmp_path) == ["model.json"]
    assert_durable(disk, tmp_path / "model.json")


def test_a_saved_model_folder_is_flushed_and_keeps_its_files_modes(tmp_path, disk, umask_027):
    """save_pretrained flushed each file but not the folder after its renames, and gave a replaced file the
    umask's mode (a model chmod'ed 0600 became group-readable on the next save)."""
    import vmm
    model = vmm.create_model("videomamba_tiny", depth=1, num_frames=2, img_size=32)
    folder = vmm.save_pretrained(model, tmp_path / "m")
    assert {mode(folder / n) for n in ("config.json", "model.safetensors")} == {0o640}
    os.chmod(folder / "model.safetensors", 0o600)
    disk.clear()
    vmm.save_pretrained(model, folder)
    for name in ("config.json", "model.safetensors"):
        assert_durable(disk, folder / name)
    assert mode(folder / "model.safetensors") == 0o600 and mode(folder / "config.json") == 0o640
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    assert vmm.from_pretrained(folder) is not None
