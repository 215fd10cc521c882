"""The public API called with what Python users pass by habit or by mistake (review 20): a dict or set of texts, a
lone string where a list goes, pathlib.Path for a catalog path, float64 features kept from NumPy, None for an
option. Each either works or is refused in one line naming the argument; none gives a silent wrong answer."""
from pathlib import Path

import numpy as np
import pytest
import torch

import index
import vmm
from index.encoder import ColorHistogramEncoder
from tests import videos
from tests.tiny_model import TINY, index_search_library
from vmm import classify
from vmm.embedder import VideoTextEncoder


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return VideoTextEncoder(vmm.create_model("videomamba_m16_mm", **TINY), device="cpu")


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """The search tests' tiny-model library: red, green, a moving square and a long video."""
    root = tmp_path_factory.mktemp("api-sweep")
    vids = index_search_library(root, root / "lib")
    return root / "lib", vids


@pytest.fixture
def histogram_library(tmp_path):
    videos.write_red_green_square(tmp_path)
    lib = str(tmp_path / "lib")
    index.build_library([str(tmp_path)], lib, ColorHistogramEncoder(), workers=0, progress=False)
    return lib, tmp_path


def _one_line(error) -> str:
    assert "\n" not in str(error.value)
    return str(error.value)


@pytest.mark.parametrize("texts, needle", [
    ({"video7": "a red square"}, r"^texts is a dict, whose keys would be taken for the texts; pass "
                                 r"list\(texts\.values\(\)\)"),
    ({"a red square", "a green one"}, r"^texts is a set, which has no order .*; pass a list, e.g\. sorted\(texts\)$"),
])
def test_texts_in_a_dict_or_set_are_refused_where_rows_answer_texts_by_position(encoder, library, texts, needle):
    """encode_texts and search_many of {id: caption} embedded and ranked the ids; of a set, in an order of its own."""
    from retrieval import VideoLibrary
    for call in (encoder.encode_texts, VideoLibrary.open(library[0]).search_many):
        with pytest.raises(vmm.VmmError, match=needle) as e:
            call(texts)
        _one_line(e)


def test_class_embeddings_takes_one_name_as_one_class_and_refuses_a_set(encoder):
    """class_embeddings(model, "red") embedded three classes, "r", "e" and "d"; a set gave rows in no known order."""
    one = classify.class_embeddings(encoder, "red", ["a {} square"])
    assert one.shape == (1, encoder.dim)
    assert torch.equal(one, classify.class_embeddings(encoder, ["red"], ["a {} square"]))
    with pytest.raises(vmm.VmmError, match=r"^names is a set, .*sorted\(names\)$"):
        classify.class_embeddings(encoder, {"red", "green"})
    by_key = classify.class_embeddings(encoder, {"red": 0, "green": 1}, ["a {} square"])  # a dict's keys, in order
    assert torch.equal(by_key, classify.class_embeddings(encoder, ["red", "green"], ["a {} square"]))


def test_catalog_takes_paths_and_one_path_under(histogram_library):
    """Catalog.open(Path) failed in urllib's quote; files(under="/videos/red.mp4") took the string's characters, so
    "/" matched every file; file_by_path(Path) was sqlite's "type 'PosixPath' is not supported"."""
    lib, vids = histogram_library
    catalog = index.Catalog.open(Path(lib, "catalog.sqlite"), read_only=True)
    try:
        red = str(vids / "red.mp4")
        assert [r.path for r in catalog.files(under=red)] == [red]
        assert [r.path for r in catalog.files(under=[vids / "red.mp4"])] == [red]
        assert len(catalog.files(under=vids)) == 3
        assert catalog.file_by_path(vids / "red.mp4").path == red
    finally:
        catalog.close()


