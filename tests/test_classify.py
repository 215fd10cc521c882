"""vmm classify: Kinetics-400 labels, the official K400 test views, the CLI, and bad input.

The test video is lossless RGB (FFV1), so both decoders return exactly the frames written and the test can
build the model input from those frames on its own, without going through vmm's decoding or preprocessing.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vmm
from vmm.classify import (ClassifyOptions, classify_video, crop_starts, make_views, read_views,
                          resolve_labels, sample_clip_indices, top_labels, view_probabilities)
from vmm.cli import main
from vmm.errors import VmmError
from vmm.labels import load_labels

REPO = Path(__file__).resolve().parents[1]
N_FRAMES, H, W = 30, 48, 64  # landscape: crops run along the width
SIZE, T = 32, 8
TINY = dict(depth=2, num_frames=T, img_size=SIZE)
TINY_ARGS = ["--model", "videomamba_tiny", "--model-arg", "depth=2", "--model-arg", f"img_size={SIZE}"]
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

# Official K400 test sampling worked by hand for a 30-frame video, 8 frames per clip: segment s = 29/8 = 3.625,
# round(s*i) = 0 4 7 11 14 18 22 25 (14.5 rounds to even); clip offsets int(s/(C+1)*(c+1)).
SINGLE_CLIP = [1, 5, 8, 12, 15, 19, 23, 26]  # C=1: offset int(1.8125) = 1
FOUR_CLIPS = [[0, 4, 7, 11, 14, 18, 22, 25], [1, 5, 8, 12, 15, 19, 23, 26],
              [2, 6, 9, 13, 16, 20, 24, 27], [2, 6, 9, 13, 16, 20, 24, 27]]  # offsets 0, 1, 2, 2
# Short side 48 -> 32, long side int(32 * 64 / 48) = 42; crops of 32 along it.
RESIZED = (32, 42)
ONE_CROP, THREE_CROPS = [5], [0, 5, 10]


def write_video(path: Path, frames: np.ndarray) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=10)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "bgr0"
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W]
    frames = np.stack([np.clip((xx * 3 + yy * 2 + 7 * t)[..., None] % 256 + rng.normal(0, 30, (H, W, 3)), 0, 255)
                       for t in range(N_FRAMES)]).astype(np.uint8)
    return write_video(tmp_path_factory.mktemp("video") / "clip.mkv", frames), frames


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = vmm.create_model("videomamba_tiny", num_classes=400, **TINY)
    with torch.no_grad():
        model.head.weight.mul_(20)  # spread the random softmax so the top-5 are well separated
    path = tmp_path_factory.mktemp("ckpt") / "tiny_k400.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def model(checkpoint):
    m = vmm.create_model("videomamba_tiny", num_classes=400, **TINY)
    m.load_state_dict(torch.load(checkpoint, weights_only=True))
    return m.eval()


def reference_view(frames: np.ndarray, indices: list[int], crop_x: int) -> torch.Tensor:
    """The official test input written out directly: pick frames, bilinear resize, crop along the width, normalise."""
    x = torch.from_numpy(frames[indices]).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=RESIZED, mode="bilinear", align_corners=False, antialias=False).round().clamp(0, 255)
    x = x[:, :, :, crop_x:crop_x + SIZE]
    return ((x / 255 - MEAN) / STD).permute(1, 0, 2, 3)


def direct_probabilities(model, view: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(view[None]).float().softmax(-1)[0]


def run_cli(args, capsys):
    code = main(["classify", *args])
    out, err = capsys.readouterr()
    return code, out, err


# -- labels ----------------------------------------------------------------------------------------------------

def test_kinetics400_labels_are_400_unique_names_in_head_order():
    names = load_labels("kinetics400")
    assert len(names) == 400 and len(set(names)) == 400
    assert "abseiling" in names and "zumba" in names
    assert all(n == n.strip() and n for n in names)
    # The released VideoMamba heads' order (official demo's kinetics_class_index.py), not alphabetical.
    assert names[:3] == ["riding a bike", "marching", "dodgeball"]
    assert (names[331], names[341], names[399]) == ("zumba", "abseiling", "playing badminton")
    assert names != sorted(names)
    text = (REPO / "vmm" / "labels" / "kinetics400.txt").read_text(encoding="utf-8")
    assert text.endswith("\n") and text.count("\n") == 400


def test_load_labels_from_file_and_errors(tmp_path):
    good = tmp_path / "three.txt"
    good.write_text("cat\ndog\nbird\n")
    assert load_labels(good) == ["cat", "dog", "bird"]
    dup = tmp_path / "dup.txt"
    dup.write_text("cat\ndog\ncat\n")
    with pytest.raises(VmmError, match="twice"):
        load_labels(dup)
    with pytest.raises(VmmError, match="unknown label set 'kinetics401'"):
        load_labels("kinetics401")
    # Saved by Notepad or Excel: a byte-order mark and CRLF line ends (the mark stuck to the first name)
    windows = tmp_path / "windows.txt"
    windows.write_bytes(b"\xef\xbb\xbfcat\r\ndog\r\nbird\r\n")
    assert load_labels(windows) == ["cat", "dog", "bird"]


# -- the official views ----------------------------------------------------------------------------------------

def test_frame_indices_follow_the_official_test_sampling():
    assert sample_clip_indices(N_FRAMES, T) == SINGLE_CLIP
    assert [sample_clip_indices(N_FRAMES, T, c, 4) for c in range(4)] == FOUR_CLIPS
    assert sample_clip_indices(1, T) == [0] * T  # a one-frame video repeats its frame
    assert crop_starts(42, SIZE, 1) == ONE_CROP and crop_starts(42, SIZE, 3) == THREE_CROPS
    assert crop_starts(43, SIZE, 1) == [5] and crop_starts(43, SIZE, 3) == [0, 5, 11]  # int() truncates
    assert crop_starts(SIZE, SIZE, 3) == [0, 0, 0]


def test_portrait_frames_are_cropped_along_the_height():
    rows = np.repeat(np.arange(64, dtype=np.uint8)[None, :, None, None] * 3, 48, axis=2)  # (1, 64 rows, 48, 1)
    frames = np.repeat(np.repeat(rows, 3, axis=3), 8, axis=0)  # (8, 64, 48, 3): value grows down the rows
    views = make_views([frames], SIZE, 3)
    assert views.shape == (3, 3, 8, SIZE, SIZE)
    top_rows = [v[0, 0, 0, 0].item() for v in views]
    assert top_rows[0] < top_rows[1] < top_rows[2]  # top, middle, bottom crops
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(42, SIZE), mode="bilinear", align_corners=False, antialias=False).round().clamp(0, 255)
    for view, y in zip(views, THREE_CROPS):  # int(32 * 64 / 48) = 42 rows, full width
        assert torch.allclose(view, ((x[:, :, y:y + SIZE] / 255 - MEAN) / STD).permute(1, 0, 2, 3), atol=1e-6)


def test_portrait_video_decoders(tmp_path):
    """A 48 px wide portrait video: PyAV and 'auto' give the official views cropped along the height; decord (which
    fails on frames 16, 24, 48 or 72 px wide) gives one line naming the decoders that read it."""
    frames = np.random.default_rng(1).integers(0, 256, (12, 64, 48, 3), dtype=np.uint8)
    path = write_video(tmp_path / "portrait.mkv", frames)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(42, SIZE), mode="bilinear", align_corners=False, antialias=False).round().clamp(0, 255)
    idx = sample_clip_indices(12, T)
    expected = torch.stack([((x[idx, :, y:y + SIZE] / 255 - MEAN) / STD).permute(1, 0, 2, 3) for y in THREE_CROPS])
    for backend in ("pyav", "auto"):
        assert torch.allclose(read_views(path, T, SIZE, crops=3, backend=backend), expected, atol=1e-6, rtol=0)
    with pytest.raises(VmmError, match=r"decord cannot read frames .*; use the 'auto' or 'pyav' decoder$"):
        read_views(path, T, SIZE, backend="decord")


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_views_equal_the_official_input_built_from_the_written_frames(video, backend, monkeypatch):
    path, frames = video
    monkeypatch.setattr(vmm.classify, "_DECODE_CHUNK_BYTES", 3 * H * W * 5)  # decord fetches 5 frames a call
    views = read_views(path, T, SIZE, clips=4, crops=3, backend=backend)
    expected = torch.stack([reference_view(frames, idx, x) for idx in FOUR_CLIPS for x in THREE_CROPS])
    assert views.shape == (12, 3, T, SIZE, SIZE)
    assert torch.allclose(views, expected, atol=1e-6, rtol=0)


def test_large_frames_are_resized_as_they_are_decoded(tmp_path):
    """32 frames of 1080p: held whole and converted to float at once they took ~1 GB (a 64-frame checkpoint on a
    4K phone video, 2 clips: 10 GB); resized one by one as decoded, the peak stays near one frame's worth.
    PyAV, as decord's own buffers vary from run to run by a gigabyte."""
    path = tmp_path / "hd.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        frame = av.VideoFrame(1920, 1080, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        for _ in range(32):
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    script = ("import resource, sys\nfrom vmm.classify import read_views\n"
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
              "views = read_views(sys.argv[1], 32, 32, 1, 1, sys.argv[2])\n"
              "print(tuple(views.shape), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) >> 10)\n")
    result = subprocess.run([sys.executable, "-c", script, str(path), "pyav"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    shape, grown_mb = result.stdout.rsplit(maxsplit=1)
    assert shape == "(1, 3, 32, 32, 32)"
    assert int(grown_mb) < 500, f"reading the views grew the process by {grown_mb} MB"


def test_a_resolution_change_and_a_colon_in_a_relative_name(tmp_path, monkeypatch):
    """vmm classify reads frames itself: a TS capture whose size changes midway failed to stack a clip ("all input
    arrays must have the same shape") with PyAV, and a relative "concat:a.mp4" was read by FFmpeg as a protocol,
    classifying a.mp4 instead."""
    from tests.videos import write_size_change
    changing = write_size_change(str(tmp_path / "capture.ts"))  # 25 frames of 32x24, then 25 of 48x32
    for backend in ("pyav", "auto"):
        clips = vmm.classify.decode_clips(changing, 16, 1, backend=backend)
        assert clips[0].shape == (16, 24, 32, 3), backend
    rng = np.random.default_rng(3)
    plain, other = (rng.integers(0, 256, (12, H, W, 3), dtype=np.uint8) for _ in range(2))
    write_video(tmp_path / "a.mp4", plain)
    write_video(tmp_path / "concat:a.mp4", other)
    monkeypatch.chdir(tmp_path)
    for backend in ("decord", "pyav"):
        got = vmm.classify.decode_clips("concat:a.mp4", T, 1, backend=backend)[0]
        assert np.array_equal(got, other[sample_clip_indices(12, T)]), backend


# -- classification --------------------------------------------------------------------------------------------

def test_cli_prints_top5_of_the_model_softmax(video, checkpoint, model, capsys):
    path, frames = video
    probs = direct_probabilities(model, reference_view(frames, SINGLE_CLIP, ONE_CROP[0]))
    top_p, top_i = probs.topk(5)
    names = load_labels("kinetics400")

    result = subprocess.run([sys.executable, "-m", "vmm.cli", "classify", str(path), *TINY_ARGS,
                             "--checkpoint", str(checkpoint), "--json"],
                            cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["clips"], report["crops"], report["frames"], report["num_classes"]) == (1, 1, T, 400)
    assert [r["index"] for r in report["top"]] == top_i.tolist()
    assert [r["label"] for r in report["top"]] == [names[i] for i in top_i.tolist()]
    assert np.allclose([r["probability"] for r in report["top"]], top_p.tolist(), atol=1e-6, rtol=0)
    assert top_p[0] - top_p[4] > 0.01  # the check above compares real, separated probabilities

    code, out, _ = run_cli([str(path), *TINY_ARGS, "--checkpoint", str(checkpoint)], capsys)
    rows = out.strip().splitlines()[1:]
    assert code == 0 and len(rows) == 5
    for row, p, i in zip(rows, top_p.tolist(), top_i.tolist()):
        rank, prob, label = row.split(maxsplit=2)
        assert label == names[i] and label in names and abs(float(prob) - p) < 1e-4


def test_four_clips_three_crops_average_the_per_view_softmax(video, checkpoint, model, capsys):
    path, frames = video
    per_view = torch.stack([direct_probabilities(model, reference_view(frames, idx, x))
                            for idx in FOUR_CLIPS for x in THREE_CROPS])  # one view at a time, built here
    names = load_labels("kinetics400")
    # Batching views changes float32 rounding only (~1e-6 on these x20 logits).
    batched = view_probabilities(model, read_views(path, T, SIZE, clips=4, crops=3), batch_size=4)
    assert torch.allclose(batched, per_view, atol=1e-5, rtol=0)

    everything = dict(classify_video(path, model, clips=4, crops=3, top_k=400, batch_size=4))
    got = torch.tensor([everything[n] for n in names])
    assert torch.equal(got, batched.mean(0))  # exactly the mean of the per-view softmax
    assert torch.allclose(got, per_view.mean(0), atol=1e-5, rtol=0)
    assert (per_view[0] - per_view.mean(0)).abs().max() > 1e-3  # the views differ: averaging is visible

    code, out, _ = run_cli([str(path), *TINY_ARGS, "--checkpoint", str(checkpoint),
                            "--clips", "4", "--crops", "3", "--json"], capsys)
    top = json.loads(out)["top"]
    assert code == 0
    assert [r["index"] for r in top] == got.topk(5).indices.tolist()
    assert [r["probability"] for r in top] == got.topk(5).values.tolist()


def test_classify_video_restores_train_mode_and_uses_labels_list(video, model):
    path, _ = video
    model.train()
    try:
        top = classify_video(path, model, labels=[f"class {i}" for i in range(400)], top_k=3)
        assert model.training
    finally:
        model.eval()
    assert len(top) == 3 and all(label.startswith("class ") for label, _ in top)
    assert top[0][1] >= top[1][1] >= top[2][1]


# -- bad input -------------------------------------------------------------------------------------------------

def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_video(checkpoint, tmp_path, capsys):
    missing = tmp_path / "nope.mp4"
    code, _, err = run_cli([str(missing), *TINY_ARGS, "--checkpoint", str(checkpoint)], capsys)
    assert_one_line_error(code, err, str(missing), "does not exist")
    with pytest.raises(VmmError, match="does not exist"):
        read_views(missing, T, SIZE)


def test_not_a_video(checkpoint, tmp_path, capsys):
    fake = tmp_path / "notes.mp4"
    fake.write_text("these are meeting notes, not a video\n")
    code, _, err = run_cli([str(fake), *TINY_ARGS, "--checkpoint", str(checkpoint)], capsys)
    assert_one_line_error(code, err, str(fake), "not a video: the file holds text")
    # FFmpeg reads JSON as subtitles: "no video stream in the container (it holds subtitle)" named no fix
    annotations = tmp_path / "test.json"
    annotations.write_text('[{"video": "a.mp4", "caption": "a dog"}]\n')
    code, _, err = run_cli([str(annotations), *TINY_ARGS, "--checkpoint", str(checkpoint)], capsys)
    assert_one_line_error(code, err, f"video {annotations}: not a video: text and no video extension; pass a video")
    # Unreadable (chmod 000 for anyone but root): the test before decoding raised PermissionError, a traceback.
    import index.discovery as discovery
    real_open = discovery.os.open

    def refuse(path, *args, **kwargs):
        if str(path) == str(fake):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(discovery.os, "open", refuse)
        code, _, err = run_cli([str(fake), *TINY_ARGS, "--checkpoint", str(checkpoint)], capsys)
    assert_one_line_error(code, err, f"video {fake}: permission denied; make the file readable")


def test_model_without_classification_head(video):
    """(A video-text model is classified zero-shot: tests/test_classify_zeroshot.py.)"""
    path, _ = video
    headless = vmm.create_model("videomamba_tiny", num_classes=0, **TINY)
    with pytest.raises(VmmError, match="no classification head .*num_classes=0"):
        classify_video(path, headless)


def test_label_count_differs_from_head(video, tmp_path, capsys):
    path, _ = video
    model10 = vmm.create_model("videomamba_tiny", num_classes=10, **TINY)
    ckpt = tmp_path / "tiny_10.pth"
    torch.save(model10.state_dict(), ckpt)
    args = [str(path), *TINY_ARGS, "--model-arg", "num_classes=10", "--checkpoint", str(ckpt)]
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, "kinetics400 has 400 names", "has 10 classes", "--labels")

    ten = tmp_path / "ten.txt"
    ten.write_text("".join(f"action {i}\n" for i in range(10)))
    code, out, _ = run_cli([*args, "--labels", str(ten)], capsys)
    assert code == 0 and len(out.strip().splitlines()) == 6 and "action " in out
    with pytest.raises(VmmError, match="3 names but the head"):
        resolve_labels(model10, ["a", "b", "c"])


def test_bad_options(video, checkpoint, capsys):
    path, _ = video
    code, _, err = run_cli([str(path), *TINY_ARGS, "--checkpoint", str(checkpoint), "--clips", "0"], capsys)
    assert_one_line_error(code, err, "--clips 0 (clips=0): must be a whole number >= 1")
    for option, name in (("--top-k", "top_k"), ("--batch-size", "batch_size"), ("--crops", "crops")):
        code, _, err = run_cli([str(path), *TINY_ARGS, "--checkpoint", str(checkpoint), option, "0"], capsys)
        assert_one_line_error(code, err, f"{option} 0 ({name}=0): must be a whole number >= 1")
    code, _, err = run_cli([str(path), *TINY_ARGS], capsys)
    assert_one_line_error(code, err, "checkpoint= (--checkpoint) is required")
    code, _, err = run_cli([str(path), *TINY_ARGS, "--model-arg", "depth"], capsys)
    assert_one_line_error(code, err, "--model-arg expects KEY=VALUE")
    with pytest.raises(VmmError, match="backend='opencv'.*must be 'auto'"):
        ClassifyOptions(backend="opencv").check()


@pytest.mark.parametrize("option", [dict(clips=2.0), dict(crops="3"), dict(top_k=3.0), dict(batch_size=None)])
def test_python_options_that_are_not_whole_numbers(video, model, option):
    """A float or None from a config file failed inside range() or topk() with a TypeError."""
    (name, value), = option.items()
    with pytest.raises(VmmError, match=rf"\({name}={value!r}\): must be a whole number >= 1"):
        classify_video(video[0], model, **option)


@pytest.mark.parametrize("name", ["clips", "crops"])
def test_read_views_refuses_no_views(video, name):
    """read_views alone ended in torch's "stack expects a non-empty TensorList"."""
    with pytest.raises(VmmError, match=rf"--{name} 0 \({name}=0\): must be a whole number >= 1"):
        read_views(video[0], T, SIZE, **{name: 0})


def test_missing_checkpoint_is_named_before_the_video_is_decoded(video, monkeypatch, tmp_path, capsys):
    """A mistyped --checkpoint was reported only once the views were decoded: minutes for a long phone video."""
    def no_decoding(*args, **kwargs):
        raise AssertionError("the video was decoded before the checkpoint was checked")
    monkeypatch.setattr(vmm.classify, "read_views", no_decoding)
    missing = tmp_path / "videomamba_m16_k400_f8_res224.ptth"
    code, _, err = run_cli([str(video[0]), *TINY_ARGS, "--checkpoint", str(missing)], capsys)
    assert_one_line_error(code, err, f"checkpoint {missing} does not exist")


def test_frames_and_resolution_follow_the_checkpoint_unless_chosen(video, tmp_path, capsys):
    """A ..._f16_res224to384.pth file runs at 16 frames and 384 px without --frames or img_size (it was squeezed
    into the config's 8 x 224 by interpolating its position tables); a size chosen on the command line wins."""
    path, _ = video
    torch.manual_seed(0)
    native = vmm.create_model("videomamba_tiny", num_classes=400, depth=2, num_frames=4, img_size=SIZE)
    ckpt = tmp_path / "videomamba_t16_k400_f4_res32.pth"
    torch.save(native.state_dict(), ckpt)
    base = [str(path), "--model", "videomamba_tiny", "--model-arg", "depth=2", "--checkpoint", str(ckpt), "--json"]
    sizes = []
    for extra in ([], ["--frames", "8"], ["--model-arg", "img_size=64"]):
        code, out, err = run_cli([*base, *extra], capsys)
        assert code == 0, err
        report = json.loads(out)
        sizes.append((report["frames"], report["img_size"]))
    assert sizes == [(4, SIZE), (8, SIZE), (4, 64)]
    # the file's own size is the model it was saved from: the same probabilities as that model run directly
    code, out, _ = run_cli(base, capsys)
    views = read_views(str(path), 4, SIZE, 1, 1)
    expected = direct_probabilities(native.eval(), views[0])
    top = json.loads(out)["top"][0]
    assert top["index"] == int(expected.argmax()) and abs(top["probability"] - float(expected.max())) < 1e-5


def test_number_of_classes_follows_the_checkpoint(video, tmp_path, capsys):
    """A fine-tune on other classes (SSv2 174, COIN 180, Breakfast 10) run with a K400 model name: its own label file
    was refused as "pass labels with 400 names", and without --labels the head mismatch was named only after the
    video was decoded. A checkpoint without a head is named as such, not as a model "built with num_classes=0"."""
    path, _ = video
    torch.manual_seed(0)
    native = vmm.create_model("videomamba_tiny", num_classes=3, **TINY).eval()
    with torch.no_grad():
        native.head.weight.mul_(20)
    ckpt = tmp_path / "tiny_3.pth"
    torch.save(native.state_dict(), ckpt)
    labels = tmp_path / "three.txt"
    labels.write_text("push\npull\nlift\n")
    code, out, err = run_cli([str(path), *TINY_ARGS, "--checkpoint", str(ckpt), "--labels", str(labels), "--json"],
                             capsys)
    assert code == 0, err
    report = json.loads(out)
    expected = direct_probabilities(native, read_views(path, T, SIZE)[0])
    assert report["num_classes"] == 3
    order = expected.argsort(descending=True).tolist()
    assert [r["label"] for r in report["top"]] == [["push", "pull", "lift"][i] for i in order]
    assert np.allclose([r["probability"] for r in report["top"]], expected.sort(descending=True).values, atol=1e-5)

    def no_decoding(*args, **kwargs):
        raise AssertionError("the video was decoded before the labels were checked")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vmm.classify, "read_views", no_decoding)
        code, _, err = run_cli([str(path), *TINY_ARGS, "--checkpoint", str(ckpt)], capsys)
        assert_one_line_error(code, err, "kinetics400 has 400 names", "has 3 classes", "with 3 names")
        headless = tmp_path / "features.pth"
        torch.save(vmm.create_model("videomamba_tiny", num_classes=0, **TINY).state_dict(), headless)
        code, _, err = run_cli([str(path), *TINY_ARGS, "--checkpoint", str(headless)], capsys)
        assert_one_line_error(code, err, f"checkpoint {headless} has no classification head")


