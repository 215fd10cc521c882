"""vmm.classify.load_classifier and list_classifiers: the Python side of what `vmm classify` loads, so the command is
a thin layer over them (the same model, the same probabilities)."""
import json
import shutil

import pytest
import torch

import vmm
from tests import videos
from vmm.classify import classify_video, list_classifiers, load_classifier
from vmm.cli import main
from vmm.errors import VmmError

NAMES = ["red", "green", "blue", "white", "black"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 4-frame, 32 px, 5-class tiny classifier saved as a flat state dict, a label file and a video."""
    root = tmp_path_factory.mktemp("classify_api")
    torch.manual_seed(0)
    model = vmm.create_model("videomamba_tiny", depth=2, num_frames=4, img_size=32, num_classes=5)
    torch.save(model.state_dict(), root / "tiny5.pth")
    (root / "names.txt").write_text("\n".join(NAMES) + "\n")
    videos.write_moving_square(str(root / "square.mp4"))
    return root, model


def test_the_command_prints_what_load_classifier_and_classify_video_give(setup, capsys):
    root, saved = setup
    model = load_classifier("videomamba_tiny", root / "tiny5.pth", model_args={"depth": 2}, device="cpu")
    # The checkpoint's own sizes, not the config's 8 frames at 224 px and 400 classes
    assert (model.cfg.num_frames, model.cfg.img_size, model.head.out_features) == (4, 32, 5)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), saved.state_dict().values()))
    top = classify_video(root / "square.mp4", model, clips=2, crops=3, labels=str(root / "names.txt"))
    assert main(["classify", str(root / "square.mp4"), "--model", "videomamba_tiny", "--checkpoint",
                 str(root / "tiny5.pth"), "--model-arg", "depth=2", "--labels", str(root / "names.txt"), "--clips",
                 "2", "--crops", "3", "--json", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["frames"], printed["img_size"], printed["num_classes"]) == (4, 32, 5)
    assert [(row["label"], row["index"]) for row in printed["top"]] == [(label, NAMES.index(label)) for label, _ in top]
    assert [row["probability"] for row in printed["top"]] == pytest.approx([p for _, p in top], abs=1e-6)


def test_deferred_weights_load_on_request_and_checks_come_first(setup):
    root, saved = setup
    model, load = load_classifier("videomamba_tiny", str(root / "tiny5.pth"), model_args={"depth": 2},
                                  device="cpu", defer_weights=True)
    assert model.head.out_features == 5 and not torch.equal(model.head.weight, saved.head.weight)
    assert load() is model and torch.equal(model.head.weight, saved.head.weight)
    with pytest.raises(VmmError, match=r"^checkpoint= \(--checkpoint\) is required for videomamba_tiny \(random"):
        load_classifier("videomamba_tiny")
    with pytest.raises(VmmError, match=r"^model= \(--model\) videomamba_tinyy: unknown model; did you mean videomamba_tiny"):
        load_classifier("videomamba_tinyy", root / "tiny5.pth")
    features = vmm.create_model("videomamba_tiny", depth=2, num_frames=4, img_size=32, num_classes=0)
    torch.save(features.state_dict(), root / "features.pth")
    with pytest.raises(VmmError, match="has no classification head"):
        load_classifier("videomamba_tiny", root / "features.pth", model_args={"depth": 2})


def test_classifiers_are_listed_by_their_head_not_by_k400_in_the_name(tmp_path, capsys):
    """A user's classifier config (an SSv2 head) was missing from the list that follows an unknown --model, and a
    video-text config with "k400" in its name would have been in it."""
    from vmm.models.registry import add_model_config_dir
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "my_ssv2_tiny.json").write_text(json.dumps(
        {"architecture": "videomamba_tiny", "model": {"num_frames": 16, "num_classes": 174}}))
    (configs / "retrieval_k400_clips.json").write_text(json.dumps(
        {"architecture": "videomamba_m16_mm", "model": {"vision": {"num_classes": 0}}}))
    add_model_config_dir(configs)
    try:
        assert "my_ssv2_tiny" in list_classifiers() and "retrieval_k400_clips" not in list_classifiers()
        video = videos.write_solid(str(tmp_path / "red.mp4"), (220, 20, 20))
        assert main(["classify", video, "--model", "zzzzqqqq", "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert "my_ssv2_tiny" in err and "retrieval_k400_clips" not in err and "videomamba_m16_k400" in err
    finally:
        shutil.rmtree(configs)  # a config folder that is gone is skipped: other tests see the built-in models only
    assert "my_ssv2_tiny" not in list_classifiers()
