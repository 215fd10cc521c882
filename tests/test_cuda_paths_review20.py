"""The code paths a GPU takes, which a CPU-only CI never runs: what can be simulated on the CPU (a GPU that runs out
of memory, a launch with more processes than GPUs) runs everywhere; the rest is marked ``cuda``."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import vmm
from tests import videos
from tests.tiny_model import TINY, save_tiny_model
from vmm.errors import VmmError

# What torch raises when a GPU has no room left (a RuntimeError subclass, as the CPU allocator's failure is).
GPU_FULL = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which "
            "1.06 GiB is free.")


def gpu_full(*args, **kwargs):
    raise torch.OutOfMemoryError(GPU_FULL)


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_eval")
    save_tiny_model(root / "model")
    (root / "vids").mkdir()
    videos.write_red_green_square(root / "vids")
    (root / "ok.json").write_text(json.dumps([{"video": f"{name}.mp4", "caption": f"A {name} video."}
                                              for name in ("red", "green", "square")]))
    return root


def eval_args(root, out):
    return ["--annotations", str(root / "ok.json"), "--videos", str(root / "vids"), "--model", str(root / "model"),
            "--device", "cpu", "--workers", "0", "--json", str(out / "r.json"), "--markdown", str(out / "r.md")]


@pytest.mark.parametrize("method,option", [
    ("encode_text", "text_batch_size (--text-batch-size) than 256"),
    ("encode_video", "batch_size (--batch-size) than 16"),
    ("itm_logits", "itm_batch_size (--itm-batch-size) than 128"),
])
def test_an_eval_out_of_memory_names_the_batch_size_of_what_ran_out(eval_data, tmp_path, monkeypatch, capsys,
                                                                     method, option):
    """A GPU that runs out of memory in a phase of the evaluation: one line naming that phase's batch option (the
    command named --batch-size and --frames for a re-rank, where --frames must fit the model anyway)."""
    from vmm.cli import main
    from vmm.models.multimodal import VideoTextModel
    monkeypatch.setattr(VideoTextModel, method, gpu_full)
    assert main(["eval", "msrvtt", "--no-progress", *eval_args(eval_data, tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory ") and err.count("\n") == 1, err
    assert f"(could not allocate 2.00 GiB more); pass a smaller {option}, or free memory" in err
    assert not (tmp_path / "r.json").exists()


def test_the_benchmark_scripts_say_an_out_of_memory_in_one_line_with_the_option(eval_data, tmp_path, monkeypatch,
                                                                                 capsys):
    """The benchmark scripts ended in a CUDA traceback; they now take --itm-batch-size too, which the line names."""
    import retrieval.evaluate as ev
    from vmm.models.multimodal import VideoTextModel
    monkeypatch.setattr(VideoTextModel, "itm_logits", gpu_full)
    args = [*eval_args(eval_data, tmp_path), "--itm-batch-size", "7"]
    assert ev.benchmark_main("msrvtt", args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory re-ranking (could not allocate 2.00 GiB more); pass a smaller "
                          "itm_batch_size (--itm-batch-size) than 7") and err.count("\n") == 1, err
    monkeypatch.undo()
    assert ev.benchmark_main("msrvtt", args) == 0  # the smaller batch runs (and scores as any other)
    assert json.loads((tmp_path / "r.json").read_text())["num_videos"] == 3


def test_the_benchmark_scripts_say_an_out_of_memory_outside_the_batches_in_one_line(eval_data, tmp_path, monkeypatch,
                                                                                    capsys):
    """The similarity matrix (or the model's load, the re-rank's tokens) on a GPU another job fills: vmm eval says one
    line, the benchmark scripts ended in a CUDA traceback."""
    import retrieval.evaluate as ev
    monkeypatch.setattr(ev, "chunked_similarity", gpu_full)
    assert ev.benchmark_main("msrvtt", eval_args(eval_data, tmp_path)) == 2
    assert capsys.readouterr().err == ("error: out of memory (could not allocate 2.00 GiB more); free memory (other "
                                       "programs, another job on the GPU)\n")
    assert not (tmp_path / "r.json").exists()


class _SetDevice(Exception):
    """Where the runtime would select its GPU (no GPU here): the test stops there."""


@pytest.fixture
def two_gpus(monkeypatch):
    """A machine that shows two CUDA GPUs, whose set_device records the GPU and stops the run."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)

    def set_device(device):
        raise _SetDevice(str(device))
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_an_eval_launch_with_more_processes_than_gpus_is_refused_in_one_line(two_gpus):
    """torchrun --nproc_per_node 4 on two GPUs: process 3 asked CUDA for a cuda:3 that is not there (a raw
    "invalid device ordinal"); it now says how many processes fit."""
    from retrieval.evaluate import EvalConfig, _start_runtime
    two_gpus.setenv("WORLD_SIZE", "4")
    two_gpus.setenv("RANK", "3")
    two_gpus.setenv("LOCAL_RANK", "3")
    with pytest.raises(VmmError, match=r"^process 3 of 4 \(local rank 3\) has no GPU of its own: 2 are visible on its "
                                       r"machine; launch at most 2 processes per machine \(torchrun --nproc_per_node "
                                       r"2\), or pass device \(--device\) cpu$"):
        _start_runtime(EvalConfig("msrvtt", "a.json", "v", device="cuda"))


