"""VideoTextEncoder and ColorHistogramEncoder: what a library stores for a clip, checked against `vmm eval` on real
videos, and the inputs they must refuse or take in any batch."""
import math
import re
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


CLIP = np.random.default_rng(0).integers(0, 256, (TINY["vision"]["num_frames"], 20, 24, 3), dtype=np.uint8)
GREY = CLIP[..., :1]


@pytest.mark.parametrize("bad, canonical", [
    (CLIP / 255.0, CLIP), (torch.from_numpy(CLIP).float() / 255, CLIP), (list(CLIP / 255.0), CLIP),
    (torch.from_numpy(CLIP).to(torch.bfloat16), CLIP), (CLIP.astype(np.float32), CLIP),
    (CLIP.astype(np.int64), CLIP), (torch.from_numpy(CLIP).to(torch.int16), CLIP),
    (CLIP.astype(np.uint16) * 257, CLIP), (torch.from_numpy(CLIP).to(torch.uint16) * 257, CLIP),
    (CLIP > 127, np.where(CLIP > 127, 255, 0).astype(np.uint8)),
    (CLIP.transpose(0, 3, 1, 2), CLIP), (torch.from_numpy(CLIP).permute(0, 3, 1, 2), CLIP),
    (GREY, np.repeat(GREY, 3, axis=-1)), (torch.from_numpy(GREY), np.repeat(GREY, 3, axis=-1)),
    (GREY[..., 0], np.repeat(GREY, 3, axis=-1)), (np.concatenate([CLIP, GREY], -1), CLIP), (CLIP[0], CLIP[:1])])
def test_a_clip_the_model_cannot_take_is_told_a_fix_that_runs(enc, bad, canonical):
    """Every int64 clip of 0-255 values, 0-255 floats and 16-bit frames were told to "convert 0-1 floats with
    (frames * 255)", which wraps them; grey, RGBA, channels-first clips and single frames were told to "convert"
    them without how. The fix the message gives, run on the clip, must give the clip the model encodes."""
    with pytest.raises(VmmError) as refused:
        enc.encode_clips([CLIP, bad])
    message = str(refused.value)
    assert message.startswith("clip 1 ") and "\n" not in message, message
    fixed = eval(message.rsplit(": ", 1)[1], {"np": np, "torch": torch, "clip": bad})
    fixed = fixed.numpy() if isinstance(fixed, torch.Tensor) else fixed
    assert fixed.dtype == np.uint8 and np.array_equal(fixed, canonical), message
    np.testing.assert_array_equal(enc.encode_clips([fixed]), enc.encode_clips([canonical]))


@pytest.mark.parametrize("bad, message", [
    (CLIP.astype(np.int32) - 5, r"int32, not uint8 \(0-255\); values from -5 to 250: give the decoded frames, "
                                r"before any normalisation"),
    ((CLIP / 255.0 - 0.45) / 0.225, r"float64, not uint8 \(0-255\); values from -2 to 2\.44\d*: give the decoded"),
    (np.full(CLIP.shape, np.nan, np.float32), r"float32, not uint8 \(0-255\); NaN values; give decoded frames"),
    (torch.from_numpy(CLIP).to(torch.complex64), r"complex64, not uint8 \(0-255\); give decoded RGB frames$")])
def test_values_no_conversion_can_trust_are_named(enc, bad, message):
    """Normalised frames (negative values), NaN and complex numbers were told to multiply by 255."""
    with pytest.raises(VmmError, match=rf"^clip 0 is {message}"):
        enc.encode_clips([bad])


