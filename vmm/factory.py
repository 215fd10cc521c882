"""The open_clip-style entry points: ``create_model``, ``create_model_and_transforms``, ``get_tokenizer``, pretrained
resolution."""
from __future__ import annotations

import dataclasses
import os
import reprlib
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn

from vmm.errors import CheckpointError, VmmError, is_whole_number
from vmm.models import registry
from vmm.models.checkpoint import load_checkpoint, not_a_file
from vmm.models.config import MAX_FRAMES
from vmm.models.persistence import (file_shapes, first_mismatch, folder_weights_file, from_pretrained,
                                    is_pretrained_dir, precision_dtype, read_config, user_path)
from vmm.models.registry import get_model_config
from vmm.tokenizer import Tokenizer
from vmm.transforms import EvalTransform, TrainTransform

HF_PREFIX = "hf-hub:"
HF_REPO = "OpenGVLab/VideoMamba"


def resolve_pretrained(pretrained: Union[str, Path], *, fix: Optional[str] = None) -> Path:
    """A local file or folder, or ``hf-hub:<repo>/<file>`` found in the local Hugging Face cache.

    Downloads only when the hub is reachable and ``HF_HUB_OFFLINE`` is not set; otherwise a one-line error
    names the file, where to get it and what to do with the download: ``fix``, else pass it as ``--checkpoint
    PATH`` (a caller without that option names its own way).
    """
    text = str(pretrained)
    if not text.startswith(HF_PREFIX):
        path = Path(text).expanduser()
        if not path.is_file() and not path.is_dir():
            raise VmmError(not_a_file(path, "pass an existing .pth/.safetensors file or model folder"))
        return path
    # owner/repository/file, where the file may sit in a folder of the repository (owner/repo/sub/file.pth was
    # refused); "hf-hub:OpenGVLab/VideoMamba" was read as the file VideoMamba of a repository OpenGVLab
    parts = text[len(HF_PREFIX):].split("/", 2)
    if len(parts) != 3 or not all(parts) or not all(parts[2].split("/")):
        raise VmmError(f"bad hub reference {text!r}: it needs an owner, a repository and a file; use "
                       f"hf-hub:{HF_REPO}/<file.pth>")
    repo, filename = "/".join(parts[:2]), parts[2]
    from huggingface_hub import hf_hub_download
    try:
        return Path(hf_hub_download(repo, filename, local_files_only=True))
    except Exception:
        pass
    try:
        if not _hub_reachable():  # fail at once offline instead of after the client's retries
            raise ConnectionError("the Hugging Face hub is not reachable")
        return Path(hf_hub_download(repo, filename))
    except Exception as e:
        name = Path(filename).name
        fix = fix or f"pass --checkpoint /path/to/{name} (or pretrained='/path/to/{name}')"
        raise VmmError(f"{filename} is not in the local Hugging Face cache and could not be downloaded "
                       f"({type(e).__name__}); download it from https://huggingface.co/{repo} and {fix}") from None


def _hub_reachable(timeout: float = 3.0) -> bool:
    import os
    import socket
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def default_pretrained(name: str) -> Optional[str]:
    """The weights a registered model name stands for: a checkpoint shipped in the repository (vmm_nano) or the
    official file on the Hugging Face hub (looked up in the local cache first); None for bare architectures."""
    info = (get_model_config(name) or {}).get("pretrained") or {}
    if info.get("shipped"):
        return str(Path(__file__).resolve().parents[1] / info["shipped"])
    if info.get("hf_file"):
        return f"{HF_PREFIX}{info.get('hf_repo', HF_REPO)}/{info['hf_file']}"
    return None


def released_video_text_models() -> list[str]:
    """The registered video-text model names with released weights: those that run with no checkpoint given
    (``vmm demo --model``, zero-shot ``vmm classify``)."""
    return [n for n in registry.list_models() if _is_multimodal(n) and default_pretrained(n)]


