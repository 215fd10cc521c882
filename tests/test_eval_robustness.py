"""`vmm eval` refuses bad options and output paths up front, never overwrites an input, and keeps its numbers.

Real generated videos, a tiny random-weight model folder (4 frames) and the real CLI; a bad option must give
one `error: ...` line with exit status 2 and leave every file as it was.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import retrieval.evaluate
from tests import videos
from tests.tiny_model import TINY, save_tiny_model
from vmm.cli import main
from vmm.errors import VmmError

RELEASED_25M = "videomamba_m16_25M_f8_res224.pth"  # the released file's name, which its weights are known by
TINY_224 = {**TINY, "vision": {**TINY["vision"], "img_size": 224, "num_frames": 8}}  # at the published size

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_robust")
    save_tiny_model(root / "model")
    vids = root / "vids"
    vids.mkdir()
    videos.write_red_green_square(vids)
    items = [{"video": "red.mp4", "caption": "A red screen."}, {"video": "green.mp4", "caption": "A green screen."},
             {"video": "square.mp4", "caption": "A square moves right."}]
    (root / "ok.json").write_text(json.dumps(items))
    (root / "missing.json").write_text(json.dumps([*items, {"video": "gone.mp4", "caption": "Nothing."}]))
    return root


def eval_args(data, *extra, annotations="ok.json", model=None, frames=4):
    return ["eval", "msrvtt", "--annotations", str(data / annotations), "--videos", str(data / "vids"),
            "--model", str(model or data / "model"), "--frames", str(frames), "--device", "cpu", "--workers", "0",
            "--no-progress", *extra]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture
def no_evaluation(monkeypatch):
    """Fail the test if the evaluation starts: these mistakes must be caught before any work."""
    def refuse(config):
        raise AssertionError("evaluate() ran although the command line was bad")
    monkeypatch.setattr(retrieval.evaluate, "evaluate", refuse)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ---------------------------------------------------------------------------------------------- finding 1: data loss
def test_json_over_the_annotation_file_is_refused_and_the_file_kept(data, tmp_path, capsys, no_evaluation):
    copy = tmp_path / "ok_copy.json"
    shutil.copy(data / "ok.json", copy)
    before = copy.read_bytes()
    assert main(eval_args(data, "--json", str(copy), annotations=copy)) == 2
    err = one_line_error(capsys)
    assert f"--json {copy}" in err and "the annotations (--annotations) file" in err
    assert copy.read_bytes() == before


@pytest.mark.parametrize("option", ["--save-scores", "--markdown", "--json"])
def test_output_over_an_evaluated_video_is_refused_and_the_video_kept(data, capsys, no_evaluation, option):
    before = snapshot(data / "vids")
    assert main(eval_args(data, option, str(data / "vids" / "red.mp4"))) == 2
    err = one_line_error(capsys)
    assert option in err and "red.mp4" in err and "video listed in the annotations" in err
    assert snapshot(data / "vids") == before


def test_output_over_a_missing_listed_video_is_refused(data, tmp_path, capsys, no_evaluation):
    # with --allow-missing the video is dropped, but a score file in its place would be read as it next time
    assert main(eval_args(data, "--allow-missing", "--save-scores", str(data / "vids" / "gone.mp4"),
                          annotations="missing.json")) == 2
    assert "video listed in the annotations" in one_line_error(capsys)
    assert not (data / "vids" / "gone.mp4").exists()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reopening /dev/fd/N of a pipe is Linux's")
def test_annotations_from_a_pipe_are_read_once_with_an_output(data, tmp_path, capsys):
    """--annotations <(jq ...) or /dev/stdin: the output check read the pipe first, and the evaluation then found it
    "empty; download it again". Its listed videos stay safe as existing files that no evaluation wrote."""
    import os
    pipes = []

    def piped() -> str:
        read, write = os.pipe()
        os.write(write, (data / "ok.json").read_bytes())
        os.close(write)
        pipes.append(read)
        return f"/dev/fd/{read}"

    try:
        out = tmp_path / "report.json"
        assert main(eval_args(data, "--json", str(out), annotations=piped())) == 0
        assert json.loads(out.read_text())["num_texts"] == 3
        before = snapshot(data / "vids")
        assert main(eval_args(data, "--json", str(data / "vids" / "red.mp4"), annotations=piped())) == 2
        assert "already exists and is not an evaluation output" in one_line_error(capsys)
        assert snapshot(data / "vids") == before
    finally:
        for read in pipes:
            os.close(read)


def test_existing_foreign_file_is_refused_but_a_previous_report_is_replaced(data, tmp_path, capsys):
    notes = tmp_path / "notes.md"
    notes.write_text("my own notes\n")
    assert main(eval_args(data, "--markdown", str(notes))) == 2
    err = one_line_error(capsys)
    assert f"--markdown {notes} already exists" in err and "delete it or choose another" in err
    assert notes.read_text() == "my own notes\n"

    outputs = ["--json", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md"),
               "--save-scores", str(tmp_path / "r.npz")]
    assert main(eval_args(data, *outputs)) == 0
    first = json.loads((tmp_path / "r.json").read_text())
    (tmp_path / "r.md").write_text((tmp_path / "r.md").read_text() + "stale line\n")
    assert main(eval_args(data, *outputs, "--rerank-k", "2")) == 0  # a second run replaces its own outputs
    second = json.loads((tmp_path / "r.json").read_text())
    assert (first["rerank_k"], second["rerank_k"]) == (128, 2) and first["emb"] == second["emb"]
    assert "stale line" not in (tmp_path / "r.md").read_text()
    assert np.load(tmp_path / "r.npz")["itc"].shape == (3, 3)


def test_a_report_through_a_symlink_or_into_a_fifo_keeps_the_link_and_the_fifo(data, tmp_path):
    """The report was renamed over the path: a symlink to the previous report became a plain file (its target
    left stale), and a FIFO or device node was replaced by a file (as root, /dev/full became one); reading a
    FIFO to check it was an earlier report would have blocked."""
    import os
    import stat
    import threading
    target = tmp_path / "reports" / "latest.json"
    assert main(eval_args(data, "--json", str(target))) == 0
    link = tmp_path / "report.json"
    link.symlink_to(target)
    assert main(eval_args(data, "--json", str(link), "--rerank-k", "2")) == 0
    assert link.is_symlink() and json.loads(target.read_text())["rerank_k"] == 2

    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    assert main(eval_args(data, "--json", str(fifo))) == 0
    reader.join(timeout=30)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and json.loads(received[0])["rerank_k"] == 128


# ---------------------------------------------------------------------------------------------- finding 2: wasted work
@pytest.mark.parametrize("case", ["directory", "parent is a file", "same path twice"])
def test_unwritable_output_is_refused_before_evaluating(data, tmp_path, capsys, no_evaluation, case):
    (tmp_path / "afile").write_text("x")
    extra = {"directory": ["--json", str(data / "vids")],
             "parent is a file": ["--save-scores", str(tmp_path / "afile" / "scores.npz")],
             "same path twice": ["--json", str(tmp_path / "r.out"), "--markdown", str(tmp_path / "r.out")]}[case]
    before = snapshot(data / "vids")
    assert main(eval_args(data, *extra)) == 2
    err = one_line_error(capsys)
    expected = {"directory": "is a directory", "parent is a file": "is a file, not a folder",
                "same path twice": "also the --json path"}[case]
    assert expected in err and extra[-2] in err
    assert snapshot(data / "vids") == before and (tmp_path / "afile").read_text() == "x"


def test_missing_output_folders_are_still_created(data, tmp_path):
    out = tmp_path / "results" / "deeper" / "r.json"
    assert main(eval_args(data, "--json", str(out))) == 0
    assert json.loads(out.read_text())["num_videos"] == 3


def test_a_write_that_fails_at_the_end_still_prints_the_metrics(data, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "results"
    folder.mkdir()
    real = retrieval.evaluate.evaluate

    def evaluate_then_break_the_folder(config):
        result = real(config)
        folder.rmdir()
        folder.write_text("the output folder became a file during the run")
        return result

    monkeypatch.setattr(retrieval.evaluate, "evaluate", evaluate_then_break_the_folder)
    assert main(eval_args(data, "--json", str(folder / "r.json"), "--save-scores", str(tmp_path / "s.npz"))) == 2
    captured = capsys.readouterr()
    assert "| rerank (ITM top-128) |" in captured.out and "3 videos and 3 texts evaluated" in captured.out
    err = captured.err.strip()
    assert err.startswith("error: cannot create") and str(folder) in err and "metrics are printed above" in err
    assert np.load(tmp_path / "s.npz")["itc"].shape == (3, 3)  # the other output was still written


# ---------------------------------------------------------------------------------------------- findings 3-7: messages
def test_missing_videos_name_the_cli_options(data, capsys):
    assert main(eval_args(data, annotations="missing.json")) == 2
    err = one_line_error(capsys)
    assert "1 of 4 videos" in err and "gone.mp4" in err
    assert "videos= (--videos)" in err and "allow_missing=True (--allow-missing)" in err


@pytest.mark.parametrize("extra, named", [
    (["--decode-timeout", "0"], "--decode-timeout"),
    (["--decode-timeout", "-5"], "--decode-timeout"),
    (["--decode-timeout", "nan"], "--decode-timeout"),
    (["--index", "ivf", "--nlist", "0"], "--nlist"),
    (["--index", "ivf", "--nprobe", "0"], "--nprobe"),
    (["--index", "ivf", "--nlist", "-3"], "--nlist"),
    (["--device", "bogus"], "device (--device) 'bogus'"),
    (["--device", "mps"], "device (--device) 'mps'"),
])
def test_bad_option_values_are_refused_naming_the_option(data, capsys, no_evaluation, extra, named):
    assert main(eval_args(data, *extra)) == 2
    assert named in one_line_error(capsys)


def test_another_datasets_test_file_is_refused_before_any_work(data, tmp_path, capsys):
    """msrvtt_ret_test1k.json evaluated as didemo was compared with DiDeMo's published row as comparable."""
    anno = tmp_path / "msrvtt_ret_test1k.json"
    shutil.copy(data / "ok.json", anno)
    for outputs in ([], ["--json", str(tmp_path / "r.json")]):  # caught by the output check or by the evaluation
        args = eval_args(data, *outputs, annotations=anno)
        args[args.index("msrvtt")] = "didemo"
        assert main(args) == 2
        assert one_line_error(capsys) == (f"error: annotation file {anno} is for msrvtt, not didemo; evaluate it as "
                                          "msrvtt, or pass the didemo test file didemo_ret_test.json")
    assert not (tmp_path / "r.json").exists()


