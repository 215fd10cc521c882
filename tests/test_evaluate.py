"""`vmm eval` end to end on generated datasets: real videos (PyAV), real decoders, a tiny random model.

Every check compares the CLI's report with a direct computation: frames decoded here with
PyAV and sampled with the official "middle" rule written out below, then the model's own
``encode_video`` / ``encode_text`` / ``similarity`` / ``itm_scores``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import vmm
from retrieval.metrics import retrieval_metrics
from vmm.cli import main
from vmm.transforms import EvalTransform

REPO = Path(__file__).resolve().parents[1]
PYTHONPATH = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # keep the caller's too
TINY = dict(vision=dict(embed_dim=192, depth=2, img_size=32, num_frames=8),
            text=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                      fusion_layer=1, max_position_embeddings=160), embed_dim=32)
METRIC_KEYS = ("R@1", "R@5", "R@10", "MdR", "MnR", "count")
WORDS = ["red", "green", "blue", "yellow", "dog", "cat", "car", "man", "runs", "jumps", "left", "right"]


# ---------------------------------------------------------------------------------------------- data
def write_video(path: Path, frames: np.ndarray, fps: int) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())
    return path


def clip_frames(rng: np.random.Generator, n: int, height: int = 40, width: int = 48) -> np.ndarray:
    """A random background colour with a square of another colour moving across it."""
    frames = np.empty((n, height, width, 3), np.uint8)
    frames[:] = rng.integers(0, 256, 3)
    color, side = rng.integers(0, 256, 3), 12
    for i in range(n):
        x = int((width - side) * i / max(1, n - 1))
        frames[i, 10:10 + side, x:x + side] = color
    return frames


def caption(rng: np.random.Generator) -> str:
    return "A " + " ".join(rng.choice(WORDS, 5)) + "."


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Model folder and three datasets (msrvtt, didemo, msvd) sharing one video folder."""
    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    vmm.create_model("videomamba_m16_mm", **TINY).save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    videos = root / "videos"
    videos.mkdir()
    for i in range(6):
        write_video(videos / f"video{i}.mp4", clip_frames(rng, int(rng.integers(10, 41))), fps=10)
    # DiDeMo: 36 s at 1 fps. Only the first 30 s count, so the last 6 frames (bright noise) are never sampled.
    long = clip_frames(rng, 36, 32, 32)
    long[30:] = rng.integers(200, 256, long[30:].shape)
    write_video(videos / "long.mp4", long, fps=1)
    write_video(videos / "short.mp4", clip_frames(rng, 20, 32, 32), fps=1)  # 20 s: not trimmed
    (videos / "broken.mp4").write_bytes(b"this is not a video\n" * 10)

    def annotations(name, items):
        path = root / f"{name}.json"
        path.write_text(json.dumps(items))
        return path

    six = [f"video{i}.mp4" for i in range(6)]
    return {
        "root": root,
        "model": root / "model",
        "videos": videos,
        "msrvtt": annotations("msrvtt", [{"video": v, "caption": caption(rng), "duration": 1.0} for v in six]),
        "didemo": annotations("didemo", [{"video": v, "caption": [caption(rng) for _ in range(3)]}
                                         for v in ["long.mp4", "short.mp4", *six[:3]]]),
        "msvd": annotations("msvd", [{"video": v, "caption": [caption(rng) for _ in range(1 + i % 3)]}
                                     for i, v in enumerate(six)]),
        "missing": annotations("missing", [{"video": v, "caption": caption(rng)} for v in [*six[:3], "gone.mp4"]]),
        "broken": annotations("broken", [{"video": v, "caption": caption(rng)} for v in [*six[:3], "broken.mp4"]]),
        "both": annotations("both", [{"video": v, "caption": [caption(rng), caption(rng)]}
                                     for v in [six[0], "gone.mp4", six[1], "broken.mp4", six[2]]]),
    }


