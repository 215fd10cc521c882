"""``save_pretrained`` / ``from_pretrained``: a folder with ``config.json`` and ``model.safetensors``."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn

from vmm.atomic import fsync_folder, write_temp
from vmm.errors import VmmError, error_text

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
WEIGHTS_FROM = "weights_from"  # the config.json entry saying where the weights came from
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_SAFETENSORS_FLOATS = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def precision_dtype(precision: Union[str, torch.dtype], folder: Union[str, Path, None] = None) -> torch.dtype:
    """The weights' dtype that ``precision`` (``create_model`` / ``from_pretrained``'s argument) asks for:
    ``"fp32"``, ``"bf16"`` or ``"fp16"`` (or the torch.dtype itself: ``torch.float32``, ``torch.bfloat16``,
    ``torch.float16``) cast the whole model, as the official bf16 evaluation does; ``"auto"`` keeps the dtype model
    folder ``folder`` was saved in (fp32 without one). VmmError for another value.

    >>> precision_dtype("bf16"), precision_dtype(torch.float16), precision_dtype("auto")
    (torch.bfloat16, torch.float16, torch.float32)
    """
    if isinstance(precision, torch.dtype) and precision in PRECISIONS.values():  # what PyTorch code passes
        return precision
    if precision == "auto":
        return torch.float32 if folder is None else saved_dtype(folder)
    if not isinstance(precision, str) or precision not in PRECISIONS:
        from vmm.models.registry import close_match
        close = close_match(str(precision), PRECISIONS) if isinstance(precision, str) else None
        raise VmmError(f"precision={precision!r:.60} is not a precision; pass 'fp32', 'bf16', 'fp16' (or "
                       "torch.float32, torch.bfloat16, torch.float16) or 'auto' (the dtype a model folder was saved "
                       "in)" + (f"; did you mean {close!r}?" if close else ""))
    return PRECISIONS[precision]


def folder_weights_file(directory: Union[str, Path]) -> Path:
    """The weights file of a model folder: ``model.safetensors``, or the file a trainable-only export names."""
    directory = Path(directory)
    info = _trainable_only_entry(directory)
    return directory / (info.get("weights", "trainable.safetensors") if isinstance(info, dict) else WEIGHTS_NAME)


def _trainable_only_entry(directory: Path):
    """The ``"trainable_only"`` entry of a folder's config.json (None without one, or for a damaged config, which
    the loaders name). The config says which weights file is the folder's: a trainable-only export copied or
    written over a full save left the old ``model.safetensors`` beside it, and that was loaded instead."""
    try:
        return read_config(directory).get("trainable_only")
    except VmmError:
        return None


def saved_dtype(directory: Union[str, Path]) -> torch.dtype:
    """The dtype most of a model folder's floating-point numbers were saved in (float32 when it holds none), read
    from the safetensors header alone."""
    import math
    from collections import Counter

    from safetensors import safe_open
    kinds: Counter = Counter()
    with safe_open(str(folder_weights_file(directory)), "pt") as f:
        for key in f.keys():
            tensor = f.get_slice(key)
            # Numbers, not tensors: a bf16 model that keeps its norms, biases and D in fp32 (as mixed-precision
            # recipes do) holds more fp32 tensors than bf16 ones, and "auto" loaded its 99.8% bf16 weights as fp32.
            kinds[tensor.get_dtype()] += math.prod(tensor.get_shape())
    floats = [(n, kind) for kind, n in kinds.items() if kind in _SAFETENSORS_FLOATS]
    return _SAFETENSORS_FLOATS[max(floats)[1]] if floats else torch.float32


def user_path(path):
    """``path`` (a str or os.PathLike) with a leading ``~`` expanded, as the shell would have done for an unquoted
    one; anything else as it is. Else "~/models/x" read as a folder that does not exist, or as a checkpoint file
    where the folder was given as pretrained=, whose paths were expanded."""
    if isinstance(path, str):
        return os.path.expanduser(path)
    return Path(path).expanduser() if isinstance(path, os.PathLike) else path


def unwrapped(model: nn.Module) -> nn.Module:
    """The model inside torch.compile's and (Distributed)DataParallel's wrappers: saved as it was, the weights
    carried their "_orig_mod." / "module." prefixes and the folder fitted no model."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def model_config_dict(model: nn.Module) -> dict:
    """Everything needed to rebuild ``model``: entrypoint, typed config and registry metadata."""
    arch = getattr(model, "architecture", None)
    if arch is None:
        raise VmmError(f"{type(model).__name__} was not built by vmm.create_model and cannot be saved")
    if not dataclasses.is_dataclass(getattr(model, "cfg", None)):
        raise VmmError(f"model {arch} has no dataclass cfg to write as {CONFIG_NAME}; give it one (model.cfg, the "
                       "entrypoint's keyword arguments), or save its weights with torch.save(model.state_dict(), ...)")
    return {"architecture": arch, "model": dataclasses.asdict(model.cfg),
            "model_name": getattr(model, "model_name", None), "model_meta": getattr(model, "model_meta", {}),
            WEIGHTS_FROM: weights_source(model)}