def test_lower_level_functions_check_their_counts(video, model):
    """view_probabilities(batch_size=0) ended in range()'s "arg 3 must not be zero", top_labels(k=-1) in torch's
    "selected index k out of range"."""
    views = read_views(video[0], T, SIZE)
    for bad in (0, 2.0):
        with pytest.raises(VmmError, match=rf"\(batch_size={bad!r}\): must be a whole number >= 1"):
            view_probabilities(model, views, batch_size=bad)
    for bad in (-1, 1.0):
        with pytest.raises(VmmError, match=rf"\(top_k={bad!r}\): must be a whole number >= 1"):
            top_labels(torch.tensor([0.1, 0.2, 0.7]), ["a", "b", "c"], k=bad)
    assert top_labels(torch.tensor([0.1, 0.2, 0.7]), ["a", "b", "c"], k=9) == [("c", pytest.approx(0.7)),
                                                                            ("b", pytest.approx(0.2)),
                                                                            ("a", pytest.approx(0.1))]


# -- label lists and label maps --------------------------------------------------------------------------------

def test_label_lists_get_the_checks_of_label_files(video):
    """A list passed from Python was taken as is: with a name twice, dict(classify_video(...)) silently lost a class,
    and None or "" became a class name."""
    model3 = vmm.create_model("videomamba_tiny", num_classes=3, **TINY)
    for labels, message in ((["cat", "dog", "cat"], r"names 'cat' twice \(index 0 and index 2\)"),
                            (["cat", " ", "dog"], "empty name at index 1"),
                            (["cat", None, "dog"], "None at index 1, not a name"),
                            (["cat", "dog\nbird", "fish"], "line break at index 1")):
        with pytest.raises(VmmError, match=message):
            resolve_labels(model3, labels)
        with pytest.raises(VmmError, match=message):
            classify_video(video[0], model3, labels=labels)
    assert resolve_labels(model3, (" cat", "dog ", "bird")) == ["cat", "dog", "bird"]