def test_the_printed_difference_is_the_difference_of_the_printed_rows():
    """R@5 of 5 in 11 (45.4545) printed as 45.5 beside the paper's 58.1, and the difference as -12.7: the JSON
    delta (-12.65) was rounded a second time."""
    from retrieval.paper_numbers import paper_delta, paper_row
    from retrieval.report import format_markdown
    paper = paper_row("didemo", "videomamba_m16_25m")
    for n in range(12):
        for count in (11, 1003):  # 11 videos; the DiDeMo test set's size
            m = {"R@1": 100.0 * n / count, "R@5": 100.0 * 5 / 11, "R@10": 100.0 * (count - n) / count,
                 "MdR": 2.0, "MnR": 2.5, "count": count}
            rows = {"t2v": m, "v2t": m}
            report = {"dataset": "didemo", "model": "videomamba_m16_25m", "checkpoint": None, "num_videos": count,
                      "num_texts": count, "missing_count": 0, "frames": 8, "rerank_k": 128, "seconds": 1.0,
                      "device": "cpu", "emb": rows, "rerank": rows,
                      "index": {**rows, "type": "flat", "ann_recall@10": {"t2v": 1.0, "v2t": 1.0}},
                      "paper": paper, "delta": paper_delta(rows, paper)}
            table = {line.split(" | ")[0]: line.split(" | ") for line in format_markdown(report).splitlines()}
            rerank, published, difference = table["| rerank (ITM top-128)"], table["| paper (25M)"], table[
                "| rerank - paper"]
            for column in (1, 2, 3, 6, 7, 8):  # R@1/5/10 of both directions
                shown = round(float(rerank[column]) - float(published[column]), 1) + 0.0
                assert difference[column] == f"{shown:+.1f}", (n, count, column, rerank, published, difference)