def weights_source(model: nn.Module) -> dict:
    """Where ``model``'s weights came from, as ``save_pretrained`` records it in config.json (``"weights_from"``):
    ``{"source": "checkpoint", "file": NAME}`` (the checkpoint file they were loaded from), ``{"source": "vmm
    train", "steps": N}``, ``{"source": "random"}`` (built without weights) or ``{"source": "unknown"}`` (a folder
    saved by a vmm that did not record it). A folder's config named only the model (videomamba_m16_25m), so one of
    random weights was compared with the released checkpoint's published numbers.

    >>> import vmm
    >>> weights_source(vmm.create_model("videomamba_tiny", depth=1, num_frames=2, img_size=32))
    {'source': 'random'}
    """
    from vmm.training.loop import TRAINED_STEPS
    meta = getattr(model, "model_meta", None)
    steps = meta.get(TRAINED_STEPS) if isinstance(meta, dict) else None
    if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0:  # vmm train's export: trained weights
        return {"source": "vmm train", "steps": steps}
    recorded = getattr(model, "weights_from", None)
    if recorded is not None:  # loaded from a model folder: what that folder recorded
        return recorded
    source = getattr(model, "pretrained_source", None)
    if source is None:
        return {"source": "random"}
    return {"source": "checkpoint", "file": Path(source).name}  # the name only: no local path in a shared folder


def recorded_source(config: dict) -> dict:
    """The ``"weights_from"`` of a model folder's config; ``{"source": "unknown"}`` where it has none (saved by an
    older vmm) or a hand-edited one."""
    recorded = config.get(WEIGHTS_FROM)
    return recorded if isinstance(recorded, dict) and isinstance(recorded.get("source"), str) else {
        "source": "unknown"}


