"""The tiny random-weight video-text model the CLI, library and evaluation tests build: the real model classes at
a size that saves, loads and encodes in well under a second."""
from pathlib import Path

TINY = dict(vision=dict(embed_dim=64, depth=1, img_size=32, num_frames=4),
            text=dict(init_from=None, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=128, fusion_layer=1, max_position_embeddings=32), embed_dim=16)


def save_tiny_model(folder: Path) -> Path:
    """The tiny model with the random weights of seed 0, saved as a model folder at ``folder``."""
    import torch

    import vmm
    torch.manual_seed(0)
    vmm.create_model("videomamba_m16_mm", **TINY).save_pretrained(folder)
    return folder


def index_search_library(root: Path, library: Path) -> Path:
    """The search tests' library at ``library``: the tiny model (saved at ``root/model``) over red, green and a
    moving square (2 s each) and a 24 s video, in windows of 8 s every 4 s; returns the videos' folder."""
    from tests import videos
    from vmm.cli import main
    save_tiny_model(root / "model")
    vids = root / "videos"
    vids.mkdir()
    videos.write_red_green_square(vids)
    videos.write_long(str(vids / "long.mp4"), seconds=24)
    assert main(["index", str(vids), "--library", str(library), "--model", str(root / "model"), "--quiet",
                 "--window", "8", "--stride", "4", "--workers", "0"]) == 0
    return vids