def test_good_decode_timeout_and_ivf_options_still_run(data, tmp_path):
    out = tmp_path / "r.json"
    assert main(eval_args(data, "--decode-timeout", "30", "--index", "ivf", "--nlist", "1", "--nprobe", "1",
                          "--json", str(out))) == 0
    report = json.loads(out.read_text())
    assert report["num_videos"] == 3 and (report["index"]["nlist"], report["index"]["nprobe"]) == (1, 1)


def test_named_model_with_the_wrong_frame_count_says_which_to_pass(data, capsys):
    # vmm_nano's shipped weights are an 8-frame model folder: they load strictly, with no interpolation
    assert main(eval_args(data, model="vmm_nano", frames=16)) == 2
    err = one_line_error(capsys)
    assert err.startswith("error: --frames 16 (frames=16):") and "vmm_nano" in err
    assert "pass --frames 8 (frames=8)" in err


def test_a_video_listed_twice_is_refused(tmp_path):
    """Two gallery entries of one file compete for the same captions and lower every metric silently."""
    from retrieval.annotations import load_retrieval_dataset
    (tmp_path / "red.mp4").touch()
    (tmp_path / "sq.mp4").touch()
    items = [{"video": "red.mp4", "caption": "A red screen."}, {"video": "sq.mp4", "caption": "A square."},
             {"video": "./red.mp4", "caption": "Red again."}]
    (tmp_path / "dup.json").write_text(json.dumps(items))
    with pytest.raises(VmmError, match=r"item 2 lists video './red.mp4' again \(first at item 0; 1 of 3 items repeat "
                                         r"a video\); list each video once, with all its captions in one list$"):
        load_retrieval_dataset(tmp_path / "dup.json", tmp_path, "msrvtt")


