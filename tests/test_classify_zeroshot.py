"""Zero-shot `vmm classify` with a video-text model: class names as prompts against the video embedding.

The shipped vmm_nano was trained on coloured shapes, so generated videos of a coloured square must get their own
colour; a tiny random model checks the probabilities against a direct computation from encode_texts/encode_clips.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vmm
from tests.test_classify import assert_one_line_error, run_cli, write_video
from vmm.classify import (DEFAULT_TEMPLATES, check_templates, class_embeddings, classify_video, classify_videos,
                          crop_starts, decode_clips, read_clips, view_probabilities, zero_shot_probabilities)
from vmm.embedder import VideoTextEncoder
from vmm.errors import VmmError

REPO = Path(__file__).resolve().parents[1]
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 235), "yellow": (240, 225, 40)}
H, W, T = 64, 96, 8
TINY_MM = dict(vision=dict(embed_dim=192, depth=1, img_size=32), embed_dim=16,
               text=dict(init_from=None, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, fusion_layer=1, max_position_embeddings=32))
TINY_MM_ARGS = ["--model", "videomamba_m16_mm", "--model-arg", "vision=" + json.dumps(TINY_MM["vision"]),
                "--model-arg", "text=" + json.dumps(TINY_MM["text"]), "--model-arg", "embed_dim=16"]


@pytest.fixture(scope="module")
def colour_videos(tmp_path_factory):
    """One video per colour: a square of that colour moving right on black (vmm_nano's kind of clip)."""
    folder = tmp_path_factory.mktemp("colours")
    for name, rgb in COLOURS.items():
        frames = np.zeros((20, H, W, 3), np.uint8)
        for t in range(20):
            frames[t, 16:48, 2 * t:2 * t + 32] = rgb
        write_video(folder / f"{name}.mkv", frames)
    return folder


@pytest.fixture(scope="module")
def nano():
    return vmm.create_model("vmm_nano", pretrained="default").eval()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = vmm.create_model("videomamba_m16_mm", **TINY_MM).eval()
    with torch.no_grad():
        model.temp.fill_(0.002)  # random embeddings' cosines are small: a low temperature spreads the softmax
    return model


@pytest.fixture(scope="module")
def noise_video(tmp_path_factory):
    frames = np.random.default_rng(3).integers(0, 256, (30, 48, 80, 3), dtype=np.uint8)
    return write_video(tmp_path_factory.mktemp("noise") / "noise.mkv", frames)


@pytest.mark.slow
def test_nano_names_the_colour_of_each_video(colour_videos, nano):
    results = list(classify_videos(colour_videos, nano, labels=list(COLOURS), top_k=4))
    assert [Path(r.video).stem for r in results] == sorted(COLOURS)
    for result in results:
        assert result.error is None and result.top[0][0] == Path(result.video).stem, result.top
        assert sum(p for _, p in result.top) == pytest.approx(1.0, abs=1e-5)  # a softmax over the 4 classes
        assert result.top[0][1] > 0.5


def test_probabilities_are_the_softmax_of_cosines_over_temp(noise_video, tiny):
    """One crop: the whole frames as encode_clips embeds them (vmm index's vector); class vectors the normalised mean
    of the prompts' vectors; logits cosine / temp."""
    names, templates = ["cat", "dog", "bird", "fish", "horse"], ["a video of {}.", "a photo of a {}"]
    encoder = VideoTextEncoder(tiny, device="cpu")
    texts = encoder.encode_texts([t.format(n) for n in names for t in templates]).reshape(5, 2, -1)
    classes = F.normalize(torch.from_numpy(texts).mean(1), dim=-1)
    clips = decode_clips(noise_video, T, 2)  # full size, official sampling
    expected = (torch.from_numpy(encoder.encode_clips(clips)) @ classes.T / 0.002).softmax(-1)

    got = dict(classify_video(noise_video, tiny, clips=2, labels=names, templates=templates, top_k=5))
    assert torch.allclose(torch.tensor([got[n] for n in names]), expected.mean(0), atol=1e-6, rtol=0)
    assert expected.mean(0).max() - expected.mean(0).min() > 0.05  # the check compares separated probabilities
    assert (expected[0] - expected[1]).abs().max() > 1e-3  # two different views, averaged
    assert torch.allclose(class_embeddings(tiny, names, templates), classes, atol=1e-6, rtol=0)
    # the same from an encoder the caller already has
    assert dict(classify_video(noise_video, encoder, clips=2, labels=names, templates=templates, top_k=5)) == got


def test_several_crops_are_the_official_squares(noise_video, tiny):
    """--crops 3: the squares of the classifier's official views (short side resized, crops along the long side)."""
    views = read_clips(noise_video, T, 32, clips=1, crops=3)
    (frames,) = decode_clips(noise_video, T, 1, size=32)  # 32 x int(32 * 80 / 48) = 53
    assert [v.shape for v in views] == [(T, 32, 32, 3)] * 3
    for view, x in zip(views, crop_starts(53, 32, 3)):
        assert np.array_equal(view, frames[:, :, x:x + 32])
    classes = class_embeddings(tiny, ["cat", "dog"])
    expected = zero_shot_probabilities(tiny, views, classes).mean(0)
    got = dict(classify_video(noise_video, tiny, crops=3, labels=["cat", "dog"]))
    assert torch.allclose(torch.tensor([got["cat"], got["dog"]]), expected, atol=1e-6, rtol=0)


def test_model_mode_is_kept(noise_video, tiny):
    tiny.train()
    try:
        classify_video(noise_video, tiny, labels=["cat", "dog"])
        assert tiny.training
    finally:
        tiny.eval()


@pytest.mark.parametrize("templates, message", [
    (["a video of"], r"--template 'a video of' \(templates\): has no \{\} where the class name goes"),
    (["a {label}"], r"'a \{label\}' .*has no \{\}"),
    ([], r"templates=\[\]: pass at least one prompt template"),
    ([None], r"--template 'None'"),
    (3, r"templates=3: pass a list of prompt templates"),
])
def test_bad_templates(noise_video, tiny, templates, message):
    with pytest.raises(VmmError, match=message):
        classify_video(noise_video, tiny, labels=["cat", "dog"], templates=templates)


def test_templates(tiny):
    assert check_templates(None) == list(DEFAULT_TEMPLATES)
    assert check_templates("a {} square") == ["a {} square"]  # one template, not its characters
    # braces of the user's own are kept: the name goes only where {} is
    assert class_embeddings(tiny, ["x"], ["{} {{}}"]).shape == (1, 16)


def test_a_classifier_refuses_templates_and_view_probabilities_refuses_a_video_text_model(noise_video, tiny):
    classifier = vmm.create_model("videomamba_tiny", depth=2, num_frames=T, img_size=32, num_classes=3)
    with pytest.raises(VmmError, match="templates .* are for zero-shot classification with a video-text model"):
        classify_video(noise_video, classifier, labels=["a", "b", "c"], templates=["a {}"])
    with pytest.raises(VmmError, match="it is a video-text model: classify_video and classify_videos score it"):
        view_probabilities(tiny, torch.zeros(1, 3, T, 32, 32))


def test_cli_with_a_checkpoint_file(noise_video, tiny, tmp_path, capsys):
    """A video-text checkpoint file with a model name: weights loaded once the video decodes, the file's own frame
    count (4) instead of the config's 8, the same probabilities as the Python API; --frames goes under vision."""
    torch.manual_seed(1)
    four = vmm.create_model("videomamba_m16_mm", **{**TINY_MM, "vision": {**TINY_MM["vision"], "num_frames": 4}})
    with torch.no_grad():
        four.temp.fill_(0.01)
    checkpoint = tmp_path / "tiny_mm.pth"
    torch.save(four.state_dict(), checkpoint)
    labels = tmp_path / "animals.txt"
    labels.write_text("cat\ndog\nbird\n")
    args = [str(noise_video), *TINY_MM_ARGS, "--checkpoint", str(checkpoint), "--labels", str(labels), "--json"]
    code, out, err = run_cli([*args, "--template", "a {}", "--template", "the {} again"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert (report["mode"], report["templates"], report["frames"], report["num_classes"]) == \
        ("zero-shot", ["a {}", "the {} again"], 4, 3)
    expected = classify_video(noise_video, four.eval(), labels=["cat", "dog", "bird"],
                              templates=["a {}", "the {} again"])
    assert [(r["label"], r["index"]) for r in report["top"]] == [(n, ["cat", "dog", "bird"].index(n))
                                                                 for n, _ in expected]
    assert np.allclose([r["probability"] for r in report["top"]], [p for _, p in expected], atol=1e-6, rtol=0)

    code, out, err = run_cli([*args, "--frames", "2"], capsys)  # a top-level num_frames was an unknown field
    assert code == 0, err
    assert (json.loads(out)["frames"], json.loads(out)["templates"]) == (2, list(DEFAULT_TEMPLATES))


def test_cli_bad_input(noise_video, tmp_path, capsys):
    code, _, err = run_cli([str(noise_video), "--model", "vmm_nano", "--template", "a video"], capsys)
    assert_one_line_error(code, err, "--template 'a video' (templates): has no {} where the class name goes")
    for default in ([], ["--checkpoint", "default"]):
        code, _, err = run_cli([str(noise_video), "--model", "vmm_nano_framemean", *default], capsys)
        assert_one_line_error(code, err, "model= (--model) vmm_nano_framemean has no released weights",
                              "checkpoint= (--checkpoint) a weights file")
    classifier = vmm.create_model("videomamba_tiny", depth=2, num_frames=T, img_size=32, num_classes=400)
    checkpoint = tmp_path / "tiny.pth"
    torch.save(classifier.state_dict(), checkpoint)
    code, _, err = run_cli([str(noise_video), "--model", "videomamba_tiny", "--model-arg", "depth=2", "--model-arg",
                            "img_size=32", "--checkpoint", str(checkpoint), "--template", "a {}"], capsys)
    assert_one_line_error(code, err, "templates (--template) are for zero-shot classification", "is a classifier")


@pytest.mark.slow
def test_cli_nano_without_a_checkpoint(colour_videos, tmp_path):
    """vmm_nano by name loads its shipped weights (a classifier name needs --checkpoint); text output names the mode."""
    labels = tmp_path / "colours.txt"
    labels.write_text("".join(f"{name}\n" for name in COLOURS))
    result = subprocess.run([sys.executable, "-m", "vmm.cli", "classify", str(colour_videos / "green.mkv"),
                             "--model", "vmm_nano", "--labels", str(labels), "--top-k", "1", "--device", "cpu"],
                            cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.strip().splitlines()
    assert header.startswith(f"{colour_videos / 'green.mkv'}: 1 clip x 1 crop of 8 frames at 64 px, vmm_nano "
                             "zero-shot (4 labels x 4 templates), ")
    assert row.split(maxsplit=2)[::2] == ["1", "green"]


def no_decoding(*args, **kwargs):
    raise AssertionError("the video was decoded before the bad input was named")


def test_a_lone_label_is_refused(noise_video, tiny, tmp_path, monkeypatch, capsys):
    """A softmax over one class is 1.0 for any video: "is this a cat?" was always answered yes."""
    with pytest.raises(VmmError, match=r"label set the given label list has one name \('cat'\); .* pass at least 2"):
        classify_video(noise_video, tiny, labels=["cat"])
    assert len(classify_video(noise_video, tiny, labels=["cat", "dog"])) == 2
    checkpoint = tmp_path / "tiny_mm.pth"
    torch.save(tiny.state_dict(), checkpoint)
    labels = tmp_path / "one.txt"
    labels.write_text("cat\n\n")
    monkeypatch.setattr(vmm.classify, "read_clips", no_decoding)
    code, out, err = run_cli([str(noise_video), *TINY_MM_ARGS, "--checkpoint", str(checkpoint), "--labels",
                              str(labels)], capsys)
    assert_one_line_error(code, err, f"label set {labels} has one name ('cat')", "a lone label always gets 1.0")
    assert out == ""


def test_a_checkpoint_of_the_other_kind_is_named_before_decoding(noise_video, tiny, tmp_path, monkeypatch, capsys):
    """A video-text file or folder given to a classifier name, or a classifier file to a video-text name, failed
    only once the first video had decoded, saying to pass a --model of the file's size (the vmm_nano folder: "its
    model.safetensors does not exist")."""
    video_text_file = tmp_path / "tiny_mm.pth"
    torch.save(tiny.state_dict(), video_text_file)
    video_text_folder = vmm.save_pretrained(tiny, tmp_path / "final")
    classifier_file = tmp_path / "tiny_k400.pth"
    torch.save(vmm.create_model("videomamba_tiny", depth=1, num_frames=T, img_size=32).state_dict(), classifier_file)
    monkeypatch.setattr(vmm.classify, "read_views", no_decoding)
    monkeypatch.setattr(vmm.classify, "read_clips", no_decoding)
    classifier = ["--model", "videomamba_tiny", "--model-arg", "depth=1", "--model-arg", "img_size=32"]
    code, _, err = run_cli([str(noise_video), *classifier, "--checkpoint", str(video_text_file)], capsys)
    assert_one_line_error(code, err, f"checkpoint {video_text_file} is a video-text model's, not a classifier's",
                          "with a video-text model= (--model) (e.g. videomamba_m16_25m")
    code, _, err = run_cli([str(noise_video), *classifier, "--checkpoint", str(video_text_folder)], capsys)
    assert_one_line_error(code, err, f"pass it as model= (--model) {video_text_folder} for zero-shot labels")
    code, _, err = run_cli([str(noise_video), *TINY_MM_ARGS, "--checkpoint", str(classifier_file)], capsys)
    assert_one_line_error(code, err, f"checkpoint {classifier_file} is a video classifier's, not a video-text model's")


def test_a_quoted_tilde_in_model_and_checkpoint_is_the_home_folder(noise_video, tiny, tmp_path, monkeypatch, capsys):
    """A quoted "~/final" was no folder: "unknown model" as --model, "a model folder, not a weights file" as
    --checkpoint."""
    monkeypatch.setenv("HOME", str(tmp_path))
    vmm.save_pretrained(tiny, tmp_path / "final")
    torch.save(tiny.state_dict(), tmp_path / "tiny_mm.pth")
    expected = [label for label, _ in classify_video(noise_video, tiny, labels=["cat", "dog"])]
    labels = tmp_path / "animals.txt"
    labels.write_text("cat\ndog\n")
    for args in (["--model", "~/final"], [*TINY_MM_ARGS, "--checkpoint", "~/tiny_mm.pth"],
                 [*TINY_MM_ARGS, "--checkpoint", "~/final"]):
        code, out, err = run_cli([str(noise_video), *args, "--labels", str(labels), "--json"], capsys)
        assert code == 0, err
        assert [row["label"] for row in json.loads(out)["top"]] == expected


def test_a_model_folder_as_checkpoint_sets_the_frame_count(noise_video, tmp_path, monkeypatch, capsys):
    """A video-text name with a folder of 4 frames (the name's config: 8) failed, --frames left out, as "--frames 8
    ...: the weights were trained for 4 frames ... or leave it out"; another --frames was named only once the first
    video had decoded."""
    torch.manual_seed(2)
    four = vmm.create_model("videomamba_m16_mm", **{**TINY_MM, "vision": {**TINY_MM["vision"], "num_frames": 4}})
    with torch.no_grad():
        four.temp.fill_(0.002)
    folder = vmm.save_pretrained(four, tmp_path / "final")
    labels = tmp_path / "animals.txt"
    labels.write_text("cat\ndog\nbird\n")
    args = [str(noise_video), *TINY_MM_ARGS, "--checkpoint", str(folder), "--labels", str(labels), "--json"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    expected = classify_video(noise_video, four.eval(), labels=["cat", "dog", "bird"])
    assert json.loads(out)["frames"] == 4
    assert [row["label"] for row in json.loads(out)["top"]] == [label for label, _ in expected]
    monkeypatch.setattr(vmm.classify, "read_clips", no_decoding)
    code, _, err = run_cli([*args, "--frames", "2"], capsys)
    assert_one_line_error(code, err, f"--frames 2 (vision=dict(num_frames=2)): the weights in {folder} were trained "
                                     "for 4 frames")


def test_labels_the_tokenizer_reads_alike_are_named_once(noise_video, tiny, tmp_path, capsys):
    """The uncased tokenizer drops case, accents and punctuation and keeps 32 tokens: such labels got the same
    prompts and tied on every video, without a word."""
    long = "a cat that sits " * 10  # past the 32 tokens a prompt keeps: only the end differs
    labels = ["Dog", "dog", "café", "cafe", "ice-skating", "ice skating", long + "still", long + "jumps", "bird"]
    with pytest.warns(UserWarning) as caught:
        top = dict(classify_video(noise_video, tiny, labels=labels, top_k=len(labels)))
    assert [str(w.message) for w in caught] == [
        "labels 'Dog' and 'dog'; 'café' and 'cafe'; 'ice-skating' and 'ice skating' (and 1 more group) give the model "
        "the same prompts (it reads them in lower case, without accents or punctuation, and only their first 32 "
        "tokens), so they always tie; rename them to differ in words"]
    assert top["Dog"] == top["dog"] and top[long + "still"] == top[long + "jumps"] != top["bird"]

    checkpoint = tmp_path / "tiny_mm.pth"
    torch.save(tiny.state_dict(), checkpoint)
    (tmp_path / "pets.txt").write_text("Cat\ncat\ndog\n")
    code, out, err = run_cli([str(noise_video), *TINY_MM_ARGS, "--checkpoint", str(checkpoint), "--labels",
                              str(tmp_path / "pets.txt"), "--json"], capsys)
    assert code == 0 and len(json.loads(out)["top"]) == 3
    assert err.splitlines() == ["warning: labels 'Cat' and 'cat' give the model the same prompts (it reads them in "
                                "lower case, without accents or punctuation, and only their first 32 tokens), so they "
                                "always tie; rename them to differ in words"]


@pytest.mark.parametrize("templates", [None, ["{}"]])
def test_a_label_with_no_words_is_refused(noise_video, tiny, templates):
    """'---' was scored as the bare template ("a video of ."), or with the template "{}" refused as a search
    "query"; emoji are [UNK] to the model."""
    for name in ("---", "\U0001f436"):
        with pytest.raises(VmmError, match=rf"^label '{name}' has no words the model can read \(punctuation .*, so "
                                           "its prompts would be the templates alone; name each class in words$"):
            classify_video(noise_video, tiny, labels=["cat", name, "dog"], templates=templates)
    with pytest.raises(VmmError, match=r"^label '!!!' \(and 1 more\) has no words"):
        class_embeddings(tiny, ["!!!", "cat", "..."], templates)
    assert len(classify_video(noise_video, tiny, labels=["cat", "123"], templates=templates)) == 2  # a number is a word


def test_cli_wordless_label(noise_video, tiny, tmp_path, capsys):
    checkpoint = tmp_path / "tiny_mm.pth"
    torch.save(tiny.state_dict(), checkpoint)
    (tmp_path / "odd.txt").write_text("cat\n???\ndog\n")
    code, out, err = run_cli([str(noise_video), *TINY_MM_ARGS, "--checkpoint", str(checkpoint), "--labels",
                              str(tmp_path / "odd.txt")], capsys)
    assert_one_line_error(code, err, "label '???' has no words the model can read", "name each class in words")
    assert out == ""


def test_many_prompts_show_progress_on_a_terminal_only(noise_video, tiny, tmp_path, capsys, monkeypatch):
    """10,000 classes x 4 templates encoded for minutes without a sign of life. The bar is on stderr when it is a
    terminal (as vmm index's), not with --json; batches give the vectors of one call."""
    names = [f"class {i}" for i in range(70)]  # 280 prompts: more than one batch of 256
    classes = class_embeddings(tiny, names)
    encoder = VideoTextEncoder(tiny, device="cpu")
    whole = encoder.encode_texts([t.format(n) for n in names for t in DEFAULT_TEMPLATES]).reshape(70, 4, -1)
    assert torch.allclose(classes, F.normalize(torch.from_numpy(whole).mean(1), dim=-1), atol=1e-6, rtol=0)

    checkpoint = tmp_path / "tiny_mm.pth"
    torch.save(tiny.state_dict(), checkpoint)
    (tmp_path / "many.txt").write_text("".join(f"{name}\n" for name in names))
    args = [str(noise_video), *TINY_MM_ARGS, "--checkpoint", str(checkpoint), "--labels", str(tmp_path / "many.txt")]
    for terminal, extra, bar in ((False, [], False), (True, ["--json"], False), (True, [], True)):
        monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
        code, out, err = run_cli([*args, *extra], capsys)
        assert code == 0, err
        assert ("encoding prompts" in err and "280/280" in err) == bar, err
        assert "encoding prompts" not in out