def test_reader_clips_of_and_open_library_take_what_the_rest_of_the_api_takes(histogram_library, monkeypatch):
    """clips_of(None) failed inside posixpath and clips_of("~/...") found nothing; open_library(device=None), which
    VideoLibrary and the encoders take as "auto", was refused."""
    lib, vids = histogram_library
    reader = index.open_library(lib, device=None)
    red = reader.clips_of(vids / "red.mp4")
    assert red and reader.clips_of(str(vids / "red.mp4")) == red
    monkeypatch.setenv("HOME", str(vids))
    assert reader.clips_of("~/red.mp4") == red
    with pytest.raises(vmm.VmmError, match=r"^clips_of takes a video's path \(str or pathlib\.Path\), got NoneType$"):
        reader.clips_of(None)


@pytest.mark.parametrize("bad", [None, "1000", 1.5])
def test_flat_max_is_checked_before_remove_paths_commits(histogram_library, bad):
    """remove_paths(flat_max=None) removed the file, then failed in the FAISS sync with "'<' not supported"."""
    lib, vids = histogram_library
    for call in (lambda: index.remove_paths(lib, [str(vids / "red.mp4")], flat_max=bad),
                 lambda: index.sync_index(lib, flat_max=bad)):
        with pytest.raises(vmm.VmmError, match=rf"^flat_max must be a whole number, got {bad!r}; fix the option$"):
            call()
    assert len(index.open_library(lib).clips_of(vids / "red.mp4")) == 1  # not removed


def test_forward_head_takes_float64_features_and_names_what_it_cannot_take():
    """forward_features takes a float64 video, but forward_head of float64 features (kept with NumPy) failed in
    torch: "mat1 and mat2 must have the same dtype"; an array, int or wrong width failed as deep."""
    model = vmm.create_model("videomamba_tiny", depth=1, num_frames=2, img_size=32, num_classes=3).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(2, 3, 2, 32, 32))
        logits = model.forward_head(features)
        assert torch.allclose(model.forward_head(torch.from_numpy(features.numpy().astype(np.float64))), logits,
                              atol=1e-6)
        for bad, got in ((features.numpy(), "ndarray"), (features.long(), r"torch\.int64 of shape \(2, 192\)"),
                         (features[:, :7], r"torch\.float32 of shape \(2, 7\)")):
            with pytest.raises(vmm.VmmError, match=rf"^forward_head takes the float \(batch, 192\) tensor "
                                                   rf"forward_features returns, got {got}; "):
                model.forward_head(bad)


def test_itm_logits_take_float64_tokens(encoder):
    """itm_logits of float64 tokens and hidden states failed in torch where encode_video takes float64."""
    model = encoder.model
    clip = np.random.default_rng(0).integers(0, 255, (4, 40, 40, 3), dtype=np.uint8)
    with torch.no_grad():
        _, tokens = model.encode_video(encoder._video_batch([clip]), return_tokens=True)
        ids, mask = encoder.tokenizer(["a red square"], max_length=encoder.max_text_len)
        _, hidden = model.encode_text(ids, mask, return_hidden=True)
        assert torch.allclose(model.itm_logits(tokens.double(), hidden.double(), mask),
                              model.itm_logits(tokens, hidden, mask), atol=1e-5)


def test_classify_helpers_take_numpy_and_generators_and_refuse_bools_and_mismatches():
    """top_labels of NumPy probabilities had no .topk, of a generator of labels no len(), and of fewer labels than
    classes an IndexError only when a top class had none; sample_clip_indices(10, True) took one frame; a size of
    224.0 failed in torch's interpolate; view_probabilities of an array had no .to, of no views torch.cat failed."""
    probs = np.array([0.1, 0.7, 0.2])
    assert classify.top_labels(probs, (name for name in "abc"), k=2) == [("b", pytest.approx(0.7)),
                                                                          ("c", pytest.approx(0.2))]
    with pytest.raises(vmm.VmmError, match=r"^top_labels takes one probability per label, got probabilities of "
                                           r"shape \(3,\) for 2 labels"):
        classify.top_labels(probs, ["a", "b"], k=1)
    for bad in ((10, True), (10, 4.0), (True, 4)):
        with pytest.raises(ValueError, match="^need whole numbers"):
            classify.sample_clip_indices(*bad)
    assert classify.sample_clip_indices(np.int64(10), np.int64(4)) == classify.sample_clip_indices(10, 4)
    frames = np.zeros((2, 40, 50, 3), np.uint8)
    for bad in (32.0, True, 0):
        with pytest.raises(vmm.VmmError, match=rf"^size={bad!r}: must be a whole number of pixels >= 1"):
            classify.make_views([frames], bad, 1)
    model = vmm.create_model("videomamba_tiny", depth=1, num_frames=2, img_size=32, num_classes=3)
    views = classify.make_views([frames], 32, 1)
    with pytest.raises(vmm.VmmError, match=r"^views must be the tensor .*, got ndarray; .*torch\.as_tensor"):
        classify.view_probabilities(model, views.numpy())
    assert classify.view_probabilities(model, views[:0]).shape == (0, 3)