def test_a_video_entry_with_a_nul_character_is_one_line_with_an_output(data, tmp_path, capsys, no_evaluation):
    """Resolving the outputs' inputs met the NUL: "ValueError: embedded null byte", a traceback."""
    items = json.loads((data / "ok.json").read_text())
    items[2]["video"] = "square\0.mp4"
    (tmp_path / "nul.json").write_text(json.dumps(items))
    assert main(eval_args(data, "--json", str(tmp_path / "r.json"), annotations=tmp_path / "nul.json")) == 2
    assert "item 2 has the 'video' entry 'square\\x00.mp4', with a NUL character" in one_line_error(capsys)
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("caption", ["", "   ", "!!!"])
def test_a_caption_empty_after_cleaning_is_refused(data, tmp_path, capsys, caption):
    items = json.loads((data / "ok.json").read_text())
    items[1]["caption"] = [caption]
    (tmp_path / "empty.json").write_text(json.dumps(items))
    assert main(eval_args(data, annotations=tmp_path / "empty.json")) == 2
    err = one_line_error(capsys)
    assert "item 1 (green.mp4)" in err and "empty.json" in err and "no words left" in err


def test_options_that_would_be_ignored_or_misread(data, capsys, no_evaluation):
    assert main(eval_args(data, "--nlist", "4")) == 2
    assert "nlist (--nlist) is 4, but it applies only to index (--index) 'ivf'" in one_line_error(capsys)


def test_a_file_given_as_the_videos_folder(data, capsys):
    assert main(eval_args(data)[:5] + [str(data / "ok.json"), *eval_args(data)[6:]]) == 2
    assert "is a file, not a folder" in one_line_error(capsys)


def test_frames_default_to_the_model_folders_own(data, capsys):
    args = eval_args(data)
    del args[args.index("--frames"):args.index("--frames") + 2]  # the tiny model folder is a 4-frame model
    assert main(args) == 0, capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- the Python API
@pytest.mark.parametrize("field, value, message", [
    ("rerank_k", "5", r"^rerank_k \(--rerank-k\) must be a whole number >= 1, got '5'$"),  # was a TypeError
    ("frames", 4.0, r"^frames \(--frames\) must be a whole number >= 1, got 4.0$"),  # was a TypeError in the encoder
    ("batch_size", True, r"^batch_size \(--batch-size\) must be a whole number >= 1, got True$"),
    ("workers", 1.5, r"^workers \(--workers\) must be a whole number >= 0"),
    ("sim_chunk", "3", r"^sim_chunk \(--sim-chunk\) must be a whole number >= 1, got '3'$"),
    ("decode_timeout", "9", r"^decode_timeout \(--decode-timeout\) must be a number of seconds > 0, got '9'$"),
    ("allow_missing", "no", r"^allow_missing must be True or False, got 'no'$"),  # "no" was taken as True
    ("device", 5, r"^device \(--device\) 5 is not a device"),  # torch.device(5) is cuda:5
    ("model", 5, r"^model \(--model\) must be a str or pathlib.Path, got int$"),
])
def test_eval_config_refuses_wrong_types_in_one_line(data, field, value, message):
    options = {"model": data / "model", "frames": 4, "device": "cpu", "workers": 0, field: value}
    config = retrieval.evaluate.EvalConfig("msrvtt", data / "ok.json", data / "vids", **options)
    with pytest.raises(VmmError, match=message):
        config.check()
    with pytest.raises(VmmError, match=message):
        retrieval.evaluate.evaluate(config)


def test_numpy_counts_give_a_report_that_can_be_written(data, tmp_path):
    """NumPy integers pass EvalConfig.check() (a sweep over np.arange), but the report kept them and write_json
    ended the finished run with "TypeError: Object of type int64 is not JSON serializable"."""
    from retrieval.report import write_json
    counts = dict(frames=np.int64(4), rerank_k=np.int64(2), batch_size=np.int32(2), itm_batch_size=np.int64(3),
                  workers=np.int64(0), index="ivf", nlist=np.int64(2), nprobe=np.int64(1))
    config = retrieval.evaluate.EvalConfig("msrvtt", data / "ok.json", data / "vids", model=data / "model",
                                           device="cpu", **counts)
    report = retrieval.evaluate.evaluate(config).report
    written = json.loads(write_json(report, tmp_path / "report.json").read_text())
    assert (written["frames"], written["rerank_k"], written["index"]["nlist"]) == (4, 2, 2)
    assert written["rerank"]["t2v"]["count"] == 3