def _load_pretrained(model: nn.Module, pretrained: Union[str, Path]) -> nn.Module:
    path = resolve_pretrained(pretrained)
    load_weights(model, path)
    model.pretrained_source = str(path)
    return model


def check_frames(frames: Any, option: str = "--frames") -> int:
    """``frames`` (a command's frame-count option) as a frame count for a clip, or VmmError naming ``option``.

    >>> check_frames(8)
    8
    >>> check_frames(0)
    Traceback (most recent call last):
    ...
    vmm.errors.VmmError: --frames 0 (frames=0): a clip needs at least 1 frame; pass e.g. --frames 8 (frames=8), or leave it out
    """
    # Python callers (frames_override) reach this too: the message names the argument as well as the flag.
    shown, fix = f"{option} {frames!r} (frames={frames!r})", f"pass e.g. {option} 8 (frames=8), or leave it out"
    if not is_whole_number(frames):  # a NumPy integer was refused as "not a whole number"
        raise VmmError(f"{shown}: frames per clip must be a whole number; {fix}")
    frames = int(frames)
    if frames < 1:
        raise VmmError(f"{shown}: a clip needs at least 1 frame; {fix}")
    if frames > MAX_FRAMES:
        raise VmmError(f"{shown}: more than {MAX_FRAMES} frames per clip does not fit in memory; {fix}")
    return frames


def _requested_frames(overrides: dict) -> Optional[int]:
    """The frame count ``overrides`` ask for (top level or under ``vision``), or None."""
    vision = overrides.get("vision")
    return overrides.get("num_frames", vision.get("num_frames") if isinstance(vision, dict) else None)


def _saved_config(directory: Union[str, Path]) -> dict:
    try:
        return read_config(directory)
    except VmmError:
        return {}  # from_pretrained reports a damaged config with its own message


def saved_frames(directory: Union[str, Path]) -> Optional[int]:
    """The frame count a save_pretrained folder was saved for, or None when its config does not say."""
    cfg = _saved_config(directory)
    model_cfg = cfg.get("model") if isinstance(cfg, dict) else None
    frames = _requested_frames(model_cfg) if isinstance(model_cfg, dict) else None
    return frames if isinstance(frames, int) else None


def _frames_error(wanted: int, saved: int, weights: Union[str, Path]) -> VmmError:
    """``weights`` (a model folder) hold ``saved`` frames, not the ``wanted`` ones; the Python argument is written
    as the folder's kind of model takes it, since a multimodal model refuses a top-level ``num_frames``."""
    arg = "vision=dict(num_frames={})" if _is_multimodal(weights) else "num_frames={}"
    return VmmError(f"--frames {wanted} ({arg.format(wanted)}): the weights in {weights} were trained for {saved} "
                    f"frames; pass --frames {saved} ({arg.format(saved)}), or leave it out")


def _from_folder(directory: Union[str, Path], overrides: dict) -> nn.Module:
    """``from_pretrained`` that explains a frame count the folder's weights cannot take in the commands' terms."""
    wanted = _requested_frames(overrides)
    saved = saved_frames(directory)
    if wanted is not None and saved is not None and wanted != saved:
        raise _frames_error(wanted, saved, directory)
    return from_pretrained(directory, **overrides)


def _with_folder_weights(name: str, folder: Union[str, Path], overrides: dict) -> nn.Module:
    """Registered model ``name`` with a model folder's weights, loaded exactly (no interpolation: a folder is a
    whole model). When the folder holds that very model (vmm_nano's shipped weights) it is the model: building
    ``name`` as well, only to overwrite every weight, doubled the time."""
    try:
        with torch.device("meta"):  # the config and its checks only: no memory, no initialisation
            probe = registry.create_model(name, **overrides)
    except VmmError:
        raise  # a bad option, named as the build below would name it
    except Exception:  # noqa: BLE001 - a model of the user's own that cannot be built on "meta": build it below
        probe = None
    source = _from_folder(folder, {})
    cfg, wanted = getattr(source, "cfg", None), getattr(probe, "cfg", None)
    if (dataclasses.is_dataclass(cfg) and type(wanted) is type(cfg) and probe.architecture == source.architecture
            and dataclasses.asdict(wanted) == dataclasses.asdict(cfg)):
        source.model_name, source.model_meta = probe.model_name, probe.model_meta
        return source
    model = registry.create_model(name, **overrides)
    _load_folder_weights(model, source, folder, name)
    # Taken now: read from the folder when the model is saved, it followed a relative path elsewhere or a later
    # export into the same folder.
    model.weights_from = source.weights_from
    return model