def test_label_maps_are_read_in_index_order(tmp_path):
    """PySlowFast's kinetics_classnames.json, the demo's {"0": name} map and id,name CSVs were read as plain lines:
    one class named '{"\\"a b\\"": 2, ...}' or classes named "0,abseiling"."""
    expected = ["cat", "dog", "a b", "x, y"]
    files = {"pyslowfast.json": json.dumps({'"a b"': 2, "dog": 1, '"x, y"': 3, "cat": 0}),
             "demo.json": json.dumps({"3": "x, y", "0": "cat", "1": "dog", "2": "a b"}),
             "list.json": "\ufeff" + json.dumps(expected),
             "header.csv": 'id,name\r\n2,a b\r\n0,cat\r\n\r\n3,"x, y"\r\n1,dog\r\n',
             "one_based.csv": '1,cat\n2,dog\n3,a b\n4,"x, y"\n',
             "names.CSV": 'cat\ndog\na b\n"x, y"\n\n'}
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8", newline="")
        assert load_labels(tmp_path / name) == expected, name


@pytest.mark.parametrize("name, text, message", [
    ("indexed.txt", "0,abseiling\n1,air drumming\n2,answering questions\n", "starts each line with its class number"),
    ("header.txt", "id name\n1 abseiling\n2 air drumming\n", r"line 2: '1 abseiling'"),
    ("gap.json", json.dumps({"a": 0, "b": 2}), "no class index 1"),
    ("twice.csv", "id,name\n0,a\n0,b\n", "class index 0 twice"),
    ("unquoted.json", json.dumps({'"a"': 0, "a": 1}), r"names 'a' twice \(index 0 and index 1\)"),
    ("broken.json", '{"a": 0,', "is not valid JSON"),
    ("nested.json", json.dumps({"labels": ["a", "b"]}), "JSON of another shape"),
    ("numbers.json", "[0, 1]", "has 0 at index 0, not a name"),
    ("name_first.csv", "abseiling,0\nair drumming,1\n", "has the row 'air drumming,1'; write rows index,name"),
    ("middle.txt", "a\n\nb\n", "empty name at line 2"),
    ("tabs.txt", "0\tabseiling\n1\tair drumming\n", r"\(line 2: '1\\tair drumming'\)"),  # shown as repr shows it
    # Excel's CSV where the comma is the decimal mark: each row was read as one name, "0;abseiling"
    ("excel.csv", "id;name\n0;abseiling\n1;air drumming\n", r"starts each row with its class number \(row 2: "
     r"'0;abseiling'\); separate the number and the name with a comma"),
    ("negative.json", json.dumps({"a": -1, "b": 0}), "has class index -1; number the classes 0 to N-1"),  # not "twice"
    # a negative first row passed for a header, and its class was dropped; JSON keys were "another shape"
    ("negative.csv", "-1,background\n0,cat\n1,dog\n", "has class index -1; number the classes 0 to N-1"),
    ("negative_keys.json", json.dumps({"-1": "background", "0": "cat"}), "has class index -1; number the classes"),
    ("blank.txt", "\n \n", "has no names"),
])
def test_bad_label_files_are_named_with_the_fix(tmp_path, name, text, message):
    (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(VmmError, match=f"label file {re.escape(str(tmp_path / name))} .*{message}"):
        load_labels(tmp_path / name)


def test_label_lines_are_split_only_at_line_ends(tmp_path):
    """str.splitlines also splits at U+2028, U+0085 and form feeds, so a label holding one became two classes and the
    count differed from the file's lines (wc -l)."""
    path = tmp_path / "odd.txt"
    path.write_text("cat\ndog\u2028walk\nbird\x0c\nfish\x85eye\r\n\n", encoding="utf-8", newline="")
    assert load_labels(path) == ["cat", "dog\u2028walk", "bird", "fish\x85eye"]


def test_cli_reads_pyslowfast_label_map(video, checkpoint, tmp_path, capsys):
    """The alphabetical Kinetics map of PySlowFast and PyTorchVideo, keys out of order and some names quoted."""
    alphabetical = sorted(load_labels("kinetics400"))
    entries = [(f'"{n}"' if " " in n else n, i) for i, n in enumerate(alphabetical)]
    labels = tmp_path / "kinetics_classnames.json"
    labels.write_text(json.dumps(dict(entries[::-1])))
    code, out, err = run_cli([str(video[0]), *TINY_ARGS, "--checkpoint", str(checkpoint), "--labels", str(labels),
                              "--json"], capsys)
    assert code == 0, err
    assert [r["label"] for r in json.loads(out)["top"]] == [alphabetical[r["index"]] for r in json.loads(out)["top"]]

    labels = tmp_path / "label_map.txt"
    labels.write_text("".join(f"{i},{n}\n" for i, n in enumerate(alphabetical)))
    code, _, err = run_cli([str(video[0]), *TINY_ARGS, "--checkpoint", str(checkpoint), "--labels", str(labels)],
                           capsys)
    assert_one_line_error(code, err, f"label file {labels} starts each line with its class number", ".csv")


# -- several videos in one call --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folder(tmp_path_factory, video):
    """clips/ with two videos (one in a subfolder), a text file named .mp4 and a truncated MP4."""
    root = tmp_path_factory.mktemp("many") / "clips"
    (root / "sub").mkdir(parents=True)
    frames = np.random.default_rng(5).integers(0, 256, (12, H, W, 3), dtype=np.uint8)
    write_video(root / "sub" / "noise [1].mkv", frames)
    (root / "a.mkv").write_bytes(video[0].read_bytes())
    (root / "notes.mp4").write_text("meeting notes\n")
    (root / "cut.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(200))
    (root / "readme.txt").write_text("not a video, no video extension: skipped in a folder\n")
    return root


def expected_top(model, path, k=5):
    probs = direct_probabilities(model, read_views(path, T, SIZE)[0])
    values, indices = probs.topk(k)
    return indices.tolist(), values.tolist()


def test_cli_classifies_several_videos_and_folders_with_one_model_load(folder, checkpoint, model, capsys,
                                                                       monkeypatch):
    """Several VIDEOs in one call, a folder among them: the model loads once, each video gets its own JSON line
    (the single-video object), and the bad ones one error line each while the others are still classified."""
    import vmm.factory
    loads = []
    real_load = vmm.factory.load_weights
    monkeypatch.setattr(vmm.factory, "load_weights", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    missing = folder / "gone.mp4"
    code, out, err = run_cli([str(folder / "a.mkv"), str(missing), str(folder), *TINY_ARGS,
                              "--checkpoint", str(checkpoint), "--json"], capsys)
    assert code == 2 and len(loads) == 1
    lines = [json.loads(line) for line in out.splitlines()]
    errors = {r["video"]: r["error"] for r in lines if "error" in r}
    results = [r for r in lines if "error" not in r]
    # missing is named at once, before the model builds; the folder's text .mp4 too; the truncated one as decoded
    assert list(errors) == [str(missing), str(folder / "notes.mp4"), str(folder / "cut.mp4")]
    assert "does not exist" in errors[str(missing)] and "holds text" in errors[str(folder / "notes.mp4")]
    assert err.splitlines() == [f"error: {e}" for e in errors.values()]
    # a.mkv was given alone and again in the folder: classified once, in the order given
    assert [r["video"] for r in results] == [str(folder / "a.mkv"), str(folder / "sub" / "noise [1].mkv")]
    for report in results:
        indices, values = expected_top(model, report["video"])
        assert [r["index"] for r in report["top"]] == indices
        assert np.allclose([r["probability"] for r in report["top"]], values, atol=1e-5, rtol=0)
        assert (report["frames"], report["num_classes"]) == (T, 400)
    assert results[0]["top"] != results[1]["top"]  # two different videos, two different answers

    code, out, err = run_cli([str(folder / "a.mkv"), str(folder / "sub"), *TINY_ARGS, "--checkpoint",
                              str(checkpoint), "--top-k", "2"], capsys)
    blocks = out.split("\n\n")
    assert code == 0 and err == "" and len(blocks) == 2
    for block, name in zip(blocks, ["a.mkv", "sub/noise [1].mkv"]):
        header, *rows = block.strip().splitlines()
        assert header.startswith(f"{folder / name}: 1 clip x 1 crop of {T} frames") and len(rows) == 2


def test_globs_tilde_and_inputs_that_name_no_video(folder, checkpoint, tmp_path, capsys, monkeypatch):
    """A quoted glob (Windows shells never expand one) and a quoted ~ were read as file names; a folder or glob
    with no videos is named as such."""
    from vmm.classify import find_videos
    monkeypatch.setenv("HOME", str(folder.parent))
    empty = tmp_path / "empty"
    empty.mkdir()
    videos, problems = find_videos([str(folder / "**" / "*.mkv"), "~/clips/a.mkv", str(folder / "*.avi"),
                                    str(empty)])
    assert videos == [str(folder / "a.mkv"), str(folder / "sub" / "noise [1].mkv")]
    assert [p for p, _ in problems] == [str(folder / "*.avi"), str(empty)]
    assert "no file matches this pattern" in problems[0][1] and "no video files in this folder" in problems[1][1]
    # a name with glob characters that exists is that file, not a pattern
    assert find_videos(folder / "sub" / "noise [1].mkv") == ([str(folder / "sub" / "noise [1].mkv")], [])

    code, out, err = run_cli([str(empty), str(folder / "*.avi"), *TINY_ARGS, "--checkpoint", str(checkpoint)],
                             capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 2 and err.startswith(f"error: {empty}: no video")


def test_a_bad_lone_video_is_named_before_the_weights_load(folder, capsys):
    """With one video the weights load only once it has decoded: 'default' would be fetched from the hub first."""
    code, out, err = run_cli([str(folder / "cut.mp4"), *TINY_ARGS, "--checkpoint", "default", "--json"], capsys)
    assert code == 2
    assert err.startswith(f"error: {folder / 'cut.mp4'}: ") and len(err.splitlines()) == 1
    assert json.loads(out) == {"video": str(folder / "cut.mp4"), "error": err[len("error: "):].strip()}


def test_classify_videos_yields_each_result_and_keeps_going(folder, model, monkeypatch):
    """The Python form: one result per video as it is done, errors as results, options checked at the call."""
    from vmm.classify import VideoLabels, classify_videos
    with pytest.raises(VmmError, match=r"\(clips=0\)"):
        classify_videos([str(folder)], model, clips=0)  # before any video is read, not at the first next()
    results = list(classify_videos([str(folder), str(folder / "gone.mp4")], model, top_k=3))
    assert [(Path(r.video).name, r.error is None) for r in results] == [
        ("notes.mp4", False), ("gone.mp4", False), ("a.mkv", True), ("cut.mp4", False), ("noise [1].mkv", True)]
    for result in results:
        assert isinstance(result, VideoLabels)
        if result.error is None:
            assert result.top == classify_video(result.video, model, top_k=3) and result.seconds > 0
        else:
            assert result.top == [] and result.video in result.error and "\n" not in result.error

    def decoder_bug(path, *args):  # what a decoder raises on a file no test can produce on demand
        if path.endswith("a.mkv"):
            raise IndexError("list index out of range")
        return real_read_views(path, *args)
    real_read_views = vmm.classify.read_views
    monkeypatch.setattr(vmm.classify, "read_views", decoder_bug)
    results = list(classify_videos([str(folder / "a.mkv"), str(folder / "sub")], model))
    assert results[0].error == f"{folder / 'a.mkv'}: cannot be decoded (IndexError: list index out of range); " \
                               "convert it (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4) and try again"
    assert results[1].error is None and len(results[1].top) == 5


def test_model_folder_with_a_checkpoint_is_refused(video, checkpoint, model, tmp_path, capsys):
    """--model FOLDER --checkpoint FILE silently replaced the folder's own weights (vmm encode and search refuse
    it); the folder alone classifies with its weights."""
    folder = vmm.save_pretrained(model, tmp_path / "classifier")
    code, _, err = run_cli([str(video[0]), "--model", str(folder), "--checkpoint", str(checkpoint)], capsys)
    assert_one_line_error(code, err, f"model= (--model) {folder} is a model folder with its own weights",
                          "drop checkpoint= (--checkpoint)")
    code, out, _ = run_cli([str(video[0]), "--model", str(folder), "--json"], capsys)
    indices, _ = expected_top(model, video[0])
    assert code == 0 and [r["index"] for r in json.loads(out)["top"]] == indices


def test_an_empty_video_path_is_named(video, checkpoint, capsys):
    """An unset shell variable ("$VIDEO") gave "video  does not exist or is not a file"."""
    code, out, err = run_cli(["", str(video[0]), *TINY_ARGS, "--checkpoint", str(checkpoint)], capsys)
    assert_one_line_error(code, err, "a VIDEO is an empty path ('')")
    assert out == ""


def test_a_classifiers_eval_transform_is_the_k400_centre_crop_not_the_retrieval_squash():
    """create_model_and_transforms gave classifiers the retrieval models' whole-frame bicubic squash, while vmm classify
    (and the official K400 validation transform) resize the short side and take the centre square."""
    import vmm
    from vmm.classify import K400EvalTransform
    from vmm.transforms import EvalTransform
    frames = np.random.default_rng(0).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
    _, _, classifier_tf = vmm.create_model_and_transforms("videomamba_tiny", depth=1, num_frames=2, img_size=32)
    assert isinstance(classifier_tf, K400EvalTransform)
    assert torch.equal(classifier_tf(frames), make_views([frames], 32, 1)[0])
    assert torch.equal(classifier_tf(list(frames)), classifier_tf(torch.from_numpy(frames)))
    _, _, encoder_tf = vmm.create_model_and_transforms("videomamba_tiny", depth=1, num_frames=2, img_size=32,
                                                       num_classes=0)
    assert isinstance(encoder_tf, EvalTransform)
    assert not torch.allclose(encoder_tf(frames), classifier_tf(frames))


@pytest.mark.parametrize("size", [0, 2.5, True])
def test_k400_eval_transform_refuses_a_size_that_is_no_pixel_count(size):
    from vmm.classify import K400EvalTransform
    with pytest.raises(VmmError, match=rf"^size={size!r}: must be a whole number of pixels >= 1, e\.g\. size=224$"):
        K400EvalTransform(size)


def test_k400_eval_transform_refuses_a_file_name_for_frames_in_one_line():
    from vmm.classify import K400EvalTransform
    from vmm.transforms import FramesError
    with pytest.raises(FramesError, match=r"^frames are a file name \('clip\.mp4'\), not decoded frames; decode the "):
        K400EvalTransform(32)("clip.mp4")