@pytest.mark.parametrize("options, message", [
    (dict(kind="hnsw"), r"^kind must be 'flat' or 'ivf', got 'hnsw'$"),  # silently built an IVF
    (dict(kind="ivf", nprobe=-1), r"^nprobe must be a whole number >= 1, got -1; leave it out"),
    (dict(kind="ivf", nlist=0), r"^nlist must be a whole number >= 1, got 0; leave it out"),
    (dict(kind="ivf", nlist=2.5), r"^nlist must be a whole number >= 1, got 2.5"),  # FAISS could not parse IVF2.5
    (dict(nlist=3), r"^nlist is 3, but it applies only to kind 'ivf'; leave it out or use 'ivf'$"),
])
def test_index_metrics_refuses_unknown_kinds_and_bad_ivf_options(options, message):
    import torch
    from retrieval.index_metrics import index_metrics
    frames = torch.nn.functional.normalize(torch.randn(4, 8, 16), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    with pytest.raises(VmmError, match=message):
        index_metrics(frames, texts, [0, 1, 2, 3, 0, 1], **options)
    assert index_metrics(frames, texts, [0, 1, 2, 3, 0, 1], kind="ivf", nlist=2, nprobe=2)[
        "nprobe"] == 2


def test_an_architecture_without_official_weights_names_the_checkpoint_option():
    """A bare architecture has no official file; the factory's message named its Python argument (pretrained=)."""
    from retrieval.evaluate import EvalConfig, _load_eval_model
    with pytest.raises(VmmError, match=r"^model \(--model\) videomamba_m16_mm has no official weights file; pass one "
                                       r"with checkpoint \(--checkpoint PATH\)"):
        _load_eval_model(EvalConfig("msrvtt", "a.json", "videos", model="videomamba_m16_mm"))


@pytest.mark.parametrize("model", ["vmm_nanoo", "no/such/folder"])
def test_an_unknown_model_is_named_as_such(data, capsys, model):
    """A misspelt name or a missing folder was told it 'has no official weights file' and sent to --checkpoint."""
    assert main(eval_args(data, model=model, frames=8)) == 2
    err = one_line_error(capsys)
    assert err.startswith(f"error: model (--model) {model} is neither a registered model nor a model folder; use one "
                          "of ") and "vmm_nano" in err and "save_pretrained folder" in err
    assert "official weights" not in err and "--checkpoint" not in err


def test_an_annotation_file_that_cannot_be_opened_is_one_line(data, tmp_path, capsys):
    (tmp_path / "a.json").symlink_to(tmp_path / "b.json")
    (tmp_path / "b.json").symlink_to(tmp_path / "a.json")
    assert main(eval_args(data, annotations=tmp_path / "a.json")) == 2
    assert "a.json cannot be read (Too many levels of symbolic links)" in one_line_error(capsys)


def released_tiny_model(tmp_path):
    """The tiny model at the published 8 frames and 224 px, loaded from a file under the released 25M checkpoint's
    name as the released model would be."""
    import torch

    import vmm
    torch.manual_seed(0)
    torch.save(vmm.create_model("videomamba_m16_mm", **TINY_224).state_dict(), tmp_path / RELEASED_25M)
    return vmm.create_model("videomamba_m16_25m", pretrained=tmp_path / RELEASED_25M, **TINY_224)


def test_the_paper_row_only_for_the_official_rerank_k(tmp_path, monkeypatch):
    """The published rows re-rank the top 128: --rerank-k 1 was compared with them and reported comparable."""
    from retrieval.evaluate import EvalConfig, evaluate
    from retrieval.report import format_markdown
    from retrieval.paper_numbers import OFFICIAL_TEST_TEXTS, OFFICIAL_TEST_VIDEOS
    released_tiny_model(tmp_path).save_pretrained(tmp_path / "model")
    vids = tmp_path / "vids"
    vids.mkdir()
    videos.write_red_green_square(vids)
    items = [{"video": "red.mp4", "caption": "A red screen."}, {"video": "green.mp4", "caption": "A green screen."},
             {"video": "square.mp4", "caption": ["A square moves right.", "A white square."]}]
    (tmp_path / "test.json").write_text(json.dumps(items))
    # these 3 videos and 4 texts stand for the 1,000 of the split
    monkeypatch.setitem(OFFICIAL_TEST_VIDEOS, "msrvtt", 3)
    monkeypatch.setitem(OFFICIAL_TEST_TEXTS, "msrvtt", 4)
    reports = {k: evaluate(EvalConfig("msrvtt", tmp_path / "test.json", vids, model=tmp_path / "model", rerank_k=k,
                                      device="cpu", workers=0)).report for k in (3, 4, 128)}
    assert reports[128]["paper"]["corpus"] == "25M" and reports[128]["comparable"]
    assert reports[128]["not_comparable"] == [] and "not comparable" not in format_markdown(reports[128])
    # k = 4 takes every candidate of both directions, as 128 does: the same evaluation
    assert reports[4] == {**reports[128], **{k: reports[4][k] for k in ("rerank_k", "seconds", "timings")}}
    # k = 3 takes every video but not every text (4): not the published protocol
    assert reports[3]["paper"] is None and reports[3]["delta"] is None and not reports[3]["comparable"]
    assert reports[3]["not_comparable"] == ["ITM re-ranking of the top 3, not 128"]
    # a custom protocol under the official name (texts joined into paragraphs) is not msrvtt either
    from retrieval.annotations import DatasetProtocol
    custom = DatasetProtocol("msrvtt", True, 32, None)
    report = evaluate(EvalConfig(custom, tmp_path / "test.json", vids, model=tmp_path / "model", device="cpu",
                                 workers=0)).report
    assert (report["num_texts"], report["paragraph"]) == (3, True)
    assert report["paper"] is None and report["delta"] is None and not report["comparable"]
    # 3 of the split's 1,000 videos: the published row is shown beside them, but they are not comparable
    monkeypatch.undo()
    report = evaluate(EvalConfig("msrvtt", tmp_path / "test.json", vids, model=tmp_path / "model", device="cpu",
                                 workers=0)).report
    assert report["paper"] == reports[128]["paper"] and report["delta"] is not None and not report["comparable"]
    # and the printed table says so: beside the paper row, the subset's numbers looked like the split's
    assert "\nnot comparable with the paper: 3 of the split's 1000 videos\n" in format_markdown(report)


def test_a_model_trained_by_vmm_train_is_not_compared_with_the_zero_shot_row(tmp_path, monkeypatch):
    """vmm train's export keeps the name it started from (videomamba_m16_25m): its fine-tuned weights were shown
    beside the published zero-shot row as comparable, with a "rerank - paper" difference; so was a folder of random
    weights saved under the released model's name, as no folder said where its weights came from."""
    import torch

    import vmm
    from retrieval.evaluate import EvalConfig, evaluate
    from retrieval.paper_numbers import OFFICIAL_TEST_TEXTS, OFFICIAL_TEST_VIDEOS
    from retrieval.report import format_markdown
    from vmm.training.loop import export_final
    model = released_tiny_model(tmp_path)
    model.save_pretrained(tmp_path / "released")  # the same weights, as a conversion of the released file
    export_final(model, tmp_path / "run", [], trainable_only=False, step=500)
    torch.manual_seed(1)
    vmm.create_model("videomamba_m16_25m", **TINY_224).save_pretrained(tmp_path / "random")
    vids = tmp_path / "vids"
    vids.mkdir()
    videos.write_red_green_square(vids)
    items = [{"video": f"{c}.mp4", "caption": f"A {c} screen."} for c in ("red", "green", "square")]
    (tmp_path / "test.json").write_text(json.dumps(items))
    monkeypatch.setitem(OFFICIAL_TEST_VIDEOS, "msrvtt", 3)  # these 3 videos stand for the 1,000 of the split
    monkeypatch.setitem(OFFICIAL_TEST_TEXTS, "msrvtt", 3)
    released, trained, random = (evaluate(EvalConfig("msrvtt", tmp_path / "test.json", vids, model=folder,
                                                     device="cpu", workers=0)).report
                                 for folder in (tmp_path / "released", tmp_path / "run" / "final", tmp_path / "random"))
    assert released["comparable"] and released["paper"]["corpus"] == "25M"
    assert released["weights_from"] == {"source": "checkpoint", "file": RELEASED_25M}
    assert trained["model"] == random["model"] == "videomamba_m16_25m" and trained["rerank"] == released["rerank"]
    for report, why in ((trained, "weights trained 500 steps by vmm train"),
                        (random, "random weights (built without a checkpoint)")):
        why += f", not the released {RELEASED_25M}"
        assert (report["paper"], report["delta"], report["comparable"], report["not_comparable"]) == (
            None, None, False, [why])
        assert f"\nnot comparable with the paper: {why}\n" in format_markdown(report)


def test_allow_missing_with_no_video_found_says_what_to_fix(data, tmp_path, capsys):
    """'none of the 3 videos ... exist' ended there: no word on the folder, or on names that lack the extension."""
    items = [{"video": v, "caption": f"Video {v}."} for v in ("red", "green", "square")]
    (tmp_path / "noext.json").write_text(json.dumps(items))
    assert main(eval_args(data, "--allow-missing", annotations=tmp_path / "noext.json")) == 2
    err = one_line_error(capsys)
    assert err.startswith(f"error: none of the 3 videos of {tmp_path / 'noext.json'} exist in {data / 'vids'}; "
                          f"{data / 'vids'} has red.mp4 instead: the 'video' entries must name the files exactly")
    args = eval_args(data, "--allow-missing", annotations=tmp_path / "noext.json")
    args[args.index("--videos") + 1] = str(tmp_path)  # a folder without any of them
    assert main(args) == 2
    assert one_line_error(capsys).endswith(f"exist in {tmp_path}; point videos= (--videos) at the folder that holds "
                                           "them")
    # the folder above the videos: the one that holds them is named, with --allow-missing or without
    for extra in ((), ("--allow-missing",)):
        args = eval_args(data, *extra)
        args[args.index("--videos") + 1] = str(data)
        assert main(args) == 2
        assert one_line_error(capsys).endswith(f"; {data / 'vids'} holds red.mp4: pass that folder as the videos "
                                               "folder")


def report_for(tmp_path, dataset, file_name, captions, listed=3, missing=(), weights=RELEASED_25M, model=None):
    """build_report for a real annotation file of `listed` videos with `captions` each (the videos in `missing` not
    on disk), its rows scored from embeddings by the real metrics and FAISS, as a model loaded from the checkpoint
    file `weights` at 8 frames and 224 px would be (or `model`, a model folder's)."""
    import types

    import torch

    from retrieval.annotations import load_retrieval_dataset
    from retrieval.evaluate import EvalConfig, _Runtime
    from retrieval.index_metrics import index_metrics
    from retrieval.metrics import chunked_similarity, retrieval_metrics
    from retrieval.report import build_report
    vids = tmp_path / "vids"
    vids.mkdir(exist_ok=True)
    names = [f"video{i}.mp4" for i in range(listed)]
    for name in set(names) - set(missing):
        (vids / name).touch()  # the report reads no frame
    anno = tmp_path / file_name
    anno.write_text(json.dumps([{"video": n, "caption": [f"clip {i} take {j}" for j in range(captions)]}
                                for i, n in enumerate(names)]))
    ds = load_retrieval_dataset(anno, vids, dataset, allow_missing=True)
    torch.manual_seed(0)
    frames = torch.nn.functional.normalize(torch.randn(len(ds.videos), 8, 16), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(len(ds.texts), 16), dim=-1)
    itc = chunked_similarity(frames, texts)
    rows = {"emb": retrieval_metrics(itc, itc.T, ds.txt2vid, ds.vid2txt),
            "rerank": retrieval_metrics(itc, itc.T, ds.txt2vid, ds.vid2txt),
            "index": index_metrics(frames, texts, ds.txt2vid)}
    config = EvalConfig(dataset, anno, vids, model="videomamba_m16_25m", frames=8)
    checkpoint = None if model else str(tmp_path / weights)
    model = model or types.SimpleNamespace(cfg=types.SimpleNamespace(vision=types.SimpleNamespace(img_size=224)),
                                           pretrained_source=checkpoint)
    missing = [{"video": str(p), "reason": "file not found"} for p in ds.missing]
    return build_report(config, ds, ds.protocol, listed, missing, rows, model, "videomamba_m16_25m",
                        checkpoint, _Runtime(torch.device("cpu"), torch.float32), {}, 1.0)


@pytest.mark.parametrize("dataset, file_name, captions, why", [
    # DiDeMo's val file, read like its test file, was compared with the test split's row as comparable
    ("didemo", "didemo_ret_val.json", 2, ["didemo_ret_val.json is not the test split didemo_ret_test.json"]),
    ("didemo", "didemo_ret_test.json", 2, []),
    ("didemo", "didemo_ret_test (1).json", 2, []),  # a browser's second download of the test file
    ("didemo", "my_didemo_part.json", 2, []),
    # MSRVTT 1k-A with MSRVTT's 20 captions per video: another query set on the same videos, called comparable
    ("msrvtt", "msrvtt_ret_test1k.json", 20, ["60 texts for the split's 3 (one caption per video)"]),
    ("msrvtt", "msrvtt_ret_test1k.json", 1, []),
])
def test_other_splits_and_other_captions_are_not_comparable(tmp_path, monkeypatch, dataset, file_name, captions,
                                                            why):
    from retrieval.paper_numbers import OFFICIAL_TEST_TEXTS, OFFICIAL_TEST_VIDEOS
    from retrieval.report import format_markdown
    monkeypatch.setitem(OFFICIAL_TEST_VIDEOS, "msrvtt", 3)  # these 3 videos stand for the 1,000 of the split
    monkeypatch.setitem(OFFICIAL_TEST_TEXTS, "msrvtt", 3)
    report = report_for(tmp_path, dataset, file_name, captions)
    assert report["paper"]["corpus"] == "25M"  # shown beside them for reference
    assert (report["comparable"], report["not_comparable"]) == (not why, why)
    note = [line for line in format_markdown(report).splitlines() if line.startswith("not comparable")]
    assert note == ([f"not comparable with the paper: {why[0]}"] if why else [])


def test_why_not_comparable_is_reported_once_per_cause(tmp_path):
    """Missing videos of the whole split: one cause, not also the text count their dropped captions change."""
    report = report_for(tmp_path, "msrvtt", "msrvtt_ret_test1k.json", 1, listed=1000, missing=["video7.mp4"])
    assert report["not_comparable"] == ["1 of 1000 videos missing or unreadable"]
    report = report_for(tmp_path, "msrvtt", "msrvtt_ret_test1k.json", 1, listed=1000)
    assert report["comparable"] and report["not_comparable"] == []


@pytest.mark.parametrize("weights, why", [
    (RELEASED_25M, []),
    ("videomamba_m16_5M_f8_res224.pth", []),  # compared with the 5M row
    # named like a released file, as a fine-tuned one may be, and compared with the zero-shot row as comparable
    ("videomamba_m16_25m_msrvtt_ft.pth", [f"weights from videomamba_m16_25m_msrvtt_ft.pth, not the released "
                                          f"{RELEASED_25M}"]),
    ("videomamba_m16_25M_f8_res224 (1).pth", [f"weights from videomamba_m16_25M_f8_res224 (1).pth, not the released "
                                              f"{RELEASED_25M}"]),
    ("vm25.pth", ["no published msrvtt numbers for vm25.pth"]),  # a renamed copy cannot be told from other weights
])
def test_only_weights_from_a_released_file_are_comparable(tmp_path, monkeypatch, weights, why):
    from retrieval.paper_numbers import OFFICIAL_TEST_TEXTS, OFFICIAL_TEST_VIDEOS
    monkeypatch.setitem(OFFICIAL_TEST_VIDEOS, "msrvtt", 3)  # these 3 videos stand for the 1,000 of the split
    monkeypatch.setitem(OFFICIAL_TEST_TEXTS, "msrvtt", 3)
    report = report_for(tmp_path, "msrvtt", "msrvtt_ret_test1k.json", 1, weights=weights)
    assert (report["comparable"], report["not_comparable"]) == (not why, why)
    assert report["weights_from"] == {"source": "checkpoint", "file": weights}


def test_a_model_folder_of_an_older_vmm_is_not_taken_for_the_released_weights(tmp_path, monkeypatch):
    """Such a folder does not say where its weights came from: it may hold random weights as well as a conversion
    of the released file, and only the latter may be compared; saved again from the released file, it says so."""
    import vmm
    from retrieval.paper_numbers import OFFICIAL_TEST_TEXTS, OFFICIAL_TEST_VIDEOS
    monkeypatch.setitem(OFFICIAL_TEST_VIDEOS, "msrvtt", 3)
    monkeypatch.setitem(OFFICIAL_TEST_TEXTS, "msrvtt", 3)
    folder = released_tiny_model(tmp_path).save_pretrained(tmp_path / "model")
    report = report_for(tmp_path, "msrvtt", "msrvtt_ret_test1k.json", 1, model=vmm.from_pretrained(folder))
    assert report["comparable"] and report["paper"]["corpus"] == "25M"
    config = json.loads((folder / "config.json").read_text())
    del config["weights_from"]  # as vmm wrote it before it recorded the source
    (folder / "config.json").write_text(json.dumps(config))
    report = report_for(tmp_path, "msrvtt", "msrvtt_ret_test1k.json", 1, model=vmm.from_pretrained(folder))
    assert (report["paper"], report["comparable"], report["not_comparable"]) == (None, False, [
        f"weights of unknown source (a folder saved by a vmm that did not record it), not the released {RELEASED_25M}"])
    assert report["weights_from"] == {"source": "unknown"}


@pytest.mark.parametrize("typed, dataset", [("MSRVTT", "msrvtt"), ("DiDeMo", "didemo"), ("msvd", "msvd")])
def test_the_dataset_in_its_own_spelling(data, monkeypatch, typed, dataset):
    """`vmm eval DiDeMo` was an invalid choice, though get_protocol("DiDeMo") and the docs' tables spell it so."""
    seen = []

    def record(config):
        seen.append(config.dataset)
        raise VmmError("recorded")
    monkeypatch.setattr(retrieval.evaluate, "evaluate", record)
    args = eval_args(data)
    args[args.index("msrvtt")] = typed
    assert main(args) == 2 and seen == [dataset]


@pytest.mark.parametrize("option, fix", [
    ("--model", "a model name such as videomamba_m16_25m or a model folder, or leave it out"),
    ("--checkpoint", "a weights file, or leave it out"),
    ("--annotations", "the annotation file (e.g. msrvtt_ret_test1k.json)"),
])
def test_an_empty_eval_option_is_named(option, fix, tmp_path, capsys):
    """`--model "$MODEL"` with the variable unset evaluated videomamba_m16_25m (or asked for it in the hub cache), and
    an empty --checkpoint said "pretrained='' is empty", an argument the command does not have."""
    from vmm.cli import main
    args = {"--annotations": "a.json", "--videos": str(tmp_path), option: ""}
    assert main(["eval", "msrvtt", *[x for kv in args.items() for x in kv]]) == 2
    name = option[2:]
    assert capsys.readouterr().err == f"error: {name} ({option}) is empty; pass {fix}\n"
