"""VideoLibrary.create binds a library to a model as `vmm index` does (the command now calls it), and
record_model writes model.json for index.build_library runs, so VideoLibrary.open and `vmm search` find the model."""
import json

import pytest

from index import build_library
from retrieval import VideoLibrary
from tests import videos
from tests.tiny_model import save_tiny_model
from vmm.cli import main
from vmm.errors import VmmError


@pytest.fixture
def histogram_library(tmp_path):
    """A colour-histogram library indexed by `vmm index` at 4 frames per clip (the encoder's default is 8), and a
    folder with one more video."""
    first, more = tmp_path / "first", tmp_path / "more"
    first.mkdir(), more.mkdir()
    videos.write_solid(str(first / "red.mp4"), (220, 20, 20))
    videos.write_solid(str(more / "blue.mp4"), (20, 20, 220))
    assert main(["index", str(first), "--library", str(tmp_path / "lib"), "--model", "color-histogram",
                 "--frames", "4", "--quiet", "--workers", "0"]) == 0
    return tmp_path / "lib", more


def test_create_with_the_librarys_own_model_keeps_its_frames(histogram_library, capsys):
    """`vmm index MORE --library LIB --model color-histogram` adds to it; create(LIB, model=...) built the encoder at
    8 frames and refused "built with model color-histogram ... but this run uses color-histogram"."""
    library, more = histogram_library
    lib = VideoLibrary.create(library, model="color-histogram")
    assert lib.encoder.num_frames == 4
    assert lib.add(more, workers=0).indexed == 1 and len(lib) == 2
    assert json.loads((library / "model.json").read_text())["frames"] == 4


def test_create_without_a_model_takes_the_recorded_one(histogram_library):
    """As `vmm index MORE --library LIB`: it was "no model given" for a library that records one."""
    library, more = histogram_library
    lib = VideoLibrary.create(library)
    assert (lib.encoder.name, lib.encoder.num_frames) == ("color-histogram", 4)
    assert lib.add(more, workers=0).indexed == 1
    with pytest.raises(VmmError, match=r"^no model given; pass model= \(--model\) a name such as vmm_nano, or "
                       r"checkpoint= \(--checkpoint\) a weights file$"):
        VideoLibrary.create(library.parent / "new")


def test_record_model_lets_open_find_the_model_of_a_build_library_run(tmp_path):
    model = save_tiny_model(tmp_path / "model")
    vids = tmp_path / "videos"
    vids.mkdir()
    videos.write_red_green_square(vids)
    lib = VideoLibrary.create(tmp_path / "lib", model=str(model), batch_size=3)
    assert lib.encoder.batch_size == 3
    summary = build_library([str(vids)], str(tmp_path / "lib"), lib.encoder, workers=0, progress=False,
                            on_open=lib.record_model)
    assert summary.indexed == 3
    assert json.loads((tmp_path / "lib" / "model.json").read_text()) == {"model": str(model), "checkpoint": None,
                                                                         "frames": None}
    with VideoLibrary.open(tmp_path / "lib") as again:  # no model given: the recorded one
        hits = again.search(video=vids / "red.mp4", k=1)
    assert hits[0].path.endswith("red.mp4") and hits[0].score == pytest.approx(1.0, abs=1e-4)