def _load_folder_weights(model: nn.Module, source: nn.Module, folder: Union[str, Path],
                         name: Union[str, Path]) -> None:
    """Load ``source`` (model folder ``folder`` loaded) into ``model`` exactly, explaining a frame-count or
    architecture mismatch."""
    theirs = {k: tuple(t.shape) for k, t in source.state_dict().items()}
    own = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    temporal = [k for k in own if k.endswith("temporal_pos_embedding")]
    if set(own) == set(theirs) and temporal and all(own[k] == theirs[k] for k in own if k not in temporal):
        key = temporal[0]
        if own[key] != theirs[key]:
            tubelet = getattr(getattr(model.cfg, "vision", model.cfg), "tubelet_size", 1)
            raise _frames_error(own[key][1] * tubelet, theirs[key][1] * tubelet, folder)
    detail = first_mismatch(own, theirs)
    if detail:
        raise VmmError(f"the weights in {folder_weights_file(folder)} do not fit model {name}: {detail}; load the "
                       f"folder as the model instead (create_model_and_transforms({str(folder)!r}) without "
                       f"pretrained=, or --model {folder} without --checkpoint)")
    model.load_state_dict(source.state_dict())


def load_weights(model: nn.Module, path: Union[str, Path, dict]) -> nn.Module:
    """:func:`vmm.load_checkpoint` from a file, with plain messages for files that are not checkpoints; a state
    dict is loaded as :func:`vmm.load_checkpoint` loads it.

    >>> import tempfile, torch, vmm
    >>> src = vmm.create_model("videomamba_tiny", depth=1, num_frames=2, img_size=32)
    >>> path = f"{tempfile.mkdtemp()}/tiny.pth"
    >>> torch.save(src.state_dict(), path)
    >>> dst = load_weights(vmm.create_model("videomamba_tiny", depth=1, num_frames=4, img_size=32), path)
    >>> dst.temporal_pos_embedding.shape  # 2 frames in the file, interpolated to the model's 4
    torch.Size([1, 4, 192])
    """
    if not isinstance(path, (str, os.PathLike)):  # a state dict failed inside pathlib ("expected str, bytes...")
        return load_checkpoint(model, path)
    path = Path(path)
    try:
        return load_checkpoint(model, path)
    except CheckpointError as e:
        if "refused for safety" in str(e):
            raise CheckpointError(f"checkpoint {path} holds Python objects besides tensors, which vmm does not "
                                  "unpickle for safety; re-save it as a plain state dict "
                                  "(torch.save(model.state_dict(), ...)) or as .safetensors") from None
        raise


def _tensor_shapes(path: Path, kind: Optional[str] = None) -> dict:
    """A checkpoint's tensors without reading their data where the format allows (the file is read again to load
    it, and an official multimodal file is about a gigabyte): memory-mapped from a torch.save zip archive, meta
    tensors from a safetensors header. ``kind``: what check_weights_file said of the file, when the caller asked
    already; else CheckpointError for a file that is no checkpoint or is damaged."""
    from vmm.models.checkpoint import check_weights_file, load_tensors, read_checkpoint, unwrap_state_dict
    kind = kind or check_weights_file(path)
    if kind == "zip":
        return unwrap_state_dict(load_tensors(path, mmap=True), str(path))
    if kind == "safetensors":
        return {k: torch.empty(shape, device="meta") for k, shape in file_shapes(path).items()}
    return read_checkpoint(path)  # a legacy pickle: read whole


