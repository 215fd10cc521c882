"""Frames to pixels (review 21): what the transforms take from PIL, and the fix their messages give."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

from vmm.transforms import EvalTransform, FramesError, TrainTransform

GREY16 = (np.arange(48 * 64).reshape(48, 64) * 20).astype(np.uint16)  # 0 to 61420: a 16-bit depth or X-ray image


@pytest.mark.parametrize("saved, opened", [(GREY16, "I;16"), (GREY16.astype(np.int32), "I"),
                                           (GREY16.astype(np.float32) / 61420, "F")])
def test_pil_images_of_more_than_8_bits_are_refused_with_a_fix_that_restores_them(tmp_path, saved, opened):
    """convert("RGB") clips 16-bit, 32-bit and float samples to 0-255 instead of scaling them: a 16-bit PNG came out
    a white clip (254.4 of 255 on average) and a float image in 0-1 a black one, without a word. The message's
    conversion must give the 8-bit image the file stands for."""
    path = tmp_path / ("frame.png" if opened == "I;16" else "frame.tif")
    Image.fromarray(saved).save(path)
    with Image.open(path) as image:
        assert image.mode == opened
        expected = np.round(np.asarray(image, np.float64) * (255 if opened == "F" else 1 / 257))
        for transform in (EvalTransform(16), lambda x: TrainTransform(16)(x, rng=random.Random(0))):
            with pytest.raises(FramesError, match=rf"^frame 0 of frames is a PIL image of mode '{opened}', more than 8 "
                                                  r"bits a sample, which convert\('RGB'\) clips; pass "
                                                  r"Image.fromarray\(x\) of 8-bit x: values ") as refused:
                transform([image])
        x = eval(str(refused.value).rsplit(": ", 1)[1], {"np": np, "image": image})
    assert x.dtype == np.uint8 and np.abs(x - expected).max() <= 1  # // 257 floors
    assert x.max() > 200 and x.min() < 50  # the grey ramp, not a white or a black image
    fixed = EvalTransform(16)([Image.fromarray(x)])
    torch.testing.assert_close(fixed, EvalTransform(16)(np.repeat(x[None, ..., None], 3, axis=-1)))


def test_pil_images_of_8_bits_convert_as_before():
    """Grey, palette, bilevel, grey with alpha and RGBA images stay what convert("RGB") makes of them."""
    grey = (GREY16 // 257).astype(np.uint8)
    for image in (Image.fromarray(grey), Image.fromarray(grey).convert("P"), Image.fromarray(grey > 128),
                  Image.fromarray(np.stack([grey, grey], -1), "LA"), Image.fromarray(grey).convert("RGBA")):
        expected = np.asarray(image.convert("RGB"))[None]
        torch.testing.assert_close(EvalTransform(16)([image]), EvalTransform(16)(expected))


@pytest.mark.timeout(10, method="signal")
@pytest.mark.parametrize("duration", [float("inf"), float("nan"), 0.0])
def test_plan_windows_refuses_a_duration_that_is_not_finite(duration):
    """plan_windows(inf) (frames / fps of a rate of 0 in NumPy) planned windows without end until memory ran out."""
    from index.decode import plan_windows
    with pytest.raises(ValueError, match=r"^duration must be a finite number of seconds > 0, got (inf|nan|0.0)$"):
        plan_windows(duration, 10.0, 5.0)
    assert plan_windows(1e5, 10.0, 5.0)[-1] == (99990.0, 100000.0)  # a long finite video still plans


@pytest.mark.parametrize("rng", [0, 7, np.random.default_rng(0), "seed"])
def test_train_transform_refuses_an_rng_that_is_not_a_random_random(rng):
    """rng=0 was taken for None (it is falsy): a "seeded" call drew another crop and flip every time; a NumPy
    Generator or another seed failed with an AttributeError (no randint / uniform)."""
    frames = np.random.default_rng(1).integers(0, 256, (2, 40, 60, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"^TrainTransform rng=.+: must be a random.Random, e.g. "
                                         r"rng=random.Random\(0\), or None for the random module's own generator$"):
        TrainTransform(16)(frames, rng=rng)
    with pytest.raises(ValueError, match=r"^TrainTransform rng="):
        TrainTransform(16).crop_box(40, 60, rng)
    seeded = [TrainTransform(16)(frames, rng=random.Random(0)) for _ in range(2)]
    torch.testing.assert_close(seeded[0], seeded[1])  # the way the message gives is reproducible
    assert TrainTransform(16)(frames).shape == TrainTransform(16)(frames, rng=random).shape == (3, 2, 16, 16)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_a_batch_of_clips_is_told_to_go_one_clip_at_a_time(as_tensor):
    """eval_tf(batch) with an (N, T, H, W, 3) batch was told only to "give decoded RGB frames"; the fix it is told
    now must transform a clip."""
    batch = np.random.default_rng(2).integers(0, 256, (2, 4, 20, 24, 3), dtype=np.uint8)
    frames = torch.from_numpy(batch) if as_tensor else batch
    with pytest.raises(FramesError, match=r"^frames have shape \(2, 4, 20, 24, 3\), not \(frames, height, width, 3\); "
                                          r"that is a batch of 2 clips: give one clip at a time, e.g. frames\[0\]$") \
            as refused:
        EvalTransform(16)(frames)
    clip = eval(str(refused.value).rsplit("e.g. ", 1)[1], {"frames": frames})
    torch.testing.assert_close(EvalTransform(16)(clip), EvalTransform(16)(batch[0]))


def test_closed_pil_images_are_named_with_the_way_to_keep_their_pixels(tmp_path):
    """`with Image.open(path) as image: frames.append(image)` closes the file before PIL reads the pixels (it reads
    them when first used): the transform failed with a bare AssertionError from inside PIL, and an image closed with
    close() with "Operation on closed image", neither naming the frame. The way the message gives must work."""
    path = tmp_path / "frame.png"
    pixels = np.random.default_rng(3).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    with Image.open(path) as lazy:
        pass
    dropped = Image.open(path)
    dropped.load()
    dropped.close()
    for frames, bad in (([lazy], 0), ([Image.fromarray(pixels), dropped], 1)):
        with pytest.raises(FramesError, match=rf"^frame {bad} of frames is a closed PIL image: its file was closed "
                                              r"before the pixels were read, or close\(\) dropped them; read them "
                                              r"with image.load\(\) inside `with Image.open\(path\) as image:`, and "
                                              r"do not call image.close\(\) before use$"):
            EvalTransform(16)(frames)
    with Image.open(path) as loaded:
        loaded.load()
    torch.testing.assert_close(EvalTransform(16)([loaded]), EvalTransform(16)(pixels[None]))