def test_frames_given_as_a_generator_are_read_once_as_a_list_of_them(encoder):
    """EvalTransform((frame for frame in reader)) and a clip given as map(np.asarray, images) were refused as "not
    image data", though a list of the same frames is taken."""
    from vmm.transforms import EvalTransform, TrainTransform
    frames = np.random.default_rng(1).integers(0, 255, (4, 40, 48, 3), dtype=np.uint8)
    assert torch.equal(EvalTransform(32)(frame for frame in frames), EvalTransform(32)(list(frames)))
    assert TrainTransform(32)(iter(list(frames))).shape == (3, 4, 32, 32)
    assert np.array_equal(encoder.encode_clips([map(np.asarray, frames)]), encoder.encode_clips([frames]))


def test_a_numpy_frame_count_builds_and_records_a_library(tmp_path):
    """VideoLibrary.create(frames=np.int64(4)) was told "frames per clip must be a whole number" (check_frames took
    int only), and once past that its add() failed writing model.json: "Object of type int64 is not JSON
    serializable"."""
    import json

    from retrieval import VideoLibrary
    from tests.tiny_model import save_tiny_model
    from vmm.factory import check_frames
    assert type(check_frames(np.int64(8))) is int and check_frames(np.int64(8)) == 8
    model = save_tiny_model(tmp_path / "model")
    (tmp_path / "videos").mkdir()
    videos.write_red_green_square(tmp_path / "videos")
    lib = VideoLibrary.create(tmp_path / "lib", model=model, frames=np.int64(4))
    assert lib.add(tmp_path / "videos", workers=0).indexed == 3
    assert json.loads((tmp_path / "lib" / "model.json").read_text())["frames"] == 4
    assert len(VideoLibrary.open(tmp_path / "lib")) == len(lib) == 3


def test_the_tokenizer_refuses_unordered_texts_and_the_samplers_bool_counts():
    """The tokenizer's own as_texts (Tokenizer.__call__ and everything on top of it) took a dict's keys for the texts;
    index.sample_middle_indices took True as one frame and failed inside NumPy on 4.0; plan_windows compared None."""
    from vmm.errors import VmmError
    from vmm.tokenizer import as_texts
    for texts, kind in (({"video7": "a red square"}, "dict"), ({"a", "b"}, "set")):
        with pytest.raises(VmmError, match=rf"^texts is a {kind}, "):
            as_texts(texts)
    for vlen, n in ((8, True), (8, 4.0), (8.0, 4)):
        with pytest.raises(ValueError, match=r"^need whole numbers of at least one frame and one sample"):
            index.sample_middle_indices(vlen, n)
    assert index.sample_middle_indices(np.int64(10), np.int32(4)).tolist() == [0, 3, 5, 8]
    with pytest.raises(ValueError, match=r"^stride must be a number of seconds, got None$"):
        index.plan_windows(10, 4, None)


def test_a_blank_library_path_is_named(capsys):
    """`vmm search " " red` said "library /work/main/  does not exist", a folder named by a space."""
    from vmm.cli import main
    from vmm.errors import VmmError
    assert main(["search", " ", "red"]) == 2
    assert capsys.readouterr().err == "error: the library path is blank (' '); pass the library's folder\n"
    with pytest.raises(VmmError, match=r"^the library path is blank \('\\t'\)"):
        index.open_library("\t")