def test_an_eval_rank_without_local_rank_takes_its_own_gpu(two_gpus):
    """A launcher that sets RANK and WORLD_SIZE only: every rank took cuda:0, where NCCL refuses a second rank; the
    rank within the node is its GPU, as `vmm index` reads it."""
    from retrieval.evaluate import EvalConfig, _start_runtime
    two_gpus.setenv("WORLD_SIZE", "2")
    two_gpus.setenv("RANK", "1")
    with pytest.raises(_SetDevice, match="^cuda:1$"):
        _start_runtime(EvalConfig("msrvtt", "a.json", "v", device="cuda"))
    two_gpus.setenv("WORLD_SIZE", "x")
    with pytest.raises(VmmError, match="environment variable WORLD_SIZE='x' is not an integer"):
        _start_runtime(EvalConfig("msrvtt", "a.json", "v", device="cuda"))


def test_an_eval_rank_without_local_rank_that_sees_one_gpu_takes_it(two_gpus):
    """Two machines of one GPU each (or srun --gpus-per-task=1), a launcher that sets RANK and WORLD_SIZE only: rank
    1 took cuda:0 before LOCAL_RANK was guessed, and was then refused as "local rank 1" with "launch at most 1
    process per machine", which it did. Where the guess names more GPUs than the machine shows, LOCAL_RANK is named."""
    from retrieval.evaluate import EvalConfig, _start_runtime
    two_gpus.setattr(torch.cuda, "device_count", lambda: 1)
    two_gpus.setenv("WORLD_SIZE", "2")
    two_gpus.setenv("RANK", "1")
    with pytest.raises(_SetDevice, match="^cuda:0$"):
        _start_runtime(EvalConfig("msrvtt", "a.json", "v", device="cuda"))
    two_gpus.setattr(torch.cuda, "device_count", lambda: 2)
    two_gpus.setenv("WORLD_SIZE", "4")
    two_gpus.setenv("RANK", "3")
    with pytest.raises(VmmError, match=r"^process 3 of 4 \(local rank 3, as LOCAL_RANK is not set\) has no GPU of its "
                                       r"own: 2 are visible on its machine; launch at most 2 processes per machine "
                                       r"\(torchrun --nproc_per_node 2\), set LOCAL_RANK, or pass device \(--device\) "
                                       r"cpu$"):
        _start_runtime(EvalConfig("msrvtt", "a.json", "v", device="cuda"))


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_a_training_step_out_of_memory_is_one_line_naming_the_batch_size(tmp_path, monkeypatch, capsys):
    """A GPU too small for the recipe's batch: one line naming data.batch_size and status 2, not a CUDA traceback."""
    from vmm.data.synthetic import generate_corpus
    from vmm.train import main
    from vmm.training.objective import PretrainObjective
    generate_corpus(tmp_path, num_videos=6, seed=0, size=32, seconds=1.0, workers=1)
    monkeypatch.setattr(PretrainObjective, "forward", gpu_full)
    code = main(["--config", "configs/pretrain/tiny.yaml", "train.progress=False", "data.num_workers=0",
                 f"data.train=[{{'anno': '{tmp_path / 'train.json'}', 'root': '{tmp_path}'}}]",
                 f"train.output_dir={tmp_path / 'out'}", "data.batch_size=3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == (
        "error: out of memory in a training step (could not allocate 2.00 GiB more); pass a smaller data.batch_size "
        "than 3 (samples per process; a larger train.grad_accum keeps the samples per update), or free memory "
        "(other programs, another job on the GPU)"), err
    assert not any("Traceback" in line for line in err)


def test_a_process_other_than_the_first_says_its_own_out_of_memory(capsys):
    """vmm.train prints process 0's errors only: a second process that alone ran out printed nothing at all."""
    from vmm.training.config import load_config
    from vmm.training.loop import _fitting
    cfg = load_config("configs/pretrain/tiny.yaml", [])
    with pytest.raises(VmmError, match=r"^\[process 1\] out of memory in a training step") as raised:
        _fitting(cfg, 1, 2, gpu_full)
    assert capsys.readouterr().err == f"error: {raised.value}\n"
    with pytest.raises(RuntimeError, match="^an unrelated failure$"):  # other errors pass unchanged
        _fitting(cfg, 0, 1, lambda: (_ for _ in ()).throw(RuntimeError("an unrelated failure")))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("major,expected", [(7, "fp16"), (8, "bf16"), (9, "bf16")])
def test_auto_training_precision_is_bf16_only_where_the_gpu_computes_in_it(monkeypatch, major, expected):
    """A V100 or T4 (compute capability 7) holds bf16 tensors, which torch's default check counts as support:
    train.precision=auto chose bf16 there (no tensor cores for it) instead of fp16. Simulated: torch's own check
    runs against the properties of the GPU it would see."""
    import types
    from vmm.training.config import load_config
    from vmm.training.loop import resolve_precision
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: types.SimpleNamespace(major=major))
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)  # emulated bf16 works
    cfg = load_config("configs/pretrain/tiny.yaml", ["train.precision=auto"])
    assert resolve_precision(cfg, cpu=False) == expected
    assert resolve_precision(cfg, cpu=True) == "no"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # the accelerate config decides where it says
    assert resolve_precision(cfg, cpu=False) == "bf16"