def checkpoint_vision_settings(path: Union[str, Path]) -> dict:
    """The video encoder settings a checkpoint file was made for, read from its tensors' shapes
    (:func:`vmm.models.checkpoint.vision_overrides_from_state_dict`: ``num_frames`` and ``img_size`` from the
    position tables, ``num_classes`` from the head, ...); {} when the shapes do not tell. VmmError for a file that is
    not a checkpoint or is damaged, before any tensor is read.

    >>> import tempfile, torch, vmm
    >>> m = vmm.create_model("videomamba_tiny", depth=1, num_frames=4, img_size=32, num_classes=3)
    >>> path = f"{tempfile.mkdtemp()}/tiny.pth"
    >>> torch.save(m.state_dict(), path)
    >>> {k: v for k, v in checkpoint_vision_settings(path).items() if k in ("num_frames", "img_size", "num_classes")}
    {'img_size': 32, 'num_frames': 4, 'num_classes': 3}
    """
    from vmm.models.checkpoint import check_weights_file, vision_overrides_from_state_dict
    path = Path(user_path(path))  # as the loaders read "~/...": a quoted one ran a 16-frame file at 8 frames
    kind = check_weights_file(path)  # raised here, not taken for shapes that do not tell
    try:
        return vision_overrides_from_state_dict(_tensor_shapes(path, kind))
    except Exception:  # torch's UnpicklingError for a file with Python objects, odd shapes...: loading says what
        return {}


def checkpoint_input_size(path: Union[str, Path]) -> Optional[tuple[int, int]]:
    """(frames, img_size) a video encoder checkpoint file was made for, read from its position tables; None when
    the file cannot tell (no temporal table, not a checkpoint: :func:`load_weights` then says what is wrong).

    >>> import tempfile, torch, vmm
    >>> m = vmm.create_model("videomamba_tiny", depth=1, num_frames=16, img_size=64, num_classes=3)
    >>> path = f"{tempfile.mkdtemp()}/videomamba_t16_k400_f16_res64.pth"
    >>> torch.save(m.state_dict(), path)
    >>> checkpoint_input_size(path)
    (16, 64)
    """
    try:
        sizes = checkpoint_vision_settings(path)
    except Exception:  # not a checkpoint, a damaged one: load_weights says what
        return None
    if "num_frames" not in sizes or "img_size" not in sizes:
        return None
    return sizes["num_frames"], sizes["img_size"]


def checkpoint_frames(checkpoint: Optional[Union[str, Path]]) -> Optional[int]:
    """The frame count a checkpoint *file* was made for (None for no file, a folder, a hub name, or a file that
    does not tell): the default of the commands' ``--frames`` when ``--checkpoint`` is a file, so that a 16-frame
    fine-tune runs 16 frames instead of the model config's count through an interpolated temporal table.

    >>> checkpoint_frames(None), checkpoint_frames("hf-hub:OpenGVLab/VideoMamba/videomamba_m16_25M_f8_res224.pth")
    (None, None)
    """
    if not checkpoint or not Path(user_path(checkpoint)).is_file():
        return None
    size = checkpoint_input_size(checkpoint)
    return None if size is None else size[0]


