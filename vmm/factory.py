"""The open_clip-style entry points: ``create_model_and_transforms``, ``get_tokenizer``, pretrained resolution."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn

from vmm.errors import VmmError
from vmm.models.checkpoint import load_checkpoint
from vmm.models.persistence import from_pretrained, is_pretrained_dir
from vmm.models.registry import create_model, get_model_config
from vmm.tokenizer import Tokenizer
from vmm.transforms import EvalTransform, TrainTransform

HF_PREFIX = "hf-hub:"
HF_REPO = "OpenGVLab/VideoMamba"


def resolve_pretrained(pretrained: Union[str, Path]) -> Path:
    """A local file or folder, or ``hf-hub:<repo>/<file>`` found in the local Hugging Face cache.

    Downloads only when the hub is reachable and ``HF_HUB_OFFLINE`` is not set; otherwise a one-line error
    names the file, where to get it and the ``--checkpoint PATH`` alternative.
    """
    text = str(pretrained)
    if not text.startswith(HF_PREFIX):
        path = Path(text).expanduser()
        if not path.exists():
            raise VmmError(f"checkpoint {path} does not exist; pass an existing .pth/.safetensors file or model folder")
        return path
    spec = text[len(HF_PREFIX):]
    repo, _, filename = spec.rpartition("/")
    if not repo or not filename:
        raise VmmError(f"bad hub reference {text!r}; use hf-hub:{HF_REPO}/<file.pth>")
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
        raise VmmError(f"{filename} is not in the local Hugging Face cache and could not be downloaded "
                       f"({type(e).__name__}); download it from https://huggingface.co/{repo} and pass "
                       f"--checkpoint /path/to/{filename} (or pretrained='/path/to/{filename}')") from None


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


def _load_pretrained(model: nn.Module, pretrained: Union[str, Path]) -> nn.Module:
    path = resolve_pretrained(pretrained)
    load_checkpoint(model, path)
    model.pretrained_source = str(path)
    return model


def create_model_and_transforms(name: Union[str, Path], pretrained: Optional[Union[str, Path]] = None,
                                device: Optional[Union[str, torch.device]] = None, **overrides: Any):
    """Build a model, optionally load weights, and return ``(model, train_transform, eval_transform)``.

    ``name``: a registered model name (see :func:`vmm.list_models`) or a folder written by
    ``save_pretrained``. ``pretrained``: None, a checkpoint path (official ``.pth`` or ``.safetensors``), a
    ``save_pretrained`` folder, ``"hf-hub:OpenGVLab/VideoMamba/<file>"``, or ``"default"`` for the file named
    in the model config (vmm_nano: the checkpoint shipped in ``vmm/weights``). The transforms take uint8 frames (T, H, W, 3) and return (3, T, S, S) floats.

    >>> import vmm
    >>> model, train_tf, eval_tf = vmm.create_model_and_transforms("videomamba_tiny", depth=2, num_frames=2, img_size=32)
    >>> import numpy as np
    >>> eval_tf(np.zeros((2, 48, 64, 3), np.uint8)).shape
    torch.Size([3, 2, 32, 32])
    """
    if is_pretrained_dir(name):
        model = from_pretrained(name, **overrides)
    else:
        model = create_model(str(name), **overrides)
        if pretrained == "default":
            pretrained = default_pretrained(str(name))
            if pretrained is None:
                raise VmmError(f"model {name} names no default pretrained file; pass pretrained=PATH")
        if pretrained is not None:
            if is_pretrained_dir(pretrained):  # a save_pretrained folder or a trainable-only export
                model.load_state_dict(from_pretrained(pretrained).state_dict())
                model.pretrained_source = str(pretrained)
            else:
                _load_pretrained(model, pretrained)
    if device is not None:
        model = model.to(device)
    size = model.cfg.vision.img_size if hasattr(model.cfg, "vision") else model.cfg.img_size
    return model, TrainTransform(size), EvalTransform(size)


def frames_override(name: Union[str, Path], frames: Optional[int]) -> dict:
    """The override that sets the frame count of model ``name`` (top level for encoders, ``vision`` for
    multimodal models); empty when ``frames`` is None.

    >>> frames_override("videomamba_tiny", 16), frames_override("vmm_nano", 16)
    ({'num_frames': 16}, {'vision': {'num_frames': 16}})
    """
    if not frames:
        return {}
    if is_pretrained_dir(name):
        import json
        multimodal = "vision" in json.loads((Path(name) / "config.json").read_text()).get("model", {})
    else:
        cfg = get_model_config(str(name))
        arch = cfg["architecture"] if cfg else str(name)
        multimodal = arch == "videomamba_m16_mm"
    return {"vision": {"num_frames": frames}} if multimodal else {"num_frames": frames}


def get_tokenizer(name: Union[str, Path] = "videomamba_m16_25m", max_length: Optional[int] = None) -> Tokenizer:
    """The tokenizer of a model (bert-base-uncased WordPiece + official caption cleaning).

    >>> import vmm
    >>> vmm.get_tokenizer("vmm_nano")(["a red square moves left"], max_length=6)[0].shape
    torch.Size([1, 6])
    """
    cfg = None
    if is_pretrained_dir(name):
        import json
        cfg = json.loads((Path(name) / "config.json").read_text())
    elif get_model_config(str(name)) is not None:
        cfg = get_model_config(str(name))
    model_cfg = (cfg or {}).get("model", {})
    vocab = model_cfg.get("tokenizer", "bert-base-uncased")
    default_len = model_cfg.get("max_text_len", 32)
    return Tokenizer(vocab, max_length=max_length or default_len)