# ---------------------------------------------------------------------------------------------- on a GPU only
def _clips(n, seed, t=4):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (t, 36, 44, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_a_half_precision_model_encodes_on_the_gpu(precision):
    """create_model(precision="fp16") is documented, but the encoder's bf16 autocast over fp16 weights fails in
    torch.cat ("Unexpected floating ScalarType in at::autocast::prioritize": autocast promotes two fp16 tensors only
    to its own dtype); the eager forward, its CUDA graph and the texts all give the fp32 model's vectors closely."""
    from vmm.embedder import VideoTextEncoder
    from vmm.models.persistence import precision_dtype
    torch.manual_seed(0)
    model = vmm.create_model("videomamba_m16_mm", **TINY).eval()
    reference = VideoTextEncoder(copy.deepcopy(model), device="cuda", batch_size=4, cuda_graph=False)
    half = VideoTextEncoder(model.to(precision_dtype(precision)), device="cuda", batch_size=4)
    clips = _clips(4, 0)
    expected = reference.encode_clips(clips)
    for _ in range(3):  # eager, capture, replay
        np.testing.assert_allclose(half.encode_clips(clips), expected, atol=0.05)
    np.testing.assert_allclose(half.encode_texts(["a red square"]), reference.encode_texts(["a red square"]),
                               atol=0.05)
    assert half.itm_scores_for("a red square", clips).shape == (4,)
