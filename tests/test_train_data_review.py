"""Training data against the official recipe: repeats of an upweighted corpus, corpus weights, launcher variables."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from vmm.errors import VmmError
from vmm.training.data import Corpus, EpochPlan, PretrainDataset, load_annotation_corpus, training_plan
from vmm.transforms import TrainTransform

TINY = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "tiny.yaml"


def test_repeats_of_an_upweighted_corpus_draw_their_own_caption_and_frames(tmp_path):
    """At weight 2 both copies of a unit had the same key, so the second copy decoded the first one's caption,
    frames, crop and flip again: upweighting a multi-caption corpus showed no other caption and no new view."""
    from vmm.data.synthetic import generate_corpus
    generate_corpus(tmp_path, num_videos=5, seed=0, size=32, seconds=1.0, workers=1)
    entries = json.loads((tmp_path / "train.json").read_text())
    for e in entries:
        e["caption"] = [f"caption {k} of {e['video']}" for k in range(5)]
    (tmp_path / "multi.json").write_text(json.dumps(entries))
    corpus = load_annotation_corpus(str(tmp_path / "multi.json"), str(tmp_path), weight=2.0)
    plan = training_plan([corpus], "random", batch_size=2, world=1, seed=0)
    dataset = PretrainDataset([corpus], 4, TrainTransform(32), seed=0)
    copies = defaultdict(list)
    for batch in plan.global_batches(0):
        for key in batch:
            sample = dataset[key]
            copies[sample["sample_id"]].append((sample["caption"], sample["video"]))
    assert sorted(copies) == list(range(len(entries))) and all(len(c) == 2 for c in copies.values())
    assert not any(torch.equal(a[1], b[1]) for a, b in copies.values())
    assert any(a[0] != b[0] for a, b in copies.values())


def test_groups_stay_together_in_the_repeats_of_an_upweighted_corpus():
    groups = [i // 2 for i in range(16)]
    plan = EpochPlan([16], [2.0], batch_size=8, world=1, seed=4, unit_groups=[groups])
    batches = plan.global_batches(0)
    units = [u for b in batches for _, _, u in b]
    assert sorted(u % 16 for u in units) == sorted(list(range(16)) * 2) and len(set(units)) == 32
    for batch in batches:
        members = [u % 16 for _, _, u in batch]
        split = [u for u in members if (u ^ 1) not in members]
        assert len(split) <= 2  # a pair may straddle only a batch's two ends


def test_a_weight_that_leaves_a_corpus_no_sample_is_refused_naming_the_option():
    """round(0.04 x 10) = 0: the corpus was listed, accepted, and never trained on, without a word."""
    corpora = [Corpus("webvid", "video", [["v"]] * 100), Corpus("small", "video", [["s"]] * 10, weight=0.04)]
    with pytest.raises(VmmError, match=r"^data.train\[1\].weight=0.04 gives corpus small 0 of its 10 samples per "
                                       r"epoch; raise it to 0.1 or more"):
        training_plan(corpora, "random", batch_size=4, world=1, seed=0)
    corpora[1].weight = 0.1
    plan = training_plan(corpora, "random", batch_size=4, world=1, seed=0)
    assert sum(c == 1 for b in plan.global_batches(0) for _, c, _ in b) <= 1 and plan.counts == [100, 1]


def test_images_too_few_for_one_batch_beside_videos_are_refused_by_check(tmp_path, capsys):
    """A batch holds one kind: 3 images beside 5 videos at batch 4 gave every epoch video batches only, so the image
    corpus was never trained on while --check said "ok ... 2 corpora (8 items)". At weight 2 (6 images) it trains."""
    from PIL import Image

    from vmm.data.synthetic import generate_corpus
    from vmm.train import main
    generate_corpus(tmp_path / "clips", num_videos=5, seed=0, size=32, seconds=1.0, workers=1, splits=(1, 0, 0))
    for i in range(3):
        Image.new("RGB", (32, 32), (80 * i, 0, 0)).save(tmp_path / f"{i}.jpg")
    (tmp_path / "images.json").write_text(json.dumps([{"image": f"{i}.jpg", "caption": f"red {i}"} for i in range(3)]))

    def check(weight: float) -> tuple[int, str]:
        code = main(["--config", str(TINY), "loss.uta=0", f"train.output_dir={tmp_path / 'run'}",
                     f"data.train=[{{'anno': '{tmp_path / 'clips/train.json'}', 'root': '{tmp_path / 'clips'}'}}, "
                     f"{{'anno': '{tmp_path / 'images.json'}', 'root': '{tmp_path}', 'weight': {weight}}}]", "--check"])
        return code, capsys.readouterr()
    code, out = check(1)
    assert code == 2 and out.err.splitlines()[-1] == (
        "error: data.train[1] (images) gives 3 image samples per epoch, fewer than one batch of 4 (data.batch_size=4 "
        "x 1 processes; a batch never mixes images and videos), so they would never be trained on; raise "
        "data.train[1].weight, lower data.batch_size or add images")
    code, out = check(2)
    assert code == 0 and out.out.startswith("ok: ")


@pytest.mark.parametrize("rank_var, size_var", [("RANK", "WORLD_SIZE"), ("PMI_RANK", "PMI_SIZE"),
                                                ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
                                                ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE")])
def test_launch_rank_and_size_agree_with_accelerate_for_every_launcher(monkeypatch, rank_var, size_var):
    """Under MVAPICH2's mpirun accelerate ran 4 processes while every one of them was rank 0 of 1 to the start-up
    checks: each printed the warnings, probed the output folder, and the epoch plan was checked for 1 process."""
    from accelerate.utils.environment import get_cpu_distributed_information
    from vmm.training.launch import launch_rank, launch_world_size
    for var in ("RANK", "WORLD_SIZE", "PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(rank_var, "2")
    monkeypatch.setenv(size_var, "4")
    theirs = get_cpu_distributed_information()
    assert (launch_rank(), launch_world_size()) == (theirs.rank, theirs.world_size) == (2, 4)


def test_entries_naming_one_video_share_its_sample_id_so_no_loss_takes_them_for_negatives(tmp_path):
    """A list with one entry per caption (MSR-VTT's layout) gave every entry of a video its own sample id: VTC
    pushed the video away from its own other captions, and VTM drew them as the hardest negatives, training the
    ITM head to call a video and its caption no match."""
    from vmm.data.synthetic import generate_corpus
    from vmm.training.losses import sample_hard_negatives
    generate_corpus(tmp_path, num_videos=6, seed=0, size=32, seconds=1.0, workers=1)
    videos = [e["video"] for e in json.loads((tmp_path / "train.json").read_text())]
    entries = [{"video": v, "caption": f"take {k} of {v}"} for k in range(3) for v in videos]
    (tmp_path / "per_caption.json").write_text(json.dumps(entries))
    corpus = load_annotation_corpus(str(tmp_path / "per_caption.json"), str(tmp_path))
    samples = [PretrainDataset([corpus], 4, TrainTransform(32), seed=0)[(0, 0, u)] for u in range(len(entries))]
    ids = torch.tensor([s["sample_id"] for s in samples])
    same_video = torch.tensor([[a["video"] == b["video"] for b in entries] for a in entries])
    assert torch.equal(ids.view(-1, 1) == ids.view(1, -1), same_video)
    assert [s["caption"] for s in samples] == [e["caption"] for e in entries]
    # Captions of one video are the most similar pairs: never drawn as negatives, whatever the draw.
    sim = same_video.float() * 20
    for _ in range(20):
        neg_text, neg_video = sample_hard_negatives(sim, ids)
        assert not same_video[torch.arange(len(ids)), neg_text].any()
        assert not same_video[neg_video, torch.arange(len(ids))].any()


def test_a_list_in_the_current_folder_with_a_colon_in_a_name_and_animated_gifs_decode(tmp_path, monkeypatch):
    """Two kinds of valid media that every draw failed on, so a corpus of them stopped on "corrupt samples in a
    row": a relative "12:30 clip.mp4", which ffmpeg read as a URL of protocol "12", and an animated GIF, which
    decord cannot open."""
    import av
    from PIL import Image
    from vmm.data.synthetic import generate_corpus
    generate_corpus(tmp_path / "src", num_videos=2, seed=0, size=32, seconds=1.0, workers=1)
    video = sorted((tmp_path / "src" / "videos").glob("*.mp4"))[0]
    (tmp_path / "12:30 clip.mp4").write_bytes(video.read_bytes())
    with av.open(str(video)) as container:
        frames = [Image.fromarray(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    (tmp_path / "anno.json").write_text(json.dumps([{"video": "12:30 clip.mp4", "caption": "a clip at 12:30"},
                                                    {"video": "anim.gif", "caption": "an animated gif"}]))
    monkeypatch.chdir(tmp_path)
    dataset = PretrainDataset([load_annotation_corpus("anno.json", "")], 4, TrainTransform(32, flip_p=0.0), seed=0,
                              max_retries=0)
    for unit, caption in enumerate(["a clip at 12:30", "an animated gif"]):
        sample = dataset[(0, 0, unit)]
        assert sample["failed"] == [] and sample["caption"] == caption
        clip = sample["video"]
        assert clip.shape == (3, 4, 32, 32) and not torch.equal(clip[:, 0], clip[:, -1])  # moving, not one frame
