"""VideoTextEncoder and ColorHistogramEncoder: what a library stores for a clip, checked against `vmm eval` on real
videos, and the inputs they must refuse or take in any batch."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import vmm
from index.encoder import ColorHistogramEncoder
from tests import videos
from tests.tiny_model import TINY, save_tiny_model
from vmm.embedder import VideoTextEncoder
from vmm.errors import VmmError


@pytest.fixture(scope="module")
def enc():
    torch.manual_seed(0)
    return VideoTextEncoder(vmm.create_model("videomamba_m16_mm", **TINY), device="cpu", batch_size=8)


def test_a_library_scores_a_video_as_vmm_eval_does(tmp_path):
    """Odd videos (portrait, fewer frames than the model takes, one frame, tiny odd-sized, flat grey) indexed by a
    library and encoded by `vmm eval` (its decoder pool, transform and batches): the library's score of a query
    is the eval's index-row score, and the official ITC (mean over frames of the per-frame cosine) is that score
    times the length of the mean of the per-frame vectors."""
    from index.decode import DecodeOptions
    from retrieval.evaluate import EvalConfig, _encode_texts, _encode_videos, _load_eval_model, _start_runtime
    from retrieval.library import VideoLibrary
    from vmm.data.text import clean_caption
    model = save_tiny_model(tmp_path / "model")
    folder = tmp_path / "vids"
    folder.mkdir()
    paths = [videos.write_moving_square(str(folder / "portrait.mp4"), seconds=2.0, width=48, height=96),
             videos.write_frames(str(folder / "three.mp4"), videos.moving_square_frames(3)),
             videos.write_frames(str(folder / "one.mp4"), videos.moving_square_frames(1)),
             videos.write_frames(str(folder / "tiny.mp4"), videos.moving_square_frames(10, 17, 9, side=3),
                                 codec="h264-444"),
             videos.write_solid(str(folder / "grey.mp4"), (128, 128, 128))]
    query = "A white square, moving to the right!"
    library = VideoLibrary.create(tmp_path / "lib", model=str(model))
    library.add(paths)
    scores = {Path(hit.path).name: hit.score for hit in library.search(text=query, k=len(paths))}
    library.close()

    config = EvalConfig("msrvtt", "unused.json", str(folder), model=str(model), frames=TINY["vision"]["num_frames"],
                        device="cpu")
    runtime = _start_runtime(config)
    net, transform, tokenizer, *_ = _load_eval_model(config, runtime.device, runtime.dtype)
    frames = _encode_videos(net, transform, [Path(p) for p in paths], DecodeOptions(num_frames=config.frames,
                            window=math.inf), 2, runtime, workers=0).frames  # (videos, frames, dim)
    # the eval reads captions through pre_text; the library cleans the query the same way
    text = _encode_texts(net, tokenizer, [clean_caption(query)], 32, 8, runtime).emb[0]
    mean = frames.mean(1)
    eval_index = torch.nn.functional.normalize(mean, dim=-1) @ text
    itc = (frames @ text).mean(1)
    for path, expected, official, length in zip(paths, eval_index.tolist(), itc.tolist(), mean.norm(dim=-1).tolist()):
        assert scores[Path(path).name] == pytest.approx(expected, abs=1e-6), path
        assert official == pytest.approx(length * scores[Path(path).name], abs=1e-6), path


def test_frames_that_are_not_uint8_are_refused(enc):
    """Float frames in 0-1 were read as 0-255, came out near black and gave a vector without a word."""
    clip = np.random.default_rng(0).integers(0, 256, (enc.num_frames, 20, 24, 3), dtype=np.uint8)
    for bad, name in [(clip / 255.0, "float64"), (torch.from_numpy(clip).float() / 255, "float32"),
                      (torch.from_numpy(clip).to(torch.bfloat16), "bfloat16"), (clip.astype(np.int64), "int64")]:
        with pytest.raises(VmmError, match=rf"^clip 1 is {name}, not uint8; .*astype\(np.uint8\)$"):
            enc.encode_clips([clip, bad])
    assert enc.encode_clips([clip, torch.from_numpy(clip), list(clip)]).shape == (3, enc.dim)


def test_images_and_clips_share_a_call_whatever_the_batch_size(enc):
    """A one-frame clip (an image: no temporal embedding) in a batch with full clips failed in torch.stack, while
    the same clips one by one encoded: every vector and ITM score must not depend on the batching."""
    rng = np.random.default_rng(1)
    t = enc.num_frames
    clips = [rng.integers(0, 256, (n, 40, 48, 3), dtype=np.uint8) for n in (t, 1, 1, t, t, 1, t)]
    alone = np.concatenate([enc.encode_clips([c]) for c in clips])
    itm_alone = np.concatenate([enc.itm_scores_for("a red square", [c]) for c in clips])
    for batch_size in (2, 3, 8):
        batched = VideoTextEncoder(enc.model, device="cpu", batch_size=batch_size, tokenizer=enc.tokenizer)
        np.testing.assert_allclose(batched.encode_clips(clips), alone, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(batched.itm_scores_for("a red square", clips), itm_alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(0, 8, 8, 3), (4, 0, 8, 3), (4, 8, 0, 3)])
def test_color_histogram_refuses_an_empty_clip(shape):
    """A clip without frames or pixels gave a NaN vector (0/0 statistics) and a page of RuntimeWarnings."""
    with pytest.raises(ValueError, match=rf"got an empty one of shape \({shape[0]}, {shape[1]}, {shape[2]}, 3\)"):
        ColorHistogramEncoder().encode_clips([np.zeros(shape, np.uint8)])
    assert np.isfinite(ColorHistogramEncoder().encode_clips([np.zeros((1, 1, 1, 3), np.uint8)])).all()


@pytest.mark.parametrize("kwargs, message", [(dict(bins=2.5), "bins a whole number >= 2, got 2.5"),
                                             (dict(grid=True), "grid a whole number >= 1, got True"),
                                             (dict(num_frames="8"), "num_frames a whole number >= 1, got '8'"),
                                             (dict(max_side=3), "max_side a whole number >= 4, got 3")])
def test_color_histogram_settings_are_whole_numbers(kwargs, message):
    """bins=2.5 gave dim 37.625 and failed at the first clip; num_frames="8" failed comparing str with int."""
    with pytest.raises(ValueError, match=f"^ColorHistogramEncoder needs {message}$"):
        ColorHistogramEncoder(**kwargs)
    # a NumPy integer (a count read from an array) is a setting like any other, with the same hash
    assert ColorHistogramEncoder(num_frames=np.int64(8)).weights_hash == ColorHistogramEncoder().weights_hash