def resolve_device(device: Optional[Union[str, torch.device]], option: str = "--device") -> torch.device:
    """A torch.device for ``device`` (None or "auto": cuda when visible, else cpu), or VmmError naming
    ``option`` for a string that is no device or a GPU that is not there.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = str(device).strip().lower()  # "CPU", "Cuda:1": torch takes lower case only
    if not text:  # an unset shell variable (--device "$DEV")
        raise VmmError(f"{option} is empty (''); pass cpu or cuda[:N], or leave it out for a GPU when there is one")
    try:
        dev = torch.device(text) if not isinstance(device, torch.device) else device
    except (RuntimeError, ValueError):
        raise VmmError(f"{option} {text} is not a device; pass cpu or cuda[:N]") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise VmmError(f"{option} {text}: no CUDA GPU is visible{_why_no_cuda()}; pass {option} cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise VmmError(f"{option} {text}: only {count} CUDA GPU{'s' * (count > 1)} visible (cuda:0 to "
                           f"cuda:{count - 1}); pass one of those or {option} cpu")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise VmmError(f"{option} {text}: no Apple GPU (MPS) is available; pass {option} cpu")
    elif dev.type != "cpu":
        raise VmmError(f"{option} {text} is not a device vmm runs on; pass cpu or cuda[:N]")
    return dev


def _why_no_cuda() -> str:
    """What to check when torch sees no GPU: "no CUDA GPU is visible" alone sent users with a GPU in the machine
    (a CPU-only torch wheel, a driver older than torch's CUDA, CUDA_VISIBLE_DEVICES) to look for the wrong cause."""
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and not hidden.strip():
        return " (CUDA_VISIBLE_DEVICES is empty, which hides every GPU)"
    if torch.version.cuda is None:
        return f" (torch {torch.__version__} is a CPU-only build; for a GPU install a CUDA build of torch)"
    return (f" to this torch (built for CUDA {torch.version.cuda}; if the machine has one, check that nvidia-smi "
            f"lists it and that its driver supports CUDA {torch.version.cuda})")


def _check_name(name: Any, what: str = "model") -> None:
    """A model name or folder must be a str or a path: a number or None failed deep inside pathlib."""
    if not isinstance(name, (str, os.PathLike)):
        raise VmmError(f"{what} must be a registered model name or a model folder's path, got {reprlib.repr(name)}; "
                       "see vmm.list_models()")
    if isinstance(name, str) and not name.strip():  # Path("") is ".", which read as a folder of other files
        raise VmmError(f"{what} is empty; pass a registered model name (see vmm.list_models()) or a model "
                       "folder's path")


def _not_a_model(name: Union[str, Path]) -> Optional[str]:
    """Why ``name``, a path that is no model folder, cannot be built (a weights file, a folder of other files, a
    folder that does not exist), with the fix; None when it does not look like a path. Else it read as an unknown
    model name and the message listed every registered model."""
    if str(name).startswith(HF_PREFIX):  # open_clip takes a hub model as the name; here the hub holds weights only
        return (f"model {name} is a hub weights file, not a model name; pass a registered model name (see "
                f"vmm.list_models()) with pretrained='{name}'")
    path = Path(name)
    if path.is_file():
        return (f"model {path} is a weights file, not a model name or folder; pass a registered model name (see "
                f"vmm.list_models()) with the file as pretrained= / --checkpoint {path}")
    if path.is_dir():
        from vmm.models.persistence import CONFIG_NAME, WEIGHTS_NAME
        if (path / CONFIG_NAME).is_file():
            return (f"model folder {path} has {CONFIG_NAME} but no {WEIGHTS_NAME} (an interrupted save?); save the "
                    "model into it again with vmm.save_pretrained")
        weights = sorted(p.name for p in path.iterdir() if p.suffix in (".pth", ".pt", ".bin", ".safetensors"))
        also = (f"; to load {path / weights[0]}, pass a registered model name with it as pretrained= / "
                f"--checkpoint") if weights else ""
        return (f"model {path} is a folder but not a vmm model folder (no {CONFIG_NAME} + {WEIGHTS_NAME}); pass a "
                f"folder written by vmm.save_pretrained or a registered model name (see vmm.list_models()){also}")
    if isinstance(name, os.PathLike) or os.sep in str(name) or (os.altsep and os.altsep in str(name)):
        return (f"model folder {path} does not exist; pass a folder written by vmm.save_pretrained or a registered "
                "model name (see vmm.list_models())")
    return None


def create_model(name: Union[str, Path], pretrained: Optional[Union[str, Path, bool]] = None,
                 device: Optional[Union[str, torch.device]] = None, precision: Union[str, torch.dtype] = "fp32",
                 **overrides: Any) -> nn.Module:
    """Build a model by registered name or from a ``save_pretrained`` folder, optionally loading weights.

    ``overrides`` replace config fields (nested dicts merge; a bad value is a VmmError naming it).
    ``pretrained`` (open_clip / timm style): None or False for random weights, a checkpoint path (official
    ``.pth`` or ``.safetensors``), a ``save_pretrained`` folder, ``"hf-hub:OpenGVLab/VideoMamba/<file>"``, or
    ``"default"`` (or True) for the file named in the model config (vmm_nano: the checkpoint shipped in
    ``vmm/weights``). ``device`` (``"cpu"``, ``"cuda[:N]"``, ``"auto"`` or a torch.device) moves the model there;
    None leaves it on the CPU. ``precision`` (open_clip style) is the weights' dtype: ``"fp32"`` (the default,
    whatever the weights were saved in), ``"bf16"`` or ``"fp16"`` (the whole model cast, as the official bf16
    evaluation does; inputs of another float dtype are cast to it; torch.float32 / torch.bfloat16 / torch.float16
    say the same), or ``"auto"``: the dtype a model folder (the model or ``pretrained=``) was saved in, fp32
    otherwise. The model comes back in training mode, as PyTorch modules do: call ``.eval()`` before inference.

    >>> import vmm
    >>> m = vmm.create_model("videomamba_tiny", depth=2, num_frames=2, img_size=32, num_classes=0, device="cpu")
    >>> m.cfg.depth, m.cfg.embed_dim, m.training
    (2, 192, True)
    >>> vmm.create_model("videomamba_tiny", depth=2, num_frames=2, img_size=32, precision="bf16").cls_token.dtype
    torch.bfloat16
    """
    _check_name(name)
    name = user_path(name)
    precision_dtype(precision)  # a bad value is refused before the build
    if device is not None:
        device = resolve_device(device, "device= / --device")
    if pretrained is not None and not isinstance(pretrained, (bool, str, os.PathLike)):  # failed inside pathlib
        raise VmmError(f"pretrained must be a checkpoint file or model folder path, 'hf-hub:<repo>/<file>', 'default' "
                       f"or True/False/None, got {reprlib.repr(pretrained)}")
    if isinstance(pretrained, str) and not pretrained.strip():  # else it read as the folder "."
        raise VmmError(f"pretrained={pretrained!r} is empty; pass a checkpoint file or model folder path, "
                       "'hf-hub:<repo>/<file>', 'default', or None for random weights")
    if pretrained is False:
        pretrained = None
    pretrained = user_path(pretrained)
    folder = None  # the model folder whose dtype precision="auto" keeps
    if is_pretrained_dir(name):
        if pretrained is not None:
            raise VmmError(f"model {name} is a model folder with its own weights; drop pretrained= / --checkpoint "
                           f"({pretrained}), or pass a registered model name (e.g. videomamba_m16_25m) with it")
        model, folder = _from_folder(name, overrides), name
    else:
        problem = None if str(name) in registry.list_models() else _not_a_model(name)
        if problem:
            raise VmmError(problem)
        if pretrained is True or pretrained == "default":
            asked, pretrained = pretrained, default_pretrained(str(name))
            if pretrained is None:  # the commands reach this too (--checkpoint default): both spellings
                raise VmmError(f"model {name} names no default pretrained file (pretrained={asked!r} / --checkpoint "
                               "default); pass a weights file or model folder as pretrained=PATH / --checkpoint "
                               "PATH, or leave it out for random weights")
        if pretrained is not None and is_pretrained_dir(pretrained):  # save_pretrained or trainable-only export
            model, folder = _with_folder_weights(str(name), pretrained, overrides), pretrained
            model.pretrained_source = str(pretrained)
        else:
            model = registry.create_model(str(name), **overrides)
            if pretrained is not None:
                _load_pretrained(model, pretrained)
    return model.to(device=device, dtype=precision_dtype(precision, folder))


def create_model_and_transforms(name: Union[str, Path], pretrained: Optional[Union[str, Path, bool]] = None,
                                device: Optional[Union[str, torch.device]] = None,
                                precision: Union[str, torch.dtype] = "fp32", **overrides: Any):
    """:func:`create_model`, returning ``(model, train_transform, eval_transform)``.

    The transforms take uint8 frames (T, H, W, 3) and return (3, T, S, S) floats. The eval transform is the
    model's official one: the whole frame resized to S x S (bicubic) for video-text models, the short side resized to
    S and the centre square (:class:`vmm.classify.K400EvalTransform`) for a classifier.

    >>> import vmm
    >>> model, train_tf, eval_tf = vmm.create_model_and_transforms("videomamba_tiny", depth=2, num_frames=2, img_size=32)
    >>> import numpy as np
    >>> eval_tf(np.zeros((2, 48, 64, 3), np.uint8)).shape
    torch.Size([3, 2, 32, 32])
    """
    model = create_model(name, pretrained, device, precision, **overrides)
    cfg = getattr(model, "cfg", None)
    size = getattr(getattr(cfg, "vision", cfg), "img_size", None)
    if not isinstance(size, int):  # a registered model of the user's own
        raise VmmError(f"model {name} has no cfg.img_size to size its transforms; use vmm.create_model and "
                       "vmm.transforms.EvalTransform(size) / TrainTransform(size)")
    from vmm.classify import K400EvalTransform, is_classifier
    if is_classifier(model):  # tested on the centre square (official K400 validation view), not the squashed frame
        return model, TrainTransform(size), K400EvalTransform(size)
    return model, TrainTransform(size), EvalTransform(size)


def frames_override(name: Union[str, Path], frames: Optional[int]) -> dict:
    """The override that sets the frame count of model ``name`` (top level for encoders, ``vision`` for
    multimodal models); empty when ``frames`` is None.

    >>> frames_override("videomamba_tiny", 16), frames_override("vmm_nano", 16)
    ({'num_frames': 16}, {'vision': {'num_frames': 16}})
    """
    if frames is None:
        return {}
    frames = check_frames(frames)
    return {"vision": {"num_frames": frames}} if _is_multimodal(name) else {"num_frames": frames}


def _is_multimodal(name: Union[str, Path]) -> bool:
    """Whether model ``name`` (registered or a folder) keeps its frame count under ``vision``."""
    name = user_path(name)
    if is_pretrained_dir(name):
        return "vision" in read_config(name)["model"]
    if str(name) not in registry.list_models():
        return False  # a path or a typo: create_model then says what it is, better than "unknown model"
    cfg = get_model_config(str(name))
    arch = cfg["architecture"] if cfg else str(name)
    return arch == "videomamba_m16_mm"


def get_tokenizer(name: Union[str, Path] = "videomamba_m16_25m", max_length: Optional[int] = None) -> Tokenizer:
    """The tokenizer of a model (bert-base-uncased WordPiece + official caption cleaning).

    >>> import vmm
    >>> vmm.get_tokenizer("vmm_nano")(["a red square moves left"], max_length=6)[0].shape
    torch.Size([1, 6])
    """
    _check_name(name, "the tokenizer's model name")
    name = user_path(name)
    if is_pretrained_dir(name):
        cfg = read_config(name)
    else:
        if str(name) not in registry.list_models():  # else a typo got the default tokenizer
            hint = registry.unknown_model_hint(str(name))
            raise VmmError(_not_a_model(name) or f"unknown model {str(name)!r}; {hint}pass a name from "
                           "vmm.list_models() or a model folder")
        cfg = get_model_config(str(name))
    model_cfg = (cfg or {}).get("model", {})
    vocab = model_cfg.get("tokenizer", "bert-base-uncased")
    default_len = model_cfg.get("max_text_len", 32)
    return Tokenizer(vocab, max_length=default_len if max_length is None else max_length)