@contextlib.contextmanager
def _folder_lock(directory: Path):
    """An exclusive lock on ``directory`` while a writer renames its files into place: two saves into one folder at
    once (two runs exporting to the same path) interleaved their renames and left one model's config.json beside
    the other's weights. Unlocked where the platform or file system has no flock (Windows, some network mounts)."""
    try:
        import fcntl
        fd = os.open(directory, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # ENOLCK on a file system without locks: rename unlocked, as before
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def _atomic_write_all(directory: Path, writers: dict) -> None:
    """Write each file (``{name: write(tmp_path)}``) under a temporary name in ``directory`` and rename them into
    place only once all are written: a write that fails (a full disk, a folder made read-only) leaves the folder
    as it was. Written one by one, new weights stood beside the old config and the folder loaded no more."""
    from safetensors import SafetensorError

    temps: dict[str, str] = {}
    replaced = False
    try:
        for name, write in writers.items():
            # vmm.atomic: the umask's mode (or the replaced file's), whatever mode the writer gave, and flushed
            # before any rename, so a power cut leaves each file old or new, never empty.
            temps[name] = write_temp(str(directory / name), write)
        with _folder_lock(directory):
            for name, tmp in temps.items():
                os.replace(tmp, os.path.realpath(directory / name))
                replaced = True
        for folder in {os.path.dirname(tmp) for tmp in temps.values()}:
            fsync_folder(folder)  # else the renames themselves could be lost, new weights beside an old config
    except (OSError, SafetensorError) as e:  # safetensors' own writer says SafetensorError, not OSError
        kept = "some files were replaced, save again" if replaced else "the folder keeps what it had"
        reason = getattr(e, "strerror", None) or str(e).strip().splitlines()[0]
        raise VmmError(f"cannot write {directory / name} ({reason}); {kept}; free space or choose a "
                       "writable folder") from None
    finally:
        for tmp in temps.values():
            try:
                os.unlink(tmp)
            except OSError:  # renamed into place, or the folder is no longer writable
                pass


def save_pretrained(model: nn.Module, directory: Union[str, Path]) -> Path:
    """Write ``config.json`` + ``model.safetensors`` into ``directory`` (each file replaced atomically).

    >>> import tempfile, vmm
    >>> tmp = tempfile.TemporaryDirectory()
    >>> model = vmm.create_model("videomamba_tiny", depth=1, num_frames=2, img_size=32)
    >>> folder = vmm.save_pretrained(model, f"{tmp.name}/tiny")
    >>> sorted(p.name for p in folder.iterdir())
    ['config.json', 'model.safetensors']
    >>> tmp.cleanup()
    """
    from safetensors.torch import save_model
    if not isinstance(directory, (str, os.PathLike)):  # a number or None failed inside pathlib
        raise VmmError(f"save_pretrained: directory must be a folder's path, got {directory!r:.60}; pass a path")
    directory = Path(directory).expanduser()  # as every loader reads "~/..."; else a folder named "~" was made
    model = unwrapped(model)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VmmError(f"cannot create {directory} ({e.strerror}); choose a writable folder") from None
    config_text = json.dumps(model_config_dict(model), indent=2) + "\n"  # fails, if at all, before any write
    _atomic_write_all(directory, {WEIGHTS_NAME: lambda p: save_model(model, p),
                                  CONFIG_NAME: lambda p: Path(p).write_text(config_text)})
    return directory


def is_pretrained_dir(path: Union[str, Path]) -> bool:
    """A ``save_pretrained`` folder, or a trainable-only training export (frozen parts rebuilt on load)."""
    from vmm.training.export import is_trainable_export
    p = Path(path)
    return p.is_dir() and (p / CONFIG_NAME).is_file() and ((p / WEIGHTS_NAME).is_file() or is_trainable_export(p))


def read_config(directory: Union[str, Path]) -> dict:
    """A model folder's ``config.json`` as a dict with a str ``architecture`` and a dict ``model``, or a one-line
    VmmError naming the file (unreadable, not UTF-8 JSON, not such an object): one edited by hand reached the
    callers as a UnicodeDecodeError, a JSONDecodeError or an AttributeError.

    >>> import tempfile, vmm
    >>> tmp = tempfile.TemporaryDirectory()
    >>> folder = vmm.save_pretrained(vmm.create_model("videomamba_tiny", depth=1, num_frames=2, img_size=32), tmp.name)
    >>> read_config(folder)["model"]["depth"]
    1
    >>> _ = (folder / "config.json").write_text("[]")
    >>> read_config(folder)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    vmm.errors.VmmError: .../config.json is not a vmm model config (a JSON object with "architecture" and ...
    >>> tmp.cleanup()
    """
    path = Path(directory) / CONFIG_NAME
    redo = "re-save the model with vmm.save_pretrained"
    try:
        cfg = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise VmmError(f"{path} is not readable ({e.strerror}); check its permissions") from None
    except UnicodeDecodeError as e:
        raise VmmError(f"{path} is not UTF-8 text (byte {e.start}); save it as UTF-8 or {redo}") from None
    except ValueError as e:
        raise VmmError(f"{path} is not valid JSON ({e}); fix it or {redo}") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("architecture"), str) or not isinstance(
            cfg.get("model"), dict):
        raise VmmError(f'{path} is not a vmm model config (a JSON object with "architecture" and "model"); {redo}')
    return cfg


def saved_model_kwargs(saved: dict, overrides: dict) -> dict:
    """The ``create_model`` arguments that rebuild a saved model: its config's ``"model"`` part with ``overrides``
    on top (:func:`vmm.models.registry.merge_overrides`), and no text ``init_from``, as the weights come from the
    file.

    >>> saved_model_kwargs({"text": {"init_from": "bert", "hidden_size": 64}}, {"text": {"fusion_layer": 1}})
    {'text': {'init_from': None, 'hidden_size': 64, 'fusion_layer': 1}}
    """
    from vmm.models.registry import merge_overrides
    kwargs = dict(saved)
    if isinstance(kwargs.get("text"), dict):
        kwargs["text"] = {**kwargs["text"], "init_from": None}
    return merge_overrides(kwargs, overrides)