def run_eval(data, dataset, tmp_path, *extra, annotations=None, name="out") -> tuple[dict, dict]:
    out = tmp_path / f"{name}.json"
    scores = tmp_path / f"{name}.npz"
    code = main(["eval", dataset, "--annotations", str(annotations or data[dataset]), "--videos", str(data["videos"]),
                 "--model", str(data["model"]), "--device", "cpu", "--workers", "1", "--batch-size", "3",
                 "--json", str(out), "--markdown", str(tmp_path / f"{name}.md"), "--save-scores", str(scores),
                 *extra])
    assert code == 0
    return json.loads(out.read_text()), dict(np.load(scores))


# ---------------------------------------------------------------------------------------------- direct computation
def official_middle(vlen: int, n: int = 8) -> list[int]:
    """The official get_frame_indices(sample="middle"), written out independently of index.decode."""
    acc = min(n, vlen)
    bounds = np.linspace(0, vlen, acc + 1).astype(int)
    picked = [(int(bounds[i]) + int(bounds[i + 1]) - 1) // 2 for i in range(acc)]
    return picked + [picked[-1]] * (n - acc)


def decode_official(path: Path, trim_seconds: float | None) -> np.ndarray:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    vlen = len(frames)
    if trim_seconds is not None and vlen / fps > trim_seconds:  # official trimmed30
        vlen = int(trim_seconds * fps)
    return frames[official_middle(vlen)]


@torch.inference_mode()
def direct(data, dataset: str, trim_seconds: float | None = None):
    """ITC and full ITM matrices (V, T) and the ground truth, computed here without retrieval.evaluate."""
    from retrieval.annotations import get_protocol, load_retrieval_dataset
    protocol = get_protocol(dataset)
    ds = load_retrieval_dataset(data[dataset], data["videos"], protocol)
    model = vmm.from_pretrained(data["model"]).eval()
    transform = EvalTransform(32)
    clips = torch.stack([transform(decode_official(p, trim_seconds)) for p in ds.videos])
    frames, tokens = model.encode_video(clips, per_frame=True, return_tokens=True)
    ids, mask = vmm.get_tokenizer(str(data["model"]))(ds.texts, max_length=protocol.max_text_len)
    text, hidden = model.encode_text(ids, mask, return_hidden=True)
    itc = model.similarity(frames, text)
    itm = model.itm_scores(tokens, hidden, mask)
    return itc, itm, ds, frames, text


def assert_rows_equal(a: dict, b: dict) -> None:
    for direction in ("t2v", "v2t"):
        assert {k: a[direction][k] for k in METRIC_KEYS} == pytest.approx({k: b[direction][k] for k in METRIC_KEYS})


# ---------------------------------------------------------------------------------------------- tests
def test_msrvtt_report_matches_direct_itc_and_full_itm(data, tmp_path):
    report, scores = run_eval(data, "msrvtt", tmp_path)
    itc, itm, ds, frames, text = direct(data, "msrvtt")
    assert report["dataset"] == "msrvtt" and report["model"] == "videomamba_m16_mm" and report["checkpoint"] is None
    assert (report["num_videos"], report["num_texts"], report["missing"], report["missing_count"]) == (6, 6, [], 0)
    assert (report["frames"], report["rerank_k"], report["max_text_len"], report["device"]) == (8, 128, 32, "cpu")
    assert report["paper"] is None and report["delta"] is None and report["seconds"] > 0
    for row in ("emb", "rerank", "index"):
        assert report[row]["t2v"]["count"] == 6 and report[row]["v2t"]["count"] == 6
        assert set(report[row]["t2v"]) == set(METRIC_KEYS)

    # emb: the pipeline's ITC is the directly computed one, and so are its metrics
    torch.testing.assert_close(torch.from_numpy(scores["itc"]), itc, atol=1e-5, rtol=0)
    assert_rows_equal(report["emb"], retrieval_metrics(itc, itc.T, ds.txt2vid, ds.vid2txt))
    # rerank with k >= every candidate count is the ranking by the full ITM matrix
    torch.testing.assert_close(torch.from_numpy(scores["i2t"]), itm, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.from_numpy(scores["t2i"]), itm.T, atol=1e-4, rtol=0)
    assert_rows_equal(report["rerank"], retrieval_metrics(itm, itm.T, ds.txt2vid, ds.vid2txt))
    # index: FAISS over the normalised mean of the per-frame vectors, exact (flat) search
    pooled = torch.nn.functional.normalize(frames.mean(1), dim=-1)
    lib = pooled @ text.T
    assert_rows_equal(report["index"], retrieval_metrics(lib, lib.T, ds.txt2vid, ds.vid2txt))
    assert report["index"]["type"] == "flat" and report["index"]["ann_recall@10"] == {"t2v": 1.0, "v2t": 1.0}
    assert report["index"]["v2t"]["R@1"] == report["emb"]["v2t"]["R@1"]  # pooling keeps each video's text order
    md = (tmp_path / "out.md").read_text()
    assert "| emb (ITC) |" in md and "| rerank (ITM top-128) |" in md and "| index (FAISS flat) |" in md


def test_chunked_and_unchunked_similarity_give_the_same_report(data, tmp_path, capsys):
    from retrieval.evaluate import EvalConfig, evaluate
    # the whole ITC matrix in one block, through the Python API with the progress bars on
    whole = evaluate(EvalConfig("msrvtt", data["msrvtt"], data["videos"], model=data["model"], device="cpu",
                                workers=1, batch_size=3, sim_chunk=1000, progress=True))
    assert "videos (decode+encode)" in capsys.readouterr().err
    # one video per ITC block, decoded in the main process instead of a worker
    chunked, chunked_scores = run_eval(data, "msrvtt", tmp_path, "--sim-chunk", "1", "--workers", "0", name="chunk")
    np.testing.assert_allclose(chunked_scores["itc"], whole.itc.numpy(), atol=1e-6, rtol=0)
    for row in ("emb", "rerank", "index"):
        assert chunked[row] == whole.report[row]


def test_rerank_scores_exactly_the_top_k_of_each_query(data, tmp_path, monkeypatch):
    import retrieval.evaluate as evaluate
    from vmm.models.multimodal import VideoTextModel
    calls: dict[str, dict[int, list[int]]] = {"v2t": {}, "t2v": {}}
    pairs = []
    real_rerank, real_itm = evaluate.rerank_topk, VideoTextModel.itm_logits

    def recording_rerank(itc, k, score_pairs, batch_size, direction, progress=None):
        def scorer(query, candidates):
            assert len(candidates) <= batch_size
            calls[direction].setdefault(query, []).extend(candidates.tolist())
            return score_pairs(query, candidates)
        return real_rerank(itc, k, scorer, batch_size, direction, progress=progress)

    def counting_itm(self, video_tokens, text_hidden, mask):
        pairs.append(len(video_tokens))
        return real_itm(self, video_tokens, text_hidden, mask)

    monkeypatch.setattr(evaluate, "rerank_topk", recording_rerank)
    monkeypatch.setattr(VideoTextModel, "itm_logits", counting_itm)
    report, scores = run_eval(data, "msvd", tmp_path, "--rerank-k", "2", "--itm-batch-size", "1")
    itc, n_v, n_t = torch.from_numpy(scores["itc"]), 6, 12
    assert scores["itc"].shape == (n_v, n_t) and report["rerank_k"] == 2
    assert sum(pairs) == len(pairs) == 2 * n_v + 2 * n_t  # one pair per call (batch 1), k per query, both ways
    for v in range(n_v):
        assert calls["v2t"][v] == itc[v].topk(2).indices.tolist()
        assert (scores["i2t"][v] != -100).sum() == 2
    for t in range(n_t):
        assert calls["t2v"][t] == itc[:, t].topk(2).indices.tolist()
        assert sorted(np.flatnonzero(scores["t2i"][t] != -100)) == sorted(calls["t2v"][t])


def test_didemo_paragraphs_and_first_30_seconds(data, tmp_path):
    report, scores = run_eval(data, "didemo", tmp_path)
    assert (report["num_videos"], report["num_texts"]) == (5, 5)
    assert (report["max_text_len"], report["trim_seconds"], report["paragraph"]) == (64, 30.0, True)
    itc, itm, ds, _, _ = direct(data, "didemo", trim_seconds=30.0)
    assert ds.texts[0].count(" ") > 10  # three captions joined into one paragraph
    torch.testing.assert_close(torch.from_numpy(scores["itc"]), itc, atol=1e-5, rtol=0)
    assert_rows_equal(report["emb"], retrieval_metrics(itc, itc.T, ds.txt2vid, ds.vid2txt))
    assert_rows_equal(report["rerank"], retrieval_metrics(itm, itm.T, ds.txt2vid, ds.vid2txt))
    # the trim matters: sampling the whole 36 s video picks the noise frames and changes its scores
    untrimmed, _, _, _, _ = direct(data, "didemo", trim_seconds=None)
    assert (untrimmed[0] - itc[0]).abs().max() > 1e-3
    torch.testing.assert_close(untrimmed[1:], itc[1:], atol=1e-5, rtol=0)  # short.mp4 (20 s) is not trimmed


def test_msvd_several_captions_per_video_and_ivf_index(data, tmp_path):
    report, scores = run_eval(data, "msvd", tmp_path, "--index", "ivf", "--nlist", "2", "--nprobe", "2")
    itc, itm, ds, _, _ = direct(data, "msvd")
    assert (report["num_videos"], report["num_texts"]) == (6, 12)
    assert report["emb"]["t2v"]["count"] == 12 and report["emb"]["v2t"]["count"] == 6
    torch.testing.assert_close(torch.from_numpy(scores["itc"]), itc, atol=1e-5, rtol=0)
    assert_rows_equal(report["emb"], retrieval_metrics(itc, itc.T, ds.txt2vid, ds.vid2txt))
    assert_rows_equal(report["rerank"], retrieval_metrics(itm, itm.T, ds.txt2vid, ds.vid2txt))
    # IVF probing every list is exact search: recall 1 and the flat index's ranking
    assert {k: report["index"][k] for k in ("type", "nlist", "nprobe")} == {"type": "ivf", "nlist": 2, "nprobe": 2}
    assert report["index"]["ann_recall@10"] == {"t2v": 1.0, "v2t": 1.0}
    flat, _ = run_eval(data, "msvd", tmp_path, "--rerank-k", "1", name="flat")
    assert_rows_equal(report["index"], flat["index"])
    assert report["index"]["v2t"]["R@1"] == report["emb"]["v2t"]["R@1"]


def test_missing_video_is_an_error_naming_it(data, tmp_path, capsys):
    args = ["eval", "msrvtt", "--annotations", str(data["missing"]), "--videos", str(data["videos"]),
            "--model", str(data["model"]), "--device", "cpu", "--workers", "0"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: 1 of 4 videos") and "gone.mp4" in err and "allow" in err and "\n" not in err


def test_unreadable_video_is_an_error_naming_it(data, tmp_path, capsys):
    args = ["eval", "msrvtt", "--annotations", str(data["broken"]), "--videos", str(data["videos"]),
            "--model", str(data["model"]), "--device", "cpu", "--workers", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: 1 of 4 videos cannot be decoded") and "broken.mp4" in err
    assert "--allow-missing" in err and "\n" not in err


def test_allow_missing_reports_what_was_dropped(data, tmp_path):
    report, scores = run_eval(data, "msvd", tmp_path, "--allow-missing", annotations=data["both"])
    assert report["listed_videos"] == 5 and report["missing_count"] == 2
    reasons = {Path(m["video"]).name: m["reason"] for m in report["missing"]}
    assert reasons["gone.mp4"] == "file not found" and "container" in reasons["broken.mp4"]
    assert (report["num_videos"], report["num_texts"]) == (3, 6)
    for row in ("emb", "rerank", "index"):
        assert (report[row]["t2v"]["count"], report[row]["v2t"]["count"]) == (6, 3)
    assert scores["itc"].shape == (3, 6) and scores["txt2vid"].tolist() == [0, 0, 1, 1, 2, 2]
    assert [Path(v).name for v in scores["videos"]] == ["video0.mp4", "video1.mp4", "video2.mp4"]
    assert "3 videos and 6 texts evaluated, 2 videos missing or unreadable" in (tmp_path / "out.md").read_text()


@pytest.mark.slow
def test_two_processes_give_the_same_report_as_one(data, tmp_path):
    """torchrun with 2 CPU (gloo) ranks: strided shards, gathered on rank 0, identical numbers."""
    single, single_scores = run_eval(data, "msvd", tmp_path, "--allow-missing", annotations=data["both"], name="one")
    out = tmp_path / "two.json"
    env = {**os.environ, "PYTHONPATH": PYTHONPATH, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "vmm.cli",
         "eval", "msvd", "--annotations", str(data["both"]), "--videos", str(data["videos"]),
         "--model", str(data["model"]), "--device", "cpu", "--workers", "0", "--batch-size", "3", "--allow-missing",
         "--json", str(out), "--save-scores", str(tmp_path / "two.npz")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    two = json.loads(out.read_text())
    two_scores = np.load(tmp_path / "two.npz")
    assert two["world_size"] == 2 and "x 2 processes" in two["device"]
    assert two["missing"] == single["missing"] and two["num_texts"] == single["num_texts"] == 6
    for row in ("emb", "rerank", "index"):
        assert two[row] == single[row]
    for name in ("itc", "i2t", "t2i"):
        np.testing.assert_allclose(two_scores[name], single_scores[name], atol=1e-6, rtol=0)


def test_test_set_texts_are_cleaned_once(tmp_path):
    """The official loader runs pre_text once; a second pass is not a no-op ("<<person>>" -> "person")."""
    from retrieval.annotations import load_retrieval_dataset
    from retrieval.evaluate import _Runtime, _encode_texts
    (tmp_path / "a.mp4").touch()
    (tmp_path / "t.json").write_text(json.dumps([{"video": "a.mp4", "caption": "A <<PERSON>> walks"}]))
    ds = load_retrieval_dataset(tmp_path / "t.json", tmp_path, "msrvtt")
    assert ds.texts == ["a <person> walks"]  # pre_text, once
    model = vmm.create_model("videomamba_m16_mm", **TINY).eval()
    tok = vmm.get_tokenizer("videomamba_m16_25m")
    got = _encode_texts(model, tok, ds.texts, 8, 256, _Runtime(torch.device("cpu"), torch.float32))
    ids = torch.tensor([[101, 1037, 1026, 2711, 1028, 7365, 102, 0]])  # [CLS] a < person > walks [SEP] [PAD]
    mask = (ids != 0).long()
    assert torch.equal(got.mask, mask)
    with torch.no_grad():
        torch.testing.assert_close(got.emb, model.encode_text(ids, mask).float())


def test_benchmark_script_evaluates_the_given_model_with_its_own_weights(data, tmp_path, monkeypatch):
    """The benchmark's fixed default checkpoint was the 25M file: --model videomamba_m16_5m was evaluated on 25M
    weights, and a model folder was refused ('drop --checkpoint', which the script had no way to do)."""
    import retrieval.evaluate as ev
    args = ["--annotations", str(data["didemo"]), "--videos", str(data["videos"]), "--device", "cpu",
            "--workers", "0", "--json", str(tmp_path / "b.json"), "--markdown", str(tmp_path / "b.md")]
    assert ev.benchmark_main("didemo", [*args, "--model", str(data["model"])]) == 0
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["dataset"] == "didemo" and report["checkpoint"] is None and report["num_videos"] == 5
    seen = []
    monkeypatch.setattr(ev, "evaluate", lambda config: seen.append(config))  # a non-zero rank: nothing to report
    assert ev.benchmark_main("msrvtt", [*args[:1], str(data["msrvtt"]), *args[2:], "--model", "videomamba_m16_5m"]) == 0
    assert (seen[-1].model, seen[-1].checkpoint) == ("videomamba_m16_5m", None)  # its own official 5M file
    ev.benchmark_main("msrvtt", [*args[:1], str(data["msrvtt"]), *args[2:], "--checkpoint", "/c/videomamba_m16_17M_f8_res224.pth"])
    assert (seen[-1].model, seen[-1].checkpoint) == ("videomamba_m16_17m", "/c/videomamba_m16_17M_f8_res224.pth")


def test_benchmark_script_ctrl_c_is_one_line(data, tmp_path, monkeypatch, capsys):
    import retrieval.evaluate as ev

    def interrupted(config):
        raise KeyboardInterrupt
    monkeypatch.setattr(ev, "evaluate", interrupted)
    code = ev.benchmark_main("msrvtt", ["--annotations", str(data["msrvtt"]), "--videos", str(data["videos"]),
                                        "--model", str(data["model"]), "--json", str(tmp_path / "b.json"),
                                        "--markdown", str(tmp_path / "b.md")])
    assert code == 130 and capsys.readouterr().err == "interrupted\n"
    assert not (tmp_path / "b.json").exists()


def test_benchmark_script_refuses_far_more_decoders_than_cpus_as_vmm_eval(data, tmp_path, monkeypatch, capsys):
    """--workers 64 on a 2-core machine started 64 decoder processes; vmm eval refused it."""
    import retrieval.evaluate as ev

    def started(config):
        raise AssertionError(f"evaluated with {config.workers} workers")
    monkeypatch.setattr(ev, "evaluate", started)
    too_many = 4 * (os.cpu_count() or 1) + 1
    code = ev.benchmark_main("msrvtt", ["--annotations", str(data["msrvtt"]), "--videos", str(data["videos"]),
                                        "--model", str(data["model"]), "--workers", str(too_many),
                                        "--json", str(tmp_path / "b.json"), "--markdown", str(tmp_path / "b.md")])
    assert code == 2 and capsys.readouterr().err == (f"error: --workers {too_many} is far above the {os.cpu_count()} "
                                                     f"CPUs of this machine; pass at most {too_many - 1} (or omit "
                                                     "--workers for the default)\n")


def test_benchmark_script_usage_mistakes_are_one_line(capsys):
    """The retrieval scripts printed argparse's whole usage block before the error, unlike every other command."""
    import retrieval.evaluate as ev
    with pytest.raises(SystemExit) as ended:
        ev.benchmark_main("didemo", ["--annotations", "a.json"])
    assert ended.value.code == 2
    assert capsys.readouterr().err == ("error: the following arguments are required: --videos (`python "
                                       "benchmarks/retrieval_didemo.py --help` lists the options)\n")


def test_frames_default_to_the_model_folder_else_the_protocol(data, tmp_path, monkeypatch):
    """EvalConfig(frames=None): a model folder's own count (its weights fit no other), else the dataset protocol's
    num_frames, so a custom DatasetProtocol's frame count is not silently replaced by 8."""
    import retrieval.evaluate as ev
    from retrieval.annotations import DatasetProtocol
    seen = []
    monkeypatch.setattr(ev, "_evaluate", lambda config, *rest: seen.append(config.frames))
    mine = DatasetProtocol("mine", False, 32, None, num_frames=4)
    ev.evaluate(ev.EvalConfig(mine, data["msrvtt"], data["videos"], model="vmm_nano",
                              checkpoint=str(tmp_path / "weights.pth"), device="cpu", workers=0))
    ev.evaluate(ev.EvalConfig(mine, data["msrvtt"], data["videos"], model=data["model"], device="cpu", workers=0))
    ev.evaluate(ev.EvalConfig(mine, data["msrvtt"], data["videos"], model=data["model"], frames=6, device="cpu",
                              workers=0))
    assert seen == [4, 8, 6]
    # a checkpoint file says its own count through its temporal table (a 6-frame fine-tune, here its shapes only)
    shapes = {"cls_token": (1, 1, 8), "pos_embed": (1, 5, 8), "temporal_pos_embedding": (1, 6, 8),
              "patch_embed.proj.weight": (8, 3, 1, 16, 16), "layers.0.mixer.A_log": (16, 16),
              "layers.0.mixer.in_proj.weight": (32, 8), "layers.0.mixer.conv1d.weight": (16, 1, 4),
              "layers.0.mixer.dt_proj.weight": (16, 1)}
    torch.save({"model": {f"vision_encoder.{k}": torch.zeros(v) for k, v in shapes.items()}}, tmp_path / "f6.pth")
    assert ev.default_frames("vmm_nano", tmp_path / "f6.pth") == 6
    ev.evaluate(ev.EvalConfig(mine, data["msrvtt"], data["videos"], model="vmm_nano", checkpoint=tmp_path / "f6.pth",
                              device="cpu", workers=0))
    assert seen[-1] == 6


def test_bf16_itc_is_rounded_as_the_official_autocast_does(data):
    """The official get_sim runs under the eval's bf16 autocast, so its ITC scores (and their ties, which decide the
    emb row and the ITM shortlist) are bf16 values; vmm computed them in float32 whatever the precision."""
    from retrieval.evaluate import EvalConfig, evaluate
    config = EvalConfig("msrvtt", data["msrvtt"], data["videos"], model=data["model"], device="cpu", workers=0,
                        batch_size=6)
    bf16 = evaluate(replace(config, precision="bf16"))
    assert bf16.report["precision"] == "bf16"
    assert torch.equal(bf16.itc, bf16.itc.bfloat16().float())  # every score is a bf16 value
    assert_rows_equal(bf16.report["emb"], retrieval_metrics(bf16.itc, bf16.itc.T, bf16.dataset.txt2vid,
                                                            bf16.dataset.vid2txt))
    fp32 = evaluate(replace(config, precision="fp32"))  # full precision stays full precision
    assert not torch.equal(fp32.itc, fp32.itc.bfloat16().float())
    torch.testing.assert_close(bf16.itc, fp32.itc, atol=0.03, rtol=0)  # the same scores, rounded


@pytest.mark.cuda
def test_a_cuda_eval_in_bf16_rounds_itc_and_agrees_with_fp32(data):
    """On a GPU (the default precision there is bf16) the ITC scores are bf16 values, as the official get_sim under
    its autocast gives, and the whole evaluation agrees with an fp32 one to bf16's precision."""
    from retrieval.evaluate import EvalConfig, evaluate
    config = EvalConfig("msrvtt", data["msrvtt"], data["videos"], model=data["model"], device="cuda", workers=0,
                        batch_size=6)
    bf16 = evaluate(config)
    assert bf16.report["precision"] == "bf16" and bf16.report["device"].startswith("cuda")
    assert torch.equal(bf16.itc, bf16.itc.bfloat16().float())
    fp32 = evaluate(replace(config, precision="fp32"))
    assert not torch.equal(fp32.itc, fp32.itc.bfloat16().float())
    torch.testing.assert_close(bf16.itc.cpu(), fp32.itc.cpu(), atol=0.05, rtol=0)