def test_frames_of_different_sizes_are_named_with_both_sizes(enc):
    """A list of frames of two sizes failed in numpy: "setting an array element with a sequence. The requested
    array has an inhomogeneous shape after 1 dimensions"."""
    from PIL import Image
    frames = [Image.fromarray(f) for f in CLIP]
    frames[2] = frames[2].resize((30, 16))
    message = (r"^frame 2 of clip 1 is 16 x 30 pixels \(height x width\), frame 0 20 x 24; resize the frames to one "
               r"size, e.g. with PIL: image.resize\(\(24, 20\)\)$")
    with pytest.raises(VmmError, match=message):
        enc.encode_clips([CLIP, frames])
    with pytest.raises(ValueError, match=message.replace("clip 1", "frames")):
        enc.transform(frames)
    frames[2] = frames[2].resize((24, 20))  # the fix
    assert enc.encode_clips([frames]).shape == (1, enc.dim)
    grey = list(GREY[..., 0])
    grey[1] = CLIP[1]
    with pytest.raises(VmmError, match=r"^frame 1 of clip 0 has shape \(20, 24, 3\), frame 0 \(20, 24\); give "):
        enc.encode_clips([grey])


def test_every_form_of_a_clip_encodes_as_its_uint8_array(enc):
    """Tensors, lists of frames and PIL images of any mode (converted to RGB as PIL does), 5-D batches and views
    give the vectors of the plain (T, H, W, 3) uint8 array; grey PIL lists were refused while the transform took
    them."""
    from PIL import Image
    rgba = np.concatenate([CLIP, GREY], -1)
    grey = np.repeat(GREY, 3, axis=-1)
    forms = [(torch.from_numpy(CLIP), CLIP), (list(CLIP), CLIP), (list(torch.from_numpy(CLIP)), CLIP),
             ([Image.fromarray(f) for f in CLIP], CLIP), ([Image.fromarray(f, "RGBA") for f in rgba], CLIP),
             ([Image.fromarray(f[..., 0]) for f in GREY], grey), (np.asfortranarray(CLIP), CLIP),
             (torch.from_numpy(CLIP.copy()).flip(2).flip(2), CLIP), ([Image.fromarray(CLIP[0])], CLIP[:1])]
    canonical = enc.encode_clips([c for _, c in forms])
    np.testing.assert_array_equal(enc.encode_clips([f for f, _ in forms]), canonical)
    np.testing.assert_array_equal(enc.encode_clips(np.stack([CLIP, grey])), canonical[[0, 5]])


