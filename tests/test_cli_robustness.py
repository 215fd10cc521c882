"""User mistakes on the command line end in one `error: ...` line naming the option or file, exit status 2."""
import os
import re

import pytest
import torch

import vmm
from tests import videos
from tests.tiny_model import TINY, save_tiny_model
from vmm.cli import main
from vmm.errors import VmmError

CLASSIFIER = ["--model", "videomamba_tiny", "--model-arg", "depth=1", "--model-arg", "img_size=32",
              "--frames", "2"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    save_tiny_model(root / "model")
    videos.write_solid(str(root / "red.mp4"), videos.RED, seconds=2)
    torch.save(vmm.create_model("videomamba_tiny", depth=1, img_size=32, num_frames=2).state_dict(),
               root / "tiny.pth")
    assert main(["index", str(root / "red.mp4"), "--library", str(root / "lib"), "--model", str(root / "model"),
                 "--quiet", "--workers", "0"]) == 0
    return root


def fails(args, capsys, *needles):
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_checkpoint_with_a_model_folder_is_refused(setup, capsys):
    fails(["encode", str(setup / "red.mp4"), "--model", str(setup / "model"), "--checkpoint",
           str(setup / "tiny.pth")], capsys, "model folder with its own weights", "--checkpoint")
    fails(["search", str(setup / "lib"), "red", "--model", str(setup / "model"), "--checkpoint",
           str(setup / "tiny.pth")], capsys, "model folder with its own weights")


def test_frame_count_the_weights_were_not_trained_for(setup, capsys):
    fails(["encode", str(setup / "red.mp4"), "--model", str(setup / "model"), "--frames", "8"], capsys,
          "--frames 8", "trained for 4 frames", "pass --frames 4")
    # a registered name given the folder's weights: vmm index and vmm eval load vmm_nano this way
    with pytest.raises(VmmError, match="--frames 8 .*trained for 4 frames"):
        vmm.create_model_and_transforms("videomamba_m16_mm", pretrained=setup / "model",
                                        **{k: (dict(v, num_frames=8) if k == "vision" else v) for k, v in TINY.items()})
    fails(["encode", str(setup / "red.mp4"), "--checkpoint", str(setup / "model")], capsys,
          "model.safetensors do not fit model videomamba_tiny", "cls_token")


@pytest.mark.parametrize("frames, needle", [("-2", "at least 1 frame"), ("0", "at least 1 frame"),
                                            ("100000", "more than 1024")])
def test_bad_frame_counts(setup, capsys, frames, needle):
    fails(["encode", "--frames", frames], capsys, f"--frames {frames}", needle)
    fails(["classify", str(setup / "red.mp4"), *CLASSIFIER[:-2], "--frames", frames, "--checkpoint",
           str(setup / "tiny.pth")], capsys, f"--frames {frames}", needle)
    with pytest.raises(VmmError, match="num_frames"):
        vmm.create_model_and_transforms("videomamba_tiny", depth=1, num_frames=int(frames))


@pytest.mark.parametrize("arg, needle", [("depth=-1", "depth must be a whole number >= 1"),
                                         ("depth=abc", "depth must be a whole number"),
                                         ("img_size=0", "img_size must be a whole number >= 1"),
                                         ("img_size=8", "smaller than patch_size=16")])
def test_bad_model_args(setup, capsys, arg, needle):
    fails(["classify", str(setup / "red.mp4"), *CLASSIFIER, "--model-arg", arg, "--checkpoint",
           str(setup / "tiny.pth")], capsys, needle)


@pytest.mark.parametrize("command", [["encode"], ["classify", "VIDEO", *CLASSIFIER, "--checkpoint", "CKPT"],
                                     ["search", "LIB", "red"], ["index", "VIDEO", "--library", "NEW", "--model",
                                     "MODEL", "--quiet", "--workers", "0"], ["demo", "--out", "NEW", "--videos", "3"]])
def test_bad_devices(setup, capsys, command):
    paths = {"VIDEO": setup / "red.mp4", "CKPT": setup / "tiny.pth", "LIB": setup / "lib",
             "NEW": setup / "unused", "MODEL": setup / "model"}
    args = [str(paths.get(a, a)) for a in command]
    # vmm index's device is checked by VideoLibrary.create, whose messages name its argument too
    option = "device= (--device)" if command[0] == "index" else "--device"
    fails(args + ["--device", "bogus"], capsys, f"error: {option} bogus is not a device; pass cpu or cuda[:N]")
    fails(args + ["--device", ""], capsys, f"error: {option} is empty (''); pass cpu or cuda[:N]")
    if not torch.cuda.is_available():
        fails(args + ["--device", "cuda"], capsys, f"error: {option} cuda: no CUDA GPU is visible",
              f"; pass {option} cpu")
    assert not (setup / "unused").exists()


def test_a_device_in_capitals_is_the_device():
    from vmm.factory import resolve_device
    assert resolve_device("CPU") == resolve_device(" Cpu ") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch sees no GPU")
def test_no_visible_gpu_says_what_to_check(monkeypatch):
    """"no CUDA GPU is visible" alone sent a user whose machine has a GPU (a CPU-only torch wheel, an old driver, an
    empty CUDA_VISIBLE_DEVICES) to look for the wrong cause."""
    from vmm.errors import VmmError
    from vmm.factory import resolve_device

    def message():
        with pytest.raises(VmmError) as refused:
            resolve_device("cuda")
        return str(refused.value)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert message() == ("--device cuda: no CUDA GPU is visible (CUDA_VISIBLE_DEVICES is empty, which hides every "
                         "GPU); pass --device cpu")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(torch.version, "cuda", None)
    assert f"(torch {torch.__version__} is a CPU-only build; for a GPU install a CUDA build of torch)" in message()
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert message() == ("--device cuda: no CUDA GPU is visible to this torch (built for CUDA 13.0; if the machine "
                         "has one, check that nvidia-smi lists it and that its driver supports CUDA 13.0); pass "
                         "--device cpu")


def test_index_option_values_name_the_option(setup, capsys):
    # Into a library with a recorded model: a bad --device used to be reported as model.json failing to load,
    # and --batch-size/--timeout by their Python names, only after the model had loaded.
    base = ["index", str(setup / "red.mp4"), "--library", str(setup / "lib"), "--quiet", "--workers", "0"]
    err = fails(base + ["--device", "bogus"], capsys, "(--device) bogus is not a device; pass cpu or cuda[:N]")
    assert "model.json" not in err
    fails(base + ["--batch-size", "0"], capsys, "--batch-size 0", "at least 1")
    fails(base + ["--timeout", "0"], capsys, "--timeout 0", "> 0")
    # The library pins 4 frames per clip; the recorded model's loading error used to take the blame.
    err = fails(base + ["--frames", "2"], capsys, "uses 4 frames per clip but --frames 2 was asked for", "drop --frames")
    assert "model.json" not in err


def test_colour_histogram_index_takes_any_device(setup, tmp_path, capsys):
    """The colour histogram runs on no device, so --device is moot: --device cuda on a machine without one
    indexed before the up-front device check came in, and still does."""
    args = ["index", str(setup / "red.mp4"), "--library", str(tmp_path / "lib"), "--model", "color-histogram",
            "--quiet", "--workers", "0", "--device"]
    assert main(args + ["cuda"]) == 0
    assert "indexed 1 files" in capsys.readouterr().out
    assert main(args[:4] + args[6:] + ["cuda:0"]) == 0  # the recorded model decides for an existing library
    capsys.readouterr()
    if not torch.cuda.is_available():  # a checkpoint into that library is a real model: its device is checked
        fails(args[:4] + ["--checkpoint", str(tmp_path / "none.pth")] + args[6:] + ["cuda"], capsys,
              "(--device) cuda: no CUDA GPU is visible")


@pytest.mark.parametrize("threads", ["-1", "0"])
def test_bad_thread_counts(setup, capsys, threads):
    fails(["encode", "--threads", threads], capsys, f"--threads {threads}")
    fails(["classify", str(setup / "red.mp4"), *CLASSIFIER, "--checkpoint", str(setup / "tiny.pth"),
           "--threads", threads], capsys, f"--threads {threads}")


def test_search_options(setup, capsys):
    lib = str(setup / "lib")
    capsys.readouterr()
    assert main(["search", lib, "red", "-k", "1000000000", "--json"]) == 0  # all hits, not a memory error
    assert '"rank": 1' in capsys.readouterr().out
    fails(["search", lib, "red", "--rerank", "-1"], capsys, "--rerank -1")
    fails(["search", lib, os.fsdecode(b"\xff\xfe abc")], capsys, "not valid UTF-8", r"b'\xff\xfe abc'")
    fails(["search", lib, "red", "--min-duration", "10", "--max-duration", "1"], capsys,
          "--min-duration 10", "--max-duration 1")
    fails(["search", lib, "red", "--min-duration", "nan"], capsys, "--min-duration nan")
    # An unset variable (--path "$DIR") named the working folder: "no results", as if nothing matched.
    fails(["search", lib, "red", "--path", ""], capsys, "--path is an empty string ('')", "drop --path")


def test_demo_options(setup, capsys):
    fails(["demo", "--out", str(setup / "red.mp4"), "--videos", "3"], capsys, "--out", "is a file")
    fails(["demo", "--out", str(setup / "unused"), "--queries", "-1"], capsys, "--queries -1")
    fails(["demo", "--out", str(setup / "unused"), "--videos", "0"], capsys, "--videos 0")
    assert not (setup / "unused").exists()


def test_files_that_are_not_checkpoints(setup, tmp_path, capsys):
    (tmp_path / "bytes.pth").write_bytes(bytes(range(1, 256)) * 16)
    (tmp_path / "notes.pth").write_text("these are my notes, not weights\n")
    whole = (setup / "tiny.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "cut.safetensors").write_bytes((setup / "model" / "model.safetensors").read_bytes()[:5000])
    for name in ("bytes.pth", "notes.pth"):
        err = fails(["classify", str(setup / "red.mp4"), *CLASSIFIER, "--checkpoint", str(tmp_path / name)], capsys,
                    str(tmp_path / name), "not a PyTorch or safetensors checkpoint")
        assert "safety" not in err and "KeyError" not in err
    for name in ("cut.pth", "cut.safetensors"):
        fails(["classify", str(setup / "red.mp4"), *CLASSIFIER, "--checkpoint", str(tmp_path / name)], capsys,
              str(tmp_path / name), "truncated or damaged")
    fails(["encode", "--model", "videomamba_m16_mm", "--checkpoint", str(tmp_path / "cut.pth")], capsys,
          "truncated or damaged")


@pytest.mark.parametrize("command", [["encode", "--threads", "100000"],
                                     ["classify", "VIDEO", *CLASSIFIER, "--checkpoint", "CKPT", "--threads", "1000"],
                                     ["index", "VIDEO", "--library", "NEW", "--model", "MODEL", "--workers", "1000"],
                                     ["eval", "msrvtt", "--annotations", "A", "--videos", "V", "--workers", "1000"],
                                     ["demo", "--out", "NEW", "--workers", "100000"]])
def test_thread_and_process_counts_far_above_the_cpus(setup, capsys, command):
    # torch segfaulted on --threads 100000; --threads 1000 took a minute instead of a second
    paths = {"VIDEO": setup / "red.mp4", "CKPT": setup / "tiny.pth", "NEW": setup / "unused", "MODEL": setup / "model"}
    option = command[-2]
    fails([str(paths.get(a, a)) for a in command], capsys, f"{option} {command[-1]}", "far above",
          f"at most {4 * os.cpu_count()}")
    assert not (setup / "unused").exists()


def test_an_empty_library_path_is_refused(setup, tmp_path, monkeypatch, capsys):
    # abspath("") is the working folder: in an empty one, `--library ""` built a library right there.
    from index.ingest import build_library
    from index.library import remove_paths
    from index.encoder import ColorHistogramEncoder
    from index.reader import open_library
    from retrieval.library import VideoLibrary
    monkeypatch.chdir(tmp_path)
    message = "the library path is an empty string ('')"
    fails(["index", str(setup / "red.mp4"), "--library", "", "--model", str(setup / "model"), "--quiet"], capsys,
          message)
    fails(["index", str(setup / "red.mp4"), "--library", "", "--remove"], capsys, message)
    fails(["search", "", "red"], capsys, message)
    for call in (lambda: build_library([str(setup / "red.mp4")], "", ColorHistogramEncoder(), progress=False),
                 lambda: remove_paths("", [str(setup / "red.mp4")]), lambda: open_library(""),
                 lambda: VideoLibrary.open(""), lambda: VideoLibrary.create("", model="color-histogram")):
        with pytest.raises(VmmError, match=re.escape(message)):
            call()
    assert os.listdir(tmp_path) == []


def test_empty_paths_and_early_demo_checks(setup, capsys):
    fails(["encode", ""], capsys, "video path is empty")
    fails(["demo", "--out", ""], capsys, "--out is empty")
    fails(["demo", "--out", str(setup / "unused"), "--seed", "-1"], capsys, "--seed -1")
    fails(["demo", "--out", str(setup / "unused"), "--workers", "-1"], capsys, "--workers -1")
    fails(["demo", "--out", str(setup / "unused"), "--model", "nosuch"], capsys, "unknown model 'nosuch'")
    (setup / "demo_out").mkdir()
    (setup / "demo_out" / ".vmm-demo").write_text("an earlier demo's folder\n")
    os.symlink(setup / "lib", setup / "demo_out" / "library")  # a library of the tiny model, not vmm_nano
    fails(["demo", "--out", str(setup / "demo_out")], capsys, "holds a demo library", "pass a new --out")
    fails(["demo", "--out", "/proc/vmm-demo"], capsys, "--out /proc/vmm-demo", "cannot create folders in /proc")
    fails(["demo", "--out", str(setup / "red.mp4" / "demo")], capsys, "cannot create folders in", "red.mp4")
    assert not (setup / "unused").exists() and sorted(os.listdir(setup / "demo_out")) == [".vmm-demo", "library"]


def test_messages_name_the_real_problem(setup, tmp_path, capsys):
    fails(["encode", str(setup / "red.mp4"), "--checkpoint", str(tmp_path)], capsys, "is a folder")
    fails(["classify", str(setup / "red.mp4"), *CLASSIFIER, "--checkpoint", str(setup / "tiny.pth"), "--labels",
           str(tmp_path)], capsys, f"--labels {tmp_path} is a folder")
    fails(["search", str(setup / "lib"), "red", "--min-duration", "-1"], capsys, "--min-duration -1")
    err = fails(["classify", str(setup / "red.mp4"), "--model", "tinycls"], capsys, "unknown model",
                "videomamba_tiny")
    assert "is required" not in err
    assert main(["index", str(setup / "red.mp4"), "--library", str(tmp_path / "ch"), "--model", "color-histogram",
                 "--quiet", "--workers", "0"]) == 0
    err = fails(["search", str(tmp_path / "ch"), "--video", str(setup / "red.mp4"), "--checkpoint",
                 str(setup / "tiny.pth")], capsys, "color-histogram", "drop --checkpoint")
    assert "videomamba_m16_25m" not in err


def test_index_names_an_unreadable_library(setup, monkeypatch, capsys):
    """It said "no model given": a library it cannot list reads as a folder without a catalog."""
    library, listdir = str(setup / "lib"), os.listdir

    def denied(path="."):  # chmod 000 as any user, root included
        if os.fspath(path) == library:
            raise PermissionError(13, "Permission denied", library)
        return listdir(path)
    monkeypatch.setattr(os, "listdir", denied)
    fails(["index", str(setup / "red.mp4"), "--library", library], capsys,
          f"library {library} is not readable (Permission denied); check its permissions")


def test_unreadable_library_and_weights(setup, tmp_path, capsys):
    import shutil
    shutil.copytree(setup / "lib", tmp_path / "lib")
    shutil.copytree(setup / "model", tmp_path / "model")
    os.chmod(tmp_path / "lib", 0)
    os.chmod(tmp_path / "model" / "model.safetensors", 0)
    try:
        if os.access(tmp_path / "lib", os.R_OK):
            pytest.skip("permissions do not apply to this user (root)")
        fails(["search", str(tmp_path / "lib"), "red"], capsys, "is not readable")
        fails(["encode", str(setup / "red.mp4"), "--model", str(tmp_path / "model")], capsys, "is not readable")
        fails(["encode", str(setup / "red.mp4"), "--model", "videomamba_m16_mm", "--checkpoint",
               str(tmp_path / "model" / "model.safetensors")], capsys, "is not readable")
    finally:
        os.chmod(tmp_path / "lib", 0o755)


def test_a_checkpoint_that_is_no_regular_file_says_what_it_is(setup, tmp_path, capsys):
    """A named pipe (the shell's <(...)), a device or a link to a deleted file was a checkpoint that "does not
    exist", though the path was there."""
    os.mkfifo(tmp_path / "pipe.pth")
    (tmp_path / "gone.pth").symlink_to(tmp_path / "deleted.pth")
    cases = [(tmp_path / "pipe.pth", "is a named pipe (FIFO), not a regular file; save the weights to a file"),
             ("/dev/null", "is a character device, not a regular file; save the weights to a file"),
             (tmp_path / "gone.pth", f"is a link to {tmp_path / 'deleted.pth'}, which does not exist; pass ")]
    for path, needle in cases:
        fails(["classify", str(setup / "red.mp4"), *CLASSIFIER, "--checkpoint", str(path)], capsys,
              f"checkpoint {path} {needle}")
        with pytest.raises(VmmError, match=f"^checkpoint {re.escape(str(path))} {re.escape(needle)}"):
            vmm.create_model("videomamba_tiny", pretrained=path, depth=1, img_size=32, num_frames=2)
        with pytest.raises(VmmError, match=f"^checkpoint {re.escape(str(path))} {re.escape(needle)}"):
            vmm.read_checkpoint(path)


def test_checkpoint_default_without_one_names_the_option(setup, capsys):
    """--checkpoint default for a model without released weights said "pass pretrained=PATH", a Python keyword."""
    fails(["encode", str(setup / "red.mp4"), "--model", "videomamba_tiny", "--checkpoint", "default"], capsys,
          "model videomamba_tiny names no default pretrained file (pretrained='default' / --checkpoint default); "
          "pass a weights file or model folder as pretrained=PATH / --checkpoint PATH, or leave it out")
