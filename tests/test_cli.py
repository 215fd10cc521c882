"""The `vmm` entry point itself and `vmm encode`."""
import pytest

from tests import videos
from vmm.cli import build_parser, main


def test_every_command_has_help(capsys):
    parser = build_parser()
    names = set(parser._subparsers._group_actions[0].choices)
    assert {"demo", "index", "search", "eval", "classify", "encode"} <= names
    for name in names:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
    assert main([]) == 2


@pytest.mark.parametrize("model, frames, shape", [("videomamba_tiny", 2, "(1, 192)"), ("vmm_nano", 4, "(1, 256)")])
def test_encode_a_video_file(tmp_path, capsys, model, frames, shape):
    path = videos.write_moving_square(str(tmp_path / "clip.mp4"), seconds=1.0)
    assert main(["encode", path, "--model", model, "--frames", str(frames)]) == 0
    out = capsys.readouterr().out
    assert f"-> embedding {shape}" in out and f"input (1, 3, {frames}," in out


def test_encode_bad_input(tmp_path, capsys):
    assert main(["encode", str(tmp_path / "none.mp4")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "notes.mp4").write_text("not a video")
    assert main(["encode", str(tmp_path / "notes.mp4"), "--model", "vmm_nano"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "notes.mp4" in err and "\n" not in err
    assert main(["encode", "--model", "no_such_model"]) == 2
    assert "unknown model" in capsys.readouterr().err