@pytest.mark.parametrize("shape", [(2, 3), (8, 2000), (1, 1)])
def test_frames_smaller_than_the_model_or_very_wide_are_squashed_as_the_model_is_fed(enc, shape):
    """Frames smaller than the model's input or of any aspect ratio: the official squash resize, no crop."""
    clip = np.random.default_rng(1).integers(0, 256, (enc.num_frames, *shape, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = enc.model.encode_video(enc.transform(clip)[None]).numpy()
    np.testing.assert_allclose(enc.encode_clips([clip]), expected, rtol=1e-5, atol=1e-6)


def test_a_file_name_is_told_how_to_decode_it(enc, tmp_path):
    """A video's path was "clip 0 is <U25, not uint8 ... convert 0-1 floats", a list of them "clip 0 is object";
    the decoding the message gives must run as written and give the vector of a library's video query."""
    import math
    import index
    from retrieval.library import read_query_clip
    path = videos.write_frames(str(tmp_path / "vidéo 1.mp4"), videos.moving_square_frames(12))
    missing = tmp_path / "missing.mp4"
    for clips, named in [(path, path), (Path(path), path), ([path], path), ([CLIP, missing], str(missing))]:
        with pytest.raises(VmmError, match=rf"file name \({re.escape(repr(named))}\).*; decode the video first: "
                                           rf"\[?index\.decode_video\(path, num_frames=4, ") as refused:
            enc.encode_clips(clips)
        decoded = eval(str(refused.value).rsplit(": ", 1)[1], {"index": index, "math": math, "path": path})
        decoded = decoded if isinstance(decoded, list) else [decoded]
        assert [c.shape for c in decoded] == [(4, 48, 64, 3)]
        np.testing.assert_array_equal(enc.encode_clips(decoded), enc.encode_clips([read_query_clip(path, 4)]))
    with pytest.raises(ValueError, match=r"^frames are a file name \('.*'\), not decoded frames; decode the video "
                                         r"first: index\.decode_video\(path, window=math\.inf\)\[1\]\[0\]\.frames$"):
        enc.transform(Path(path))


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
    # their tokens cannot share one tensor (an image has fewer): torch.cat's "Sizes of tensors must match" came after
    # encoding them all
    with pytest.raises(VmmError, match=rf"^return_tokens needs clips of one frame count, got {t} \(clip 0\) and 1 "
                                       r"\(clip 1\); encode images and clips in separate calls$"):
        enc.encode_clips(clips, return_tokens=True)
    vecs, tokens = enc.encode_clips(clips[1:3], return_tokens=True)
    np.testing.assert_allclose(vecs, alone[1:3], rtol=1e-5, atol=1e-6)
    assert tokens.shape[0] == 2


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


@pytest.mark.parametrize("clips, message", [
    ([np.zeros((4, 8, 8), np.uint8)], r"clip 0 has shape \(4, 8, 8\), not \(frames, height, width, 3\); for grey"),
    ([np.zeros((4, 8, 8, 3), np.uint8), np.zeros((4, 8, 8, 4), np.uint8)], r"clip 1 has shape \(4, 8, 8, 4\), not"),
    ([torch.zeros((4, 3, 8, 8), dtype=torch.uint8)], r"clip 0 has shape \(4, 3, 8, 8\), not .* channels last: clip"),
    ([np.zeros((4, 8, 8, 3), np.uint8), np.zeros((4, 0, 8, 3), np.uint8)], r"clip 1 of shape \(4, 0, 8, 3\) is empty"),
    ([np.zeros((0, 8, 8, 3), np.uint8)], r"clip 0 of shape \(0, 8, 8, 3\) is empty; a clip needs frames"),
    (None, r"^encode_clips takes a list of uint8 clips \(T, H, W, 3\), got NoneType$"),
    ([None], r"^clip 0 is NoneType, not image data; give a \(frames, height, width, 3\) uint8 array or tensor, or a "),
    ([[]], r"^clip 0 is an empty list; a clip needs at least one frame$"),
    ([[CLIP[0], "frame.png"]], r"^frame 1 of clip 0 is str, not an image; give frames as \(height, width, 3\) "),
    ({"a.mp4": CLIP}, r"^encode_clips takes a list of clips, got a dict; pass list\(clips.values\(\)\)$"),
    (CLIP[0], r"^encode_clips takes .* got one frame of shape \(20, 24, 3\); for one image, pass \[frame\[None\]\]$")])
def test_clips_the_model_cannot_take_are_named(enc, clips, message):
    """A grey, RGBA or channels-first clip failed with a ValueError that did not say which clip, an empty one with
    torch's "Input and output sizes should be greater than 0", one of 0 frames was told to rebuild the model with
    num_frames=0, None with a TypeError or "clip 0 is object, not uint8", a dict's keys were taken for clips."""
    with pytest.raises(VmmError, match=message):
        enc.encode_clips(clips)


def test_clips_may_come_from_any_iterable_and_itm_checks_them_too(enc):
    """A generator was read by the dtype check and then had no len(); itm_scores_for given one clip blamed
    encode_clips."""
    clips = [np.random.default_rng(i).integers(0, 256, (enc.num_frames, 20, 24, 3), dtype=np.uint8) for i in (0, 1)]
    np.testing.assert_array_equal(enc.encode_clips(c for c in clips), enc.encode_clips(clips))
    with pytest.raises(VmmError, match=r"^itm_scores_for takes a list of clips .* got one clip of shape"):
        enc.itm_scores_for("a dog", clips[0])
    with pytest.raises(VmmError, match=r"^clip 0 has shape \(4, 20, 24\), not"):
        enc.itm_scores_for("a dog", [clips[0][..., 0]])
    # several texts were refused by encode_texts with "texts[0] is ['a dog'] (list), not a string; pass a list of
    # strings", advice that had just been followed
    for text in (["a dog"], None):
        with pytest.raises(VmmError, match=rf"^itm_scores_for takes one text \(a string\), got {type(text).__name__}; "
                                           "call it once per text$"):
            enc.itm_scores_for(text, clips)


def test_read_only_clips_encode_without_a_warning(tmp_path):
    """Clips memory-mapped from .npy files (np.load(mmap_mode="r")) are read-only: torch.from_numpy wrapped them
    with a UserWarning that writing to the tensor "will result in undefined behavior". In a fresh process, since
    torch gives that warning once per process."""
    import subprocess
    import sys
    clips = np.random.default_rng(0).integers(0, 256, (2, TINY["vision"]["num_frames"], 20, 24, 3), dtype=np.uint8)
    np.save(tmp_path / "clips.npy", clips)
    script = f"""
import numpy as np, torch, vmm
from tests.tiny_model import TINY
from vmm.embedder import VideoTextEncoder
mapped = np.load({str(tmp_path / "clips.npy")!r}, mmap_mode="r")
assert not mapped.flags.writeable
enc = VideoTextEncoder(vmm.create_model("videomamba_m16_mm", **TINY), device="cpu")
np.testing.assert_array_equal(enc.encode_clips(mapped), enc.encode_clips(np.array(mapped)))
assert torch.equal(enc.transform(mapped[0]), enc.transform(np.array(mapped[0])))
"""
    done = subprocess.run([sys.executable, "-W", "error", "-c", script], cwd=Path(__file__).parent.parent,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_transforms_refuse_empty_frames():
    """Frames of 0 pixels failed in the resize with "Input and output sizes should be greater than 0"."""
    from vmm.transforms import EvalTransform, TrainTransform
    for shape in [(4, 0, 8, 3), (4, 8, 0, 3), (0, 8, 8, 3)]:
        for transform in (EvalTransform(32), TrainTransform(32)):
            with pytest.raises(ValueError, match=rf"^frames of shape \({', '.join(map(str, shape))}\) are empty; "):
                transform(np.zeros(shape, np.uint8))


def test_a_pooling_that_changes_the_vectors_changes_the_manifest(enc):
    """frame_mode="per_frame", keep_temporal=False, another pool_type or norm_eps give other vectors from the same
    weights, so the same name, hash and preprocessing: a library built with the released setting took them in."""
    from index.catalog import LibraryManifest

    def manifest(encoder):
        return LibraryManifest.for_encoder(encoder, window=10.0, stride=5.0, max_seconds=None)
    # the released setting keeps the description libraries were built with, so they still open
    assert enc.preprocessing["pooling"] == "normalised mean of per-frame embeddings"
    clip = np.random.default_rng(0).integers(0, 256, (enc.num_frames, 32, 32, 3), dtype=np.uint8)
    for change in [dict(frame_mode="per_frame"), dict(keep_temporal=False), dict(pool_type="cls"),
                   dict(norm_eps=1e-6)]:
        other = vmm.create_model("videomamba_m16_mm", **{**TINY, "vision": {**TINY["vision"], **change}})
        other.load_state_dict(enc.model.state_dict())
        other = VideoTextEncoder(other, device="cpu", tokenizer=enc.tokenizer)
        assert other.weights_hash == enc.weights_hash
        assert not np.array_equal(other.encode_clips([clip]), enc.encode_clips([clip])), change
        # the entry that differs, not the whole dict cut at 80 characters before "pooling"
        name, value = next(iter(change.items()))
        mismatch = manifest(enc).model_mismatch(manifest(other))
        assert mismatch.startswith("preprocessing['pooling'] is 'normalised mean of per-frame embeddings' in the "
                                   "library but ") and f"{name}={value!r}" in mismatch, mismatch
        assert manifest(other).model_mismatch(manifest(other)) is None


def test_an_empty_text_in_a_batch_is_named(enc):
    """One blank caption among thousands was "empty query text" with no hint which."""
    with pytest.raises(VmmError, match=r"^empty query text \(texts\[2\]\); give some words to search for$"):
        enc.encode_texts(["a dog", "a cat", " \t", "rain"])
    with pytest.raises(VmmError, match=r"^empty query text; give some words to search for$"):
        enc.encode_texts("")


def test_weights_hash_follows_weights_changed_in_place():
    """The hash was computed once: a model trained on (optimiser steps and load_state_dict write in place) between
    two indexing runs kept its first hash, and its vectors joined a library of the old weights."""
    from vmm.embedder import _state_dict_hash
    torch.manual_seed(0)
    encoder = VideoTextEncoder(vmm.create_model("videomamba_m16_mm", **TINY), device="cpu")
    first = encoder.weights_hash
    torch.manual_seed(1)
    encoder.model.load_state_dict(vmm.create_model("videomamba_m16_mm", **TINY).state_dict())
    assert encoder.weights_hash == _state_dict_hash(encoder.model) != first
    with torch.no_grad():
        encoder.model.vision_proj.bias.add_(1.0)
    assert encoder.weights_hash == _state_dict_hash(encoder.model)
    encoder.encode_clips([np.zeros((encoder.num_frames, 32, 32, 3), np.uint8)])  # a forward changes no weight
    assert encoder.weights_hash == _state_dict_hash(encoder.model)


def test_many_texts_are_encoded_in_bounded_batches(enc, monkeypatch):
    """All texts went through the text tower in one forward: 8000 captions took 3.6 GB of activations with vmm_nano
    on CPU, and a corpus of 100k would not fit. Batches of 256 (the official evaluation's) give the same rows."""
    texts = [f"clip {i}: a {('red', 'green', 'blue')[i % 3]} square moves {i % 7} steps" for i in range(300)]
    rows = []
    encode_text = enc.model.encode_text
    monkeypatch.setattr(enc.model, "encode_text", lambda ids, *args, **kw: rows.append(len(ids)) or
                        encode_text(ids, *args, **kw))
    vecs, hidden, mask = enc.encode_texts(texts, return_hidden=True)
    assert rows == [256, 44] and vecs.shape == (300, enc.dim) and hidden.shape[0] == mask.shape[0] == 300
    monkeypatch.setattr("vmm.embedder._TEXT_BATCH", 10**6)
    one_forward = enc.encode_texts(texts, return_hidden=True)
    np.testing.assert_allclose(vecs, one_forward[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hidden, one_forward[1], rtol=1e-5, atol=1e-5)
    assert torch.equal(mask, one_forward[2]) and enc.encode_texts([]).shape == (0, enc.dim)


def test_a_clip_of_another_frame_count_is_named_with_the_sampling_that_fits(enc):
    """A clip of 3 or 8 frames for a 4-frame model was told "create it with num_frames=3", without naming the clip:
    a model rebuilt so gives vectors that fit no library of this one. The suggested sampling must encode; a model
    that encodes frames one by one takes any count."""
    from index import sample_middle_indices
    rng = np.random.default_rng(0)
    good = [rng.integers(0, 256, (n, 20, 24, 3), dtype=np.uint8) for n in (4, 1)]
    for frames in (3, 8):
        clip = rng.integers(0, 256, (frames, 20, 24, 3), dtype=np.uint8)
        message = (rf"^clip 2 has {frames} frames, but the model takes 4 \(or 1, an image\); sample them as the "
                   rf"official evaluation does: clip\[index\.sample_middle_indices\({frames}, 4\)\]$")
        for call in (enc.encode_clips, lambda clips: enc.itm_scores_for("a dog", clips)):
            with pytest.raises(VmmError, match=message):
                call([*good, clip])
        assert enc.encode_clips([*good, clip[sample_middle_indices(frames, 4)]]).shape == (3, enc.dim)
    per_frame = vmm.create_model("videomamba_m16_mm", **{**TINY, "vision": {**TINY["vision"], "frame_mode": "per_frame"}})
    per_frame = VideoTextEncoder(per_frame, device="cpu", tokenizer=enc.tokenizer)
    assert per_frame.encode_clips([*good, rng.integers(0, 256, (3, 20, 24, 3), dtype=np.uint8)]).shape == (3, enc.dim)
    # a file name is told the model's frames, as its library's video query decodes (not the decoder's default 8)
    with pytest.raises(VmmError, match=r"decode the video first: \[index\.decode_video\(path, num_frames=4, "):
        per_frame.encode_clips("query.mp4")
