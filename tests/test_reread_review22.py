"""A second read of session 22's changes together: VideoLibrary.create now binds a library as `vmm index` does, and
load_classifier is the Python side of `vmm classify`; each refuses a caller's mistake in one line naming it."""
import pytest
import torch

import vmm
from retrieval import VideoLibrary
from tests import videos
from vmm.classify import load_classifier
from vmm.cli import main
from vmm.errors import VmmError


def test_create_names_frames_that_differ_from_the_librarys(tmp_path):
    """create(LIB, frames=6) on a library of 4 frames per clip loaded the model at 6, and add() then refused it as
    "built with model color-histogram ... but this run uses color-histogram"; `vmm index --frames 6` names it."""
    (tmp_path / "v").mkdir()
    videos.write_solid(str(tmp_path / "v" / "red.mp4"), (220, 20, 20))
    assert main(["index", str(tmp_path / "v"), "--library", str(tmp_path / "lib"), "--model", "color-histogram",
                 "--frames", "4", "--quiet", "--workers", "0"]) == 0
    for model in (None, "color-histogram"):
        with pytest.raises(VmmError, match=r"^library .*lib uses 4 frames per clip but frames=6 was asked for; drop "
                                           r"frames= to use the library's value or index into a new folder$"):
            VideoLibrary.create(tmp_path / "lib", model=model, frames=6)
    assert VideoLibrary.create(tmp_path / "lib", frames=4).encoder.num_frames == 4


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    path = tmp_path_factory.mktemp("reread22") / "tiny5.pth"
    torch.manual_seed(0)
    torch.save(vmm.create_model("videomamba_tiny", depth=2, num_frames=4, img_size=32, num_classes=5).state_dict(),
               path)
    return path


@pytest.mark.parametrize("call, message", [
    (lambda ckpt: load_classifier("videomamba_tiny", ckpt, model_args=["depth=2"]),
     r"^model_args must be a dict of config overrides, e\.g\. \{'depth': 2\} .*got list$"),
    (lambda ckpt: load_classifier(None, ckpt), r"^model must be a model name or folder as a str or pathlib\.Path, "
                                               r"got NoneType$"),
    (lambda ckpt: load_classifier("videomamba_tiny", 5), r"^checkpoint must be a weights file or folder .*got int$"),
])
def test_load_classifier_names_an_argument_of_the_wrong_type(tiny_classifier, call, message):
    # model_args as --model-arg takes it was "dictionary update sequence element #0 has length 7; 2 is required"
    with pytest.raises(VmmError, match=message):
        call(tiny_classifier)
    model = load_classifier("videomamba_tiny", tiny_classifier, model_args={"depth": 2}, device="cpu")
    assert model.head.out_features == 5
