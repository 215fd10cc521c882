"""The UTA teacher against the official ``clip.py``: its position-table resize and the open_clip it needs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vmm.errors import VmmError
from tests.test_train_losses import tiny_teacher


def test_clip_position_table_is_resized_as_the_official_loader(tmp_path):
    """The official clip.load_state_dict resizes the patch grid with plain bicubic (align_corners=False), CLS row
    kept; open_clip's default (antialias=True) uses another cubic kernel and moved every entry."""
    small = tiny_teacher()
    torch.save({"visual." + k: v for k, v in small.visual.state_dict().items()}, tmp_path / "clip.pt")
    big = tiny_teacher(image_size=48, weights=tmp_path / "clip.pt")
    old = small.visual.positional_embedding
    grid = old[1:].reshape(1, 2, 2, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(3, 3), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    table = big.visual.positional_embedding
    assert torch.equal(table[0], old[0])
    assert torch.allclose(table[1:], expected.reshape(9, -1), atol=1e-6)


def test_an_open_clip_without_the_embedding_step_is_refused_in_one_line(monkeypatch):
    """open_clip 2.24-2.31 (admitted by pyproject) have no VisionTransformer._embeds: the teacher built, then
    every training step died with an AttributeError traceback."""
    import open_clip.transformer
    monkeypatch.delattr(open_clip.transformer.VisionTransformer, "_embeds")
    with pytest.raises(VmmError, match=r"^loss.uta: the CLIP teacher needs open_clip_torch >= 2.32, this "
                                       r"environment has .*; pip install -U 'open_clip_torch>=2.32'$"):
        tiny_teacher()
