"""Messages a Python caller reads: VideoLibrary.create and load_classifier name their own arguments as well as the
command's options (they said only --model, --device, --checkpoint); `vmm demo --model NAME` offline gives a fix the
demo takes (it said --checkpoint, which it has not); and a synthetic corpus is flushed to the disk in the order
that lets meta.json vouch for its videos after a power cut."""
import json
import os
from pathlib import Path

import pytest

from retrieval import VideoLibrary
from vmm.classify import load_classifier
from vmm.errors import VmmError
from tests.test_atomic_review22 import disk  # noqa: F401 - the fixture recording fsyncs and renames


def test_create_names_its_arguments(tmp_path):
    with pytest.raises(VmmError, match=r"^no model given; pass model= \(--model\) a name such as vmm_nano, or "
                                       r"checkpoint= \(--checkpoint\) a weights file$"):
        VideoLibrary.create(tmp_path / "lib")
    with pytest.raises(VmmError, match=r"^device= \(--device\) tpu is not a device; pass cpu or cuda\[:N\]$"):
        VideoLibrary.create(tmp_path / "lib", model="vmm_nano", device="tpu")
    assert not (tmp_path / "lib").exists()


def test_load_classifier_names_its_arguments():
    with pytest.raises(VmmError, match=r"^checkpoint= \(--checkpoint\) is required for videomamba_tiny \(random "
                                       r"weights give meaningless labels\); pass the downloaded K400 file, e\.g\. "
                                       r"videomamba_m16_k400_f8_res224\.pth, or 'default'$"):
        load_classifier("videomamba_tiny")
    with pytest.raises(VmmError, match=r"^device= \(--device\) tpu is not a device"):
        load_classifier("vmm_nano", device="tpu")
    with pytest.raises(VmmError, match=r"^model= \(--model\) videomamba_m16_mm has no released weights .*; pass "
                                       r"checkpoint= \(--checkpoint\) a weights file"):
        load_classifier("videomamba_m16_mm")


def test_demo_offline_names_a_fix_the_demo_takes_and_index_keeps_its_checkpoint(tmp_path, monkeypatch, capsys):
    from vmm.cli import main
    from vmm.demo import DemoConfig, run_demo
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(VmmError) as refused:
        run_demo(DemoConfig(out_dir=tmp_path / "out", model="videomamba_m16_25m", device="cpu"))
    message = str(refused.value)
    assert message.startswith("videomamba_m16_25M_f8_res224.pth is not in the local Hugging Face cache"), message
    assert "--checkpoint" not in message
    assert message.endswith(".save_pretrained(DIR), and pass --model DIR (model=DIR); or leave --model out for the "
                            "shipped vmm_nano")
    assert not (tmp_path / "out").exists()
    (tmp_path / "videos").mkdir()
    assert main(["index", str(tmp_path / "videos"), "--library", str(tmp_path / "lib"), "--model",
                 "videomamba_m16_25m", "--quiet"]) == 2
    assert capsys.readouterr().err.rstrip().endswith(
        "and pass --checkpoint /path/to/videomamba_m16_25M_f8_res224.pth (or "
        "pretrained='/path/to/videomamba_m16_25M_f8_res224.pth')")


def test_a_corpus_is_flushed_before_meta_json_vouches_for_it(tmp_path, disk):
    """A power cut after unflushed renames can leave empty or cut videos under their final names, and an empty
    meta.json: the generator then took the folder for someone else's files on every later run (vmm demo included),
    or, with a whole meta.json, a corpus of broken videos for a finished one."""
    from vmm.data.synthetic import generate_corpus
    events = disk  # the fsyncs and renames, in order
    out = tmp_path / "corpus"
    generate_corpus(out, num_videos=4, seed=0, workers=1)  # in this process, where the patches apply
    out = os.path.realpath(out)
    meta = os.path.join(out, "meta.json")
    renames = {e[2]: i for i, e in enumerate(events) if e[0] == "replace"}
    videos = [os.path.join(out, entry["video"]) for entry in json.loads(Path(meta).read_text())["videos"]]
    assert len(videos) == 4 and all(v in renames for v in videos)
    for path in [*videos, meta]:
        at = renames[path]
        assert ("fsync", events[at][1]) in events[:at], f"{path} renamed unflushed: {events}"
    videos_flushed = events.index(("fsync", os.path.join(out, "videos")))
    assert max(renames[v] for v in videos) < videos_flushed < renames[meta], events
    assert ("fsync", out) in events[renames[meta] + 1:], events