def from_pretrained(directory: Union[str, Path], device=None, precision: Union[str, torch.dtype] = "fp32",
                    **overrides) -> nn.Module:
    """Rebuild a model saved by :func:`save_pretrained`; weights load bit-exactly (strict).

    ``overrides`` change config fields that do not alter the weights' shapes (``drop_path_rate``, ...);
    ``device`` moves the model as :func:`vmm.create_model`'s does. ``precision`` is the weights' dtype, as
    :func:`vmm.create_model`'s: fp32 unless asked, ``"auto"`` for the dtype the folder was saved in. A registered
    model name is no folder: ``vmm.create_model(name, pretrained=True)`` loads its weights.

    >>> import tempfile, torch, vmm
    >>> tmp = tempfile.TemporaryDirectory()
    >>> model = vmm.create_model("videomamba_tiny", depth=1, num_frames=2, img_size=32)
    >>> again = vmm.from_pretrained(vmm.save_pretrained(model, tmp.name), drop_path_rate=0.1)
    >>> again.cfg.drop_path_rate, all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
    ...                                                               again.state_dict().values()))
    (0.1, True)
    >>> tmp.cleanup()
    """
    from vmm.factory import resolve_device
    if not isinstance(directory, (str, os.PathLike)) or not str(directory).strip():  # None failed inside pathlib,
        # and "" read as the working folder
        raise VmmError(f"from_pretrained: directory must be the path of a folder written by vmm.save_pretrained, "
                       f"got {directory!r:.60}; pass a path, or use vmm.create_model(name) for a registered model")
    # Checked before the build, and the same device= as create_model's (from_pretrained took it as a config field).
    device = None if device is None else resolve_device(device, "device= / --device")
    precision_dtype(precision)  # a bad value is refused before the build
    directory = Path(user_path(directory))
    model = _load_folder(directory, overrides)
    return model.to(device=device, dtype=precision_dtype(precision, directory))


def _not_a_folder(directory: Path) -> str:
    """Why ``directory`` is no model folder; for a registered model name, how that model's weights are loaded."""
    from vmm.factory import default_pretrained
    from vmm.models.registry import close_model_name, list_models
    needs = f"{directory} is not a vmm model folder (needs {CONFIG_NAME} and {WEIGHTS_NAME})"
    if directory.is_file():  # an official .pth, loaded as transformers' from_pretrained would load a file
        return (f"{directory} is a weights file, not a model folder; load it with vmm.create_model(NAME, "
                f"pretrained={str(directory)!r}), where NAME is the registered model it was made for (see "
                "vmm.list_models())")
    name = str(directory)
    if name not in list_models():
        # A mistyped name that is no path either: the model it resembles, as create_model suggests.
        close = None if directory.exists() or os.sep in name else close_model_name(name)
        name = close if close else None
        if name is None:
            return needs
    try:
        weights = default_pretrained(name) is not None
    except VmmError:  # a damaged JSON config: create_model names it
        weights = False
    fix = (f"vmm.create_model({name!r}, pretrained=True) builds it with its weights" if weights else
           f"vmm.create_model({name!r}, pretrained=PATH) builds it with a checkpoint's weights")
    what = "is a registered model name, not a model folder" if name == str(directory) else \
        f"is not a model folder (did you mean the registered model {name!r}?)"
    return f"{directory} {what}; {fix} (from_pretrained takes a folder written by vmm.save_pretrained)"


