"""Loading official and vmm checkpoints into vmm models, strictly.

One place adapts official weights (timm's ``checkpoint_filter_fn`` idea): unwrap ``model``/``module``, pick the
sub-tree a model needs (``vision_encoder.`` of multimodal files), rename ``text_encoder.bert.`` to
``text_encoder.``, drop the documented ignorable keys, cast to the model's dtype, and resample position tables
when frames or resolution differ. Anything else that does not match is an error listing the keys.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import stat
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
import torch.nn as nn
from torch import Tensor

from vmm.errors import CheckpointError

StateDict = Mapping[str, Tensor]

# Keys the official multimodal files carry that an inference model does not have. They are dropped only when
# the target model has no such parameters (a pretraining model that owns them loads them).
IGNORABLE_PREFIXES = ("clip_teacher.", "text_encoder.cls.")
FINETUNE_PREFIXES = ("backbone.", "encoder.")
# What wrappers put before every key: DistributedDataParallel ("module.") and torch.compile ("_orig_mod.", which the
# official fine-tune loader strips), in either nesting order.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def read_checkpoint(path: Union[str, Path]) -> dict[str, Tensor]:
    """Read a ``.pth``/``.pt``/``.bin`` (``torch.load(weights_only=True)``) or ``.safetensors`` file.

    Returns the state dict, unwrapped from ``{'model': ...}``, ``{'module': ...}`` or ``{'state_dict': ...}``, and
    without the ``module.`` (DDP) or ``_orig_mod.`` (torch.compile) prefix when every key carries one.
    Never runs code the file names: objects beside the weights (a training run's config) are read as inert
    placeholders (:func:`load_tensors`) and dropped; weights that are not tensors are refused with a one-line
    :class:`CheckpointError`.

    >>> import tempfile, torch, vmm
    >>> tmp = tempfile.TemporaryDirectory()
    >>> torch.save({"model": {"head.weight": torch.zeros(2, 3)}}, f"{tmp.name}/official.pth")
    >>> {k: tuple(v.shape) for k, v in vmm.read_checkpoint(f"{tmp.name}/official.pth").items()}
    {'head.weight': (2, 3)}
    >>> try:
    ...     vmm.read_checkpoint(f"{tmp.name}/missing.pth")
    ... except vmm.CheckpointError as e:  # a VmmError: the CLI prints it as one error line
    ...     print(str(e).split(";")[0].replace(tmp.name, "TMP"))
    checkpoint TMP/missing.pth does not exist
    >>> tmp.cleanup()
    """
    path = Path(path).expanduser()  # as create_model(pretrained=...) reads it; else a file there "does not exist"
    if path.is_dir():
        from vmm.models.persistence import is_pretrained_dir
        if is_pretrained_dir(path):  # it names its own architecture, which this function does not build
            raise CheckpointError(f"checkpoint {path} is a saved vmm model folder, not a weights file; load it with "
                                  f"vmm.from_pretrained('{path}')")
        raise CheckpointError(f"checkpoint {path} is a folder, not a weights file or a vmm model folder (no "
                              "config.json + model.safetensors); pass a .pth or .safetensors file")
    if check_weights_file(path) == "safetensors":
        from safetensors.torch import load_file
        try:
            sd = load_file(str(path))
        except Exception as e:  # safetensors raises several types for damaged headers
            raise CheckpointError(f"checkpoint {path} is not a valid safetensors file ({type(e).__name__}: {e}); "
                                  f"{_DAMAGED}") from None
        return _strip_wrapper_prefixes(sd)
    try:
        with warnings.catch_warnings():  # its "Detected pickle protocol 4" line comes before our own error
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = load_tensors(path)
    except pickle.UnpicklingError as e:
        # torch's message is a paragraph; its "WeightsUnpickler error:" part names what was refused.
        text = " ".join(str(e).split())
        reason = text.split("WeightsUnpickler error:", 1)[-1].split(". Please use")[0].split(" Check the doc")[0]
        reason = reason.strip()[:160]
        if reason.startswith("Unsupported operand"):  # an opcode the safe unpickler lacks, not an unsafe object
            raise CheckpointError(f"{path} was pickled in a way the safe loader cannot read ({reason}); re-save its "
                                  f"state dict with torch.save(state_dict, path) and the default protocol") from None
        raise CheckpointError(f"{path} contains objects other than tensors and was refused for safety "
                              f"({reason}); save only the state dict, or load it yourself with "
                              f"torch.load(weights_only=False) if you trust its source") from None
    except Exception as e:  # the unpickler raises many types (IndexError, EOFError...) on a cut legacy pickle
        if "maximum supported version" in str(e):  # else called damaged, and downloading it again cannot help
            raise CheckpointError(f"checkpoint {path} was saved by a newer PyTorch than this one "
                                  f"({torch.__version__}); upgrade torch, or re-save the state dict as .safetensors "
                                  "where it was made") from None
        # check_weights_file found a torch.save archive or pickle, so what fails inside it is damage
        raise CheckpointError(f"checkpoint {path} is truncated or damaged ({type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else 'unreadable'}); "
                              f"{_DAMAGED}") from None
    return unwrap_state_dict(obj, source=str(path))


_SPECIAL_FILES = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def not_a_file(path: Path, fix: str) -> str:
    """Why checkpoint ``path``, neither a folder nor a regular file, cannot be read, ending in ``fix`` where the
    path is missing. A named pipe (the shell's ``<(...)``), a device or a link to a file that is gone was called a
    file that "does not exist", which sent users to check a path that was there.

    >>> not_a_file(Path("/dev/null"), "pass a .pth file")
    'checkpoint /dev/null is a character device, not a regular file; save the weights to a file and pass its path'
    """
    try:
        mode = path.stat().st_mode
    except OSError:
        if path.is_symlink():
            return f"checkpoint {path} is a link to {os.readlink(path)}, which does not exist; {fix}"
        return f"checkpoint {path} does not exist; {fix}"
    kind = next((f"{name}, not" for is_kind, name in _SPECIAL_FILES if is_kind(mode)), "not")
    return f"checkpoint {path} is {kind} a regular file; save the weights to a file and pass its path"


_DAMAGED = "download or save it again"
_SAFETENSORS_HEADER_MAX = 100_000_000  # safetensors' own limit on its JSON header
_LFS_POINTER = b"version https://git-lfs"  # how the text file git-lfs leaves in place of a large file opens


def check_weights_file(path: Union[str, Path]) -> str:
    """The kind of weights file ``path`` is, from its bytes rather than its name: ``"safetensors"``, ``"zip"``
    (``torch.save``) or ``"pickle"`` (``torch.save`` before PyTorch 1.6). A file that is missing,
    unreadable, empty, cut short or of another kind is a one-line :class:`CheckpointError` with the fix, before
    torch.load or safetensors report it as pickle opcodes, errno or "internal miniz error".

    >>> import tempfile, torch
    >>> path = Path(tempfile.mkdtemp()) / "w.pth"
    >>> torch.save({"w": torch.zeros(2)}, path)
    >>> check_weights_file(path)
    'zip'
    >>> path.write_bytes(path.read_bytes()[:200])
    200
    >>> try:
    ...     check_weights_file(path)
    ... except CheckpointError as e:
    ...     print(str(e).replace(str(path), "W"))
    checkpoint W is truncated or damaged (an incomplete torch.save archive: an interrupted download or copy?); download or save it again
    """
    path = Path(path).expanduser()  # as read_checkpoint and create_model(pretrained=) read "~/w.pth"
    if not path.is_file():
        raise CheckpointError(not_a_file(path, "pass the path of a downloaded .pth or .safetensors file"))
    try:
        f = open(path, "rb")
    except OSError as e:  # else torch and safetensors report it as a missing or damaged file
        raise CheckpointError(f"checkpoint {path} is not readable ({e.strerror}); check its permissions") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(len(_LFS_POINTER))
        # safetensors: an 8-byte little-endian header length, then the JSON header
        header_len = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
        looks_safetensors = 2 <= header_len <= _SAFETENSORS_HEADER_MAX and head[8:9] == b"{"
        header = None
        if looks_safetensors and header_len <= size - 8:
            f.seek(8)
            try:
                header = json.loads(f.read(header_len))
            except ValueError:
                header = None
    if size == 0:  # an interrupted download or copy; "some other kind of file" sent users to check its format
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); {_DAMAGED}")
    if head == _LFS_POINTER:  # a repository cloned without git-lfs: a format or a new download is not the fix
        raise CheckpointError(f"checkpoint {path} is a Git LFS pointer ({size} bytes), not the weights; fetch them "
                              "with 'git lfs pull' in its repository, or download the file itself")
    damaged = f"checkpoint {path} is truncated or damaged; {_DAMAGED}"
    # torch.save's zip archive; or a legacy pickle, which opens with 0x80 (protocol 2+) or with torch's magic number
    # as a long ("L1195...", protocols 0 and 1): torch's unpickler calls anything else "Unsupported operand", as if
    # it held unsafe objects.
    torch_kind = ("zip" if head[:4] == b"PK\x03\x04" else
                  "pickle" if head[:1] == b"\x80" or head[:5] == b"L1195" else None)
    if path.suffix == ".safetensors" or header is not None or (looks_safetensors and header_len > size - 8):
        if not looks_safetensors:
            if torch_kind:
                # torch.load itself picks safetensors by this name, so the bytes alone cannot rescue it
                raise CheckpointError(f"checkpoint {path} is a torch.save file named .safetensors; rename it to "
                                      f"{path.stem}.pth")
            raise CheckpointError(f"checkpoint {path} is not a safetensors file (or it is damaged); pass a "
                                  ".safetensors or .pth weights file")
        if header_len > size - 8 or not isinstance(header, dict):
            raise CheckpointError(damaged)
        offsets = [v.get("data_offsets") if isinstance(v, dict) else None
                   for k, v in header.items() if k != "__metadata__"]
        # Valid JSON can still be no safetensors header (offsets as strings or a dict): damage, not a traceback.
        if not all(isinstance(o, list) and len(o) == 2 and all(type(i) is int for i in o) for o in offsets):
            raise CheckpointError(damaged)
        if 8 + header_len + max((o[1] for o in offsets), default=0) > size:
            raise CheckpointError(damaged)
        return "safetensors"
    if torch_kind == "zip":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):  # torch's "internal miniz error" called it no checkpoint
            raise CheckpointError(f"checkpoint {path} is truncated or damaged (an incomplete torch.save archive: an "
                                  f"interrupted download or copy?); {_DAMAGED}") from None
        # torch.save writes <name>/data.pkl; any other zip (a .npz, a zipped release) failed inside torch.load
        # and was called damaged, which a new download cannot fix.
        if not any(n.count("/") == 1 and n.endswith("/data.pkl") for n in names):
            raise CheckpointError(_other_kind(path, "a zip archive, but not torch.save's: it has no data.pkl"))
        return "zip"
    if torch_kind == "pickle":
        return "pickle"
    raise CheckpointError(_other_kind(path, "neither a torch.save archive, a pickle nor a safetensors file"))


def _other_kind(path: Path, why: str) -> str:
    return (f"checkpoint {path} is not a PyTorch or safetensors checkpoint ({why}); pass a .pth, .pt, .bin or "
            ".safetensors weights file")


class _Inert(dict):
    """Stands for whatever a checkpoint names besides tensors and plain data: a training run's config (an EasyDict,
    a dict subclass), its ``argparse.Namespace``, a scheduler, a function. It takes any arguments and state and
    runs none of their code; nothing of it is kept."""

    def __new__(cls, *args, **kwargs):
        return dict.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Inert()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass


class _InertUnpickler(pickle.Unpickler):
    """The unpickler of :func:`load_tensors`: the globals ``torch.load(weights_only=True)`` allows resolve to
    themselves, every other one to :class:`_Inert`, so no code of the file's choosing can run."""

    def find_class(self, module, name):
        from torch._weights_only_unpickler import _get_allowed_globals
        return _get_allowed_globals().get(f"{module}.{name}", _Inert)


def _inert_load(file, **kwargs):
    return _InertUnpickler(file, **kwargs).load()


def load_tensors(path: Union[str, Path], mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``, except that objects besides the tensors are read as inert
    placeholders instead of refusing the whole file.

    A training checkpoint keeps its run's config next to the weights: the official multimodal training saves
    ``{"model", "optimizer", ..., "config", ...}`` and the ImageNet trainer an ``argparse.Namespace`` under
    ``"args"``. The safe loader refuses such a file whole, and the usual advice, ``weights_only=False``, would run
    whatever code the file names. Here only the globals the safe loader allows are real; the rest never run.

    >>> import argparse, tempfile, torch
    >>> path = f"{tempfile.mkdtemp()}/train.pth"
    >>> torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=1e-4)}, path)
    >>> obj = load_tensors(path)
    >>> obj["model"], type(obj["args"]).__name__
    ({'w': tensor([1., 1.])}, '_Inert')
    """
    kwargs = {"map_location": "cpu", "mmap": True} if mmap else {"map_location": "cpu"}
    try:
        return torch.load(str(path), weights_only=True, **kwargs)
    except pickle.UnpicklingError as e:
        refused = e  # an object the safe loader does not build, or an opcode it does not read (pickle protocol 4)
    module = type("inert_pickle", (), {"Unpickler": _InertUnpickler, "load": staticmethod(_inert_load),
                                       "__name__": "inert_pickle"})
    try:
        return torch.load(str(path), weights_only=False, pickle_module=module, **kwargs)
    except Exception:  # not a checkpoint after all, or a PyTorch without the safe loader's list: its reason stands
        raise refused from None


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, Tensor]:
    for key in ("model", "module", "state_dict"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if isinstance(obj, _Inert):
        raise CheckpointError(f"{source} holds a pickled Python object (a whole model?), not a state dict; re-save "
                              "it with torch.save(model.state_dict(), path)")
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source} holds no state dict (expected a dict of tensors, optionally under 'model')")
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{source} is not a state dict: entries {_short(bad)} are not tensors")
    return _strip_wrapper_prefixes(obj)


def _strip_wrapper_prefixes(sd: StateDict) -> dict[str, Tensor]:
    """``sd`` without a DDP / torch.compile prefix that every key carries (only then: a prefix on some keys
    is a name, not a wrapper)."""
    sd = dict(sd)
    while sd:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in sd)), None)
        if prefix is None:
            return sd
        sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _short(keys, n: int = 5) -> str:
    keys = list(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _strip_finetune_prefix(key: str) -> str:
    for prefix in FINETUNE_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _video_encoder_part(sd: StateDict) -> dict[str, Tensor]:
    """The keys a bare video encoder reads: a ``backbone.``/``encoder.`` prefix stripped, as the official
    fine-tune loader does (no key of a video encoder starts with either, so this cannot clash with its own
    names), and of a multimodal file only its ``vision_encoder.`` part."""
    sd = {_strip_finetune_prefix(k): v for k, v in _strip_wrapper_prefixes(sd).items()}
    if any(k.startswith("vision_encoder.") for k in sd):
        sd = {k[len("vision_encoder."):]: v for k, v in sd.items() if k.startswith("vision_encoder.")}
    return sd


def vision_overrides_from_state_dict(sd: StateDict) -> dict[str, Any]:
    """The ``create_model`` settings of a VideoMamba video encoder, read from its weights' shapes.

    Takes a classifier or vision-encoder state dict, official or vmm, or a multimodal one (its
    ``vision_encoder.`` part), so a checkpoint of any size can be built before it is loaded. ``num_classes`` is
    given for a classifier file (0 when it has no head), ``clip_output_dim`` and ``clip_decoder_embed_dim`` for one
    with the distillation decoder, ``num_frames`` for one with a temporal table (an image model has none).

    >>> import vmm
    >>> m = vmm.create_model("videomamba_tiny", depth=3, num_frames=4, img_size=32, num_classes=7)
    >>> o = vision_overrides_from_state_dict(m.state_dict())
    >>> o["depth"], o["num_frames"], o["img_size"], o["num_classes"]
    (3, 4, 32, 7)
    """
    if isinstance(sd, (str, Path)):  # "'str' object has no attribute 'items'"
        raise CheckpointError(f"vision_overrides_from_state_dict takes a state dict, not a path ({sd}); read the "
                              "file first: vmm.vision_overrides_from_state_dict(vmm.read_checkpoint(path))")
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"vision_overrides_from_state_dict takes a state dict (a mapping of names to "
                              f"tensors), got {type(sd).__name__}")
    sd = _video_encoder_part(sd)
    needed = ("cls_token", "pos_embed", "patch_embed.proj.weight", "layers.0.mixer.A_log",
              "layers.0.mixer.in_proj.weight", "layers.0.mixer.conv1d.weight", "layers.0.mixer.dt_proj.weight")
    missing = [k for k in needed if k not in sd]
    if missing:
        raise CheckpointError(f"not a VideoMamba state dict: no {_short(missing)}")
    D = sd["cls_token"].shape[-1]
    proj = sd["patch_embed.proj.weight"]  # (D, C, tubelet, p, p), or (D, C, p, p) from an image model
    tubelet = proj.shape[2] if proj.ndim == 5 else 1
    patch = proj.shape[-1]
    grid = round((sd["pos_embed"].shape[1] - 1) ** 0.5)
    out: dict[str, Any] = dict(
        embed_dim=D, depth=1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layers.")),
        img_size=grid * patch, patch_size=patch, in_chans=proj.shape[1], tubelet_size=tubelet,
        d_state=sd["layers.0.mixer.A_log"].shape[1],
        d_conv=sd["layers.0.mixer.conv1d.weight"].shape[-1],
        expand=sd["layers.0.mixer.in_proj.weight"].shape[0] // (2 * D),
        dt_rank=sd["layers.0.mixer.dt_proj.weight"].shape[1])
    if "temporal_pos_embedding" in sd:  # an ImageNet (image) model has none: the model's default count stays
        out["num_frames"] = sd["temporal_pos_embedding"].shape[1] * tubelet
    if "head.weight" in sd:
        out["num_classes"] = sd["head.weight"].shape[0]
    elif "norm_f.weight" in sd:
        # A classifier without head keys is the official VisionMamba(num_classes=0) (its head is an Identity):
        # left at the default 400 classes, the model would ask for a head the file does not have.
        out["num_classes"] = 0
    if "clip_decoder.0.head.weight" in sd:
        out["clip_output_dim"], out["clip_decoder_embed_dim"] = sd["clip_decoder.0.head.weight"].shape
    return out


def adapt_state_dict(model: nn.Module, sd: StateDict) -> dict[str, Tensor]:
    """Map an official or vmm state dict onto ``model``'s keys (no strictness check here)."""
    from vmm.models.videomamba import VideoMamba, VideoMambaBackbone

    own = model.state_dict()
    sd = {k.replace("text_encoder.bert.", "text_encoder.", 1) if k.startswith("text_encoder.bert.") else k: v
          for k, v in sd.items()}
    # A bare video encoder given a multimodal file takes its vision part.
    if isinstance(model, VideoMambaBackbone):
        sd = _video_encoder_part(sd)
        # The classifier calls its final norm norm_f; pretraining/multimodal encoders call it norm.
        if isinstance(model, VideoMamba) and "norm_f.weight" not in sd and "norm.weight" in sd:
            sd["norm_f.weight"] = sd.pop("norm.weight")
        # An ImageNet file (official image_sm model: 2-D patch kernel) has no temporal table. The official video
        # models start theirs at zeros and load such a file non-strictly, so zeros is the official value (and
        # at one frame the model is then exactly the image classifier).
        proj = sd.get("patch_embed.proj.weight")
        if (proj is not None and proj.ndim == 4 and "temporal_pos_embedding" not in sd
                and "temporal_pos_embedding" in own):
            sd["temporal_pos_embedding"] = torch.zeros_like(own["temporal_pos_embedding"])
    sd = {k: v for k, v in sd.items() if k in own or not k.startswith(IGNORABLE_PREFIXES)}
    # Position tables follow the model's frames and resolution (official interpolation rules). Only a table of
    # the model's width, and a spatial one of CLS + a square grid, is resampled: any other stays as the file has
    # it, so the mismatch is reported with the file's shape (a DeiT-style table with a distillation token made
    # the reshape raise a bare RuntimeError).
    from vmm.models.videomamba import interpolate_pos_embed, interpolate_temporal_embed
    for key, tensor in list(sd.items()):
        if key not in own or own[key].shape == tensor.shape:
            continue
        target = own[key]
        # Resampled in the wider of the two dtypes: a bf16 file's table was rounded back to bf16 after the
        # resampling, off by up to 1e-2 from the table the fp32 model should get.
        tensor = tensor.to(torch.promote_types(tensor.dtype, target.dtype))
        same_width = tensor.ndim == 3 and target.ndim == 3 and tensor.shape[::2] == target.shape[::2]
        if key.endswith("temporal_pos_embedding") and same_width:
            sd[key] = interpolate_temporal_embed(tensor, target.shape[1])
        elif key.endswith("pos_embed") and not key.endswith("clip_pos_embed") and same_width:
            old_grid = int(round((tensor.shape[1] - 1) ** 0.5))
            new_grid = int(round((target.shape[1] - 1) ** 0.5))
            if old_grid ** 2 + 1 == tensor.shape[1] and new_grid ** 2 + 1 == target.shape[1]:
                sd[key] = interpolate_pos_embed(tensor, new_grid)
        elif key.endswith("patch_embed.proj.weight") and tensor.ndim == 4 and target.ndim == 5:
            # ImageNet 2-D patchify inflated "center": the kernel in the middle temporal slice.
            inflated = tensor.new_zeros(target.shape)
            inflated[:, :, target.shape[2] // 2] = tensor
            sd[key] = inflated
    return sd


# The official VideoMamba sizes (embed_dim, depth) -> the classifier entrypoint of that size.
_OFFICIAL_SIZES = {(192, 24): "videomamba_tiny", (384, 24): "videomamba_small", (576, 32): "videomamba_middle"}


# The kinds of VideoMamba state dict, each told by keys only it has (spec 4.5).
_KINDS = {"multimodal": "a video-text model (vision_encoder. + text_encoder.)",
          "classifier": "a video classifier (head, norm_f)", "vision": "a multimodal vision encoder (pool_norm)",
          "pretrain": "a masked-pretraining encoder (clip_decoder, no head or pool_norm)"}
# No model has the masked-pretraining layout: the official code only starts training from it, non-strictly.
_PRETRAIN_FIX = ("it only starts training: pass it as vmm train's model.vision_init, or load it with "
                 "vmm.load_checkpoint(model, path, strict=False), which keeps the model's own head or pool_norm")


def _kind(sd: StateDict) -> Optional[str]:
    if any(k.startswith("text_encoder.") for k in sd):
        return "multimodal"
    part = _video_encoder_part(sd)
    if "head.weight" in part or "norm_f.weight" in part:
        return "classifier"
    if "pool_norm.weight" in part:
        return "vision"
    # The K400 masked-pretraining release (spec 4.2); a file of none of these kinds is no VideoMamba at all.
    return "pretrain" if any(k.startswith("clip_decoder.") for k in part) else None


def _model_of(kind: Optional[str], size_name: Optional[str]) -> Optional[str]:
    """The registered model of an official size for a file of ``kind`` (only VideoMamba-M has a video-text
    model: another size's multimodal file fits its vision encoder)."""
    if size_name is None or kind is None:
        return None
    if kind == "multimodal":
        return "videomamba_m16_25m" if size_name == "videomamba_middle" else f"{size_name}_vision"
    return size_name + ("_vision" if kind in ("vision", "pretrain") else "")


def _fit_hint(model: nn.Module, sd: StateDict) -> Optional[str]:
    """The fix for a file of another width or depth than the model's (a VideoMamba-S file given to the Ti model),
    or of another kind (a K400 classifier given to a multimodal model): what the file is, and the model that
    fits it. None when neither differs or the file cannot be read; the key list alone then tells what differs."""
    cfg = getattr(model, "cfg", None)
    cfg = getattr(cfg, "vision", cfg)
    mine = (getattr(cfg, "embed_dim", None), getattr(cfg, "depth", None))
    try:
        found = vision_overrides_from_state_dict(sd)
    except Exception:  # not a VideoMamba file (or a damaged one)
        return None
    theirs = (found["embed_dim"], found["depth"])
    kind, own_kind = _kind(sd), _kind(model.state_dict())
    name = _model_of(kind, _OFFICIAL_SIZES.get(theirs))
    fits = f"--model {name} or another model" if name else "a --model"
    if None not in mine and theirs != mine:
        return (f"the file is a VideoMamba with embed_dim={theirs[0]} and depth={theirs[1]} and the model has "
                f"embed_dim={mine[0]} and depth={mine[1]}; pass {fits} of the file's size, or build one with "
                "vmm.vision_overrides_from_state_dict")
    if kind is None or own_kind is None or kind == own_kind:
        return _text_fit_hint(_text_layout(model.state_dict()), _text_layout(sd))
    if kind == "pretrain":
        return f"the file is {_KINDS[kind]}; {_PRETRAIN_FIX}"
    return f"the file is {_KINDS[kind]} and the model {_KINDS[own_kind]}; pass {fits} of the file's kind"


_TEXT_LAYER = re.compile(r"text_encoder\.(?:bert\.)?encoder\.layer\.(\d+)\.(crossattention\.)?")


def _text_layout(sd: StateDict) -> Optional[tuple[int, int]]:
    """A state dict's text encoder as (num_hidden_layers, fusion_layer): its layer count, and its first layer with
    cross-attention (the layer count when none has any); None without a text encoder.

    >>> _text_layout({"text_encoder.encoder.layer.0.attention.self.query.weight": 0,
    ...               "text_encoder.bert.encoder.layer.1.crossattention.self.query.weight": 0})
    (2, 1)
    """
    layers, fused = set(), set()
    for key in sd:
        m = _TEXT_LAYER.match(key)
        if m:
            layers.add(int(m.group(1)))
            if m.group(2):
                fused.add(int(m.group(1)))
    if not layers:
        return None
    count = max(layers) + 1
    return count, min(fused, default=count)


def _text_fit_hint(mine: Optional[tuple[int, int]], theirs: Optional[tuple[int, int]]) -> Optional[str]:
    """The fix for a multimodal file whose text encoder has other layers or fusion layers than the model's: a
    file trained with fusion_layer=10 listed its layer-9 crossattention keys and said only "check --model"."""
    if mine is None or theirs is None or mine == theirs:
        return None
    return (f"the file's text encoder has {theirs[0]} layers with cross-attention from layer {theirs[1]} and the "
            f"model's {mine[0]} from layer {mine[1]}; build the model with text=dict(num_hidden_layers={theirs[0]}, "
            f"fusion_layer={theirs[1]})")


_HEAD_KEYS = ("head.weight", "head.bias")


def _head_hint(own: StateDict, sd: StateDict, other_head: list, mismatched: list) -> Optional[str]:
    """The fix for a classifier file whose only misfit is a head of another class count (a K400 file for an SSv2
    model): "check --model" gave no way to start a fine-tune from it."""
    if len(other_head) != len(_HEAD_KEYS) or len(mismatched) != len(_HEAD_KEYS):  # a head, whole, and nothing else
        return None
    theirs, mine = sd["head.weight"].shape[0], own["head.weight"].shape[0]
    return (f"the file's head has {theirs} classes and the model's {mine}; build the model with "
            f"num_classes={theirs}, or start a fine-tune from the file with the model's own head, as the official "
            "fine-tuning does: vmm.load_checkpoint(model, path, strict=False)")


def load_checkpoint(model: nn.Module, checkpoint: Union[str, Path, StateDict], strict: bool = True) -> nn.Module:
    """Load an official or vmm checkpoint into ``model`` and return it.

    Accepts flat classifier files, ``{'model': ...}``-wrapped files, keys all prefixed ``module.`` (DDP) or
    ``_orig_mod.`` (torch.compile), multimodal files (their
    ``vision_encoder.`` part for a bare video encoder), bf16 tensors (cast to the model's dtype), and
    different frame counts or resolutions (linear / bicubic interpolation of the position tables).
    Strict: after the documented ignorable keys (``clip_teacher.*``, ``text_encoder.cls.*``), any missing,
    unexpected or mis-shaped key raises :class:`CheckpointError` naming them. ``strict=False`` lets keys be missing
    or unexpected and, as the official fine-tuning does, keeps the model's own ``head`` where the file's has
    another class count; any other mis-shaped key still raises.

    >>> import torch, vmm
    >>> m = vmm.create_model("videomamba_tiny", depth=2, num_frames=2, img_size=32, num_classes=5)
    >>> _ = vmm.load_checkpoint(m, m.state_dict())
    >>> ssv2 = vmm.create_model("videomamba_tiny", depth=2, num_frames=2, img_size=32, num_classes=7)
    >>> torch.equal(vmm.load_checkpoint(ssv2, m.state_dict(), strict=False).cls_token, m.cls_token)  # head: its own
    True
    """
    if isinstance(checkpoint, (str, Path)):
        checkpoint = Path(checkpoint).expanduser()
    source = str(checkpoint) if isinstance(checkpoint, Path) else "state dict"
    raw = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else unwrap_state_dict(checkpoint)
    sd = adapt_state_dict(model, raw)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    # The distillation decoder serves masked pretraining only, so an inference file may leave it out whole (spec 4.4:
    # 787 keys instead of 791). The model then keeps its own, as the official non-strict load does; a file with
    # part of it still fails on the rest. (Added to the file's tensors instead, they made a file of another model
    # look as if it held some of this one's.)
    if not any("clip_decoder." in k for k in sd):
        missing = [k for k in missing if "clip_decoder." not in k]
    # BERT's position_ids is always arange(positions); transformers >= 4.31 no longer saves it, so BERT weights
    # re-saved by it lacked a key whose value the model already holds.
    missing = [k for k in missing if not k.endswith("embeddings.position_ids")]
    unexpected = [k for k in sd if k not in own]
    other_head = [k for k in _HEAD_KEYS if k in sd and k in own and sd[k].shape != own[k].shape]
    if not strict:  # the official fine-tune loader drops a head of other classes (K400 -> SSv2): the model keeps its own
        sd = {k: v for k, v in sd.items() if k not in other_head}
    mismatched = [f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in sd and sd[k].shape != own[k].shape]
    problems = []
    if mismatched:
        problems.append(f"shape mismatch: {_short(mismatched, 3)}")
    if strict and missing:
        problems.append(f"missing keys: {_short(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys: {_short(unexpected)}")
    if problems:
        name = getattr(model, "model_name", type(model).__name__)
        fix = _fit_hint(model, raw) or _head_hint(own, sd, other_head, mismatched) or (
            "check --model / the model config matches the checkpoint")
        raise CheckpointError(f"{source} does not fit model {name}: " + "; ".join(problems) + f" ({fix})")
    with torch.no_grad():
        for k, v in sd.items():
            if k in own:
                own[k].copy_(v.to(dtype=own[k].dtype))
    # The weights are now this checkpoint's: save_pretrained records it (weights_source), where a model built from
    # the released file and then given a fine-tuned one still claimed the released weights in vmm eval.
    model.pretrained_source = source if isinstance(checkpoint, (str, Path)) else None
    model.weights_from = None if isinstance(checkpoint, (str, Path)) else {"source": "unknown"}
    # A vmm train export's step count described the weights just replaced; kept, it outranked the file above.
    from vmm.training.loop import TRAINED_STEPS
    meta = getattr(model, "model_meta", None)
    if isinstance(meta, dict) and TRAINED_STEPS in meta:
        model.model_meta = {key: value for key, value in meta.items() if key != TRAINED_STEPS}
    return model
