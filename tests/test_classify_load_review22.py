"""classify_videos(..., load=...): the weights of load_classifier(defer_weights=True) load once the first video has
been read, so `vmm classify` runs on the public API alone (no private helper of vmm.classify)."""
import ast
import warnings
from pathlib import Path

import pytest
import torch

import vmm
from tests import videos
from vmm.classify import classify_videos, load_classifier
from vmm.errors import VmmError

NAMES = ["red", "green", "blue", "white", "black"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 4-frame, 32 px, 5-class tiny classifier saved as a state dict, a broken video and a readable one."""
    root = tmp_path_factory.mktemp("classify_load")
    torch.manual_seed(0)
    model = vmm.create_model("videomamba_tiny", depth=2, num_frames=4, img_size=32, num_classes=5)
    torch.save(model.state_dict(), root / "tiny5.pth")
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(100))
    videos.write_moving_square(str(root / "square.mp4"))
    return root


def test_load_runs_once_after_the_first_video_reads_and_scores_with_the_weights(setup):
    root = setup
    model, load = load_classifier("videomamba_tiny", root / "tiny5.pth", model_args={"depth": 2}, device="cpu",
                                  defer_weights=True)
    calls = []

    def counted():
        calls.append(1)
        return load()
    results = classify_videos([root / "gone.mp4", root / "broken.mp4", root / "square.mp4"], model, labels=NAMES,
                              load=counted)
    missing, broken = next(results), next(results)
    assert "does not exist" in missing.error and "broken.mp4" in broken.error and calls == []
    rest = list(results)
    assert calls == [1] and len(rest) == 1 and rest[0].error is None
    # The loaded weights scored the video, not the random ones it was built with
    loaded = load_classifier("videomamba_tiny", root / "tiny5.pth", model_args={"depth": 2}, device="cpu")
    expected = next(classify_videos(root / "square.mp4", loaded, labels=NAMES))
    assert [label for label, _ in rest[0].top] == [label for label, _ in expected.top]
    assert [p for _, p in rest[0].top] == pytest.approx([p for _, p in expected.top], abs=1e-6)


def test_no_readable_video_loads_nothing_and_checks_come_before_any_video(setup):
    root = setup
    model = vmm.create_model("videomamba_tiny", depth=2, num_frames=4, img_size=32, num_classes=5)

    def refuse():
        raise AssertionError("load() called without a readable video")
    results = list(classify_videos(root / "broken.mp4", model, labels=NAMES, load=refuse))
    assert len(results) == 1 and results[0].error is not None
    # the pair load_classifier(..., defer_weights=True) returns, passed whole
    with pytest.raises(VmmError, match=r"^load must be the function load_classifier\(\.\.\., defer_weights=True\) "
                                       r"returns with the model, got tuple"):
        classify_videos(root / "square.mp4", model, labels=NAMES, load=(model, refuse))
    with pytest.raises(VmmError, match="has 5 classes"):  # the labels, at the call, before any video
        classify_videos(root / "square.mp4", model, labels=NAMES[:4], load=refuse)


def test_zero_shot_prompts_encode_after_the_first_video_with_their_warning_then():
    """A video-text model's prompts need its weights: with ``load`` they encode at the first readable video, and
    their warning (labels that tie) comes from the iteration."""
    import tempfile
    folder = Path(tempfile.mkdtemp())
    clip = videos.write_solid(str(folder / "red.mp4"), (220, 20, 20))
    model, load = load_classifier("vmm_nano", device="cpu", defer_weights=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = classify_videos(clip, model, labels=["red", "Red", "blue"], top_k=3, load=load)
        assert caught == []
        result = next(results)
    assert result.error is None and {label for label, _ in result.top} == {"red", "Red", "blue"}
    assert [str(w.message) for w in caught if "always tie" in str(w.message)] != []


def test_the_command_imports_only_public_names_of_vmm_classify():
    source = Path(vmm.__file__).parent / "commands" / "classify.py"
    private = [alias.name for node in ast.walk(ast.parse(source.read_text()))
               if isinstance(node, ast.ImportFrom) and node.module == "vmm.classify"
               for alias in node.names if alias.name.startswith("_")]
    assert private == []