def _load_folder(directory: Path, overrides: dict) -> nn.Module:
    from safetensors.torch import load_model
    from vmm.models.registry import config_fails, create_model
    from vmm.training.export import is_trainable_export, load_trainable_export
    if _trainable_only_entry(directory) is not None or (is_trainable_export(directory)
                                                        and not (directory / WEIGHTS_NAME).is_file()):
        model = load_trainable_export(directory)
        if overrides:  # the export rebuilds its saved config: build the one asked for and move the weights over
            loaded, model = model, create_model(model.architecture, **saved_model_kwargs(
                dataclasses.asdict(model.cfg), overrides))
            try:
                model.load_state_dict(loaded.state_dict(), strict=True)
            except RuntimeError:
                raise _overrides_misfit(directory, model, overrides) from None
            model.model_name, model.model_meta = loaded.model_name, loaded.model_meta
            model.weights_from = loaded.weights_from
        model.pretrained_source = str(directory)
        return model
    if not is_pretrained_dir(directory):
        raise VmmError(_not_a_folder(directory))
    cfg = read_config(directory)
    arch, saved = cfg["architecture"], cfg["model"]
    try:
        model = create_model(arch, **saved_model_kwargs(saved, overrides))
    except VmmError as e:  # a field edited by hand: name the file it is in
        changed = f" with {', '.join(overrides)}" if overrides else ""
        hint = _newer_config_hint() if not overrides or config_fails(arch, saved) else ""
        raise VmmError(f"{directory / CONFIG_NAME}{changed}: {e}{hint}") from None
    from vmm.models.checkpoint import check_weights_file
    check_weights_file(directory / WEIGHTS_NAME)  # else a copy cut short was weights that "do not fit its config"
    try:
        load_model(model, str(directory / WEIGHTS_NAME), strict=True)  # strict: a key that does not fit raises
    except Exception as e:
        if overrides:
            raise _overrides_misfit(directory, model, overrides) from None
        lacking = _absent_fields(dataclasses.asdict(model.cfg), saved)
        why = f"; {CONFIG_NAME} lacks {', '.join(lacking)}, so the default was used" if lacking else ""
        raise VmmError(f"{directory / WEIGHTS_NAME} does not fit its config ({type(e).__name__}: "
                       f"{error_text(e)}){why}") from None
    model.model_name = cfg.get("model_name") or arch
    model.model_meta = cfg.get("model_meta") or {}
    model.weights_from = recorded_source(cfg)
    model.pretrained_source = str(directory)
    return model


def _newer_config_hint() -> str:
    """Why a folder's own config does not build: a field or value this vmm does not know came from a newer vmm or
    a hand edit. The bare "unknown model option(s) x" left the user to guess which, and what to do about it."""
    import vmm
    return (f" (the folder was saved by a newer vmm than this one, {vmm.__version__}, or the file was edited; "
            f"upgrade vmm, or fix that field of {CONFIG_NAME})")


def file_shapes(path: Union[str, Path]) -> dict:
    """The shape of every tensor in safetensors file ``path``, read from its header alone."""
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def first_mismatch(own: dict, theirs: dict) -> Optional[str]:
    """The first key (in model order) that is missing, unexpected or shaped differently, described; None if
    every key fits.

    >>> first_mismatch({"a": (2,), "b": (3,)}, {"a": (2,), "b": (4,)})
    'b has shape (4,) in the file but (3,) in the model'
    """
    for key, shape in own.items():
        if key not in theirs:
            return f"{key} is missing from the file"
        if tuple(theirs[key]) != tuple(shape):
            return f"{key} has shape {tuple(theirs[key])} in the file but {tuple(shape)} in the model"
    extra = next((k for k in theirs if k not in own), None)
    return None if extra is None else f"the file has {extra}, which the model lacks"


def _overrides_misfit(directory: Path, model: nn.Module, overrides: dict) -> VmmError:
    """The error for ``overrides`` that change the shapes of a folder's weights (``model``: the folder's model
    built with them), naming the first key they broke. torch's own report, cut to one line, ended mid-shape
    ("the shape in current model is torch.Size([1") and said nothing of the fix."""
    weights = folder_weights_file(directory)
    info = _trainable_only_entry(directory)
    frozen = set(info.get("frozen", [])) if isinstance(info, dict) else set()  # not in a trainable-only file
    own = {k: tuple(t.shape) for k, t in model.state_dict().items() if k not in frozen}
    try:
        detail = first_mismatch(own, file_shapes(weights))
    except Exception:  # noqa: BLE001 - the file was read once already; the message does without the detail
        detail = None
    changed = ", ".join(f"{k}={v}" for k, v in overrides.items())
    return VmmError(f"the weights in {weights} do not fit model {directory} with {changed}"
                    + (f" ({detail})" if detail else "") + "; drop those overrides: a model folder keeps the "
                    "shapes it was saved with")


def _absent_fields(built: dict, saved: dict, prefix: str = "") -> list:
    """Config fields (``vision.depth`` for nested ones) that ``saved`` lacks and the build filled with defaults."""
    out = []
    for key, value in built.items():
        if key not in saved:
            out.append(prefix + key)
        elif isinstance(value, dict) and isinstance(saved[key], dict):
            out += _absent_fields(value, saved[key], f"{prefix}{key}.")
    return out


def _check_readable(path: Path) -> None:
    # Else the loaders' errors for a file without read permission read as a damaged or missing file.
    try:
        open(path, "rb").close()
    except OSError as e:
        raise VmmError(f"{path} is not readable ({e.strerror}); check its permissions") from None
