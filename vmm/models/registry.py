"""Model registry: code entrypoints (timm style) plus JSON model configs (open_clip style).

An entrypoint is a small function ``name(**overrides) -> nn.Module`` decorated with :func:`register_model`.
A JSON file ``configs/models/<name>.json`` names an entrypoint under ``"architecture"`` and the overrides
under ``"model"``; other keys (labels, pretrained file names, preprocessing) are metadata kept with it.
"""
from __future__ import annotations

import difflib
import fnmatch
import json
import os
import site
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import torch.nn as nn

from vmm.errors import VmmError

_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}
# The checkout's configs/ (editable installs, CI) and the copy a wheel installs under <prefix>/share: the
# environment's prefix, the folder of `pip install --target DIR` (beside the package) or that of `--user`, where
# vmm_nano was an unknown model.
_CONFIG_DIRS: list[Path] = [Path(__file__).resolve().parents[2] / "configs" / "models",
                            Path(sys.prefix) / "share" / "vmm" / "configs" / "models",
                            Path(__file__).resolve().parents[2] / "share" / "vmm" / "configs" / "models",
                            Path(site.USER_BASE or sys.prefix) / "share" / "vmm" / "configs" / "models"]


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its own name. Another function under a name already taken is refused; the same
    definition run again (a notebook cell re-run after an edit, ``importlib.reload``) replaces the old one.

    The model :func:`create_model` returns carries ``architecture`` and ``model_name``; one with a ``cfg``
    dataclass can also be saved with ``vmm.save_pretrained``.

    >>> import torch.nn as nn, vmm
    >>> @vmm.register_model
    ... def doctest_probe(in_features=192, classes=10):
    ...     return nn.Linear(in_features, classes)
    >>> vmm.create_model("doctest_probe", classes=5).out_features
    5
    """
    name = getattr(fn, "__name__", None)
    if not callable(fn) or not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"register_model takes a function defined with def (its name is the model's name), got "
                         f"{fn!r:.60}")
    if fn.__module__ not in _BUILTIN_MODULES:
        # Else a built-in's name taken first made every later import of the built-ins fail.
        _import_builtin_models()
        path = _config_files().get(name)
        if path is not None:  # create_model would build the config and never call fn
            raise ValueError(f"model {name!r} is the model config {path} already; give the function another name")
    old = _ENTRYPOINTS.get(name)
    # Else a notebook cell that registers a model could not be run twice without restarting the kernel.
    if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
        raise ValueError(f"model {name!r} registered twice; give the function another name")
    _ENTRYPOINTS[name] = fn
    return fn


def add_model_config_dir(path: str | Path) -> None:
    """Make the JSON model configs in ``path`` available to :func:`create_model` (searched first).

    >>> import json, tempfile, vmm
    >>> from vmm.models.registry import add_model_config_dir
    >>> tmp = tempfile.TemporaryDirectory()
    >>> spec = {"architecture": "videomamba_tiny", "model": {"num_frames": 16, "num_classes": 174}}
    >>> _ = open(f"{tmp.name}/my_ssv2_tiny.json", "w").write(json.dumps(spec))
    >>> add_model_config_dir(tmp.name)
    >>> vmm.create_model("my_ssv2_tiny", depth=1).cfg.num_classes
    174
    >>> tmp.cleanup()  # a folder that is gone is skipped
    """
    # "~/configs" was kept unexpanded and a mistyped folder accepted: both left every model in it unknown, with
    # nothing to say why; None failed inside pathlib.
    folder = Path(os.path.expanduser(path)) if isinstance(path, (str, os.PathLike)) else None
    if folder is None or not folder.is_dir():
        shown = folder if folder is not None else f"{path!r:.60}"
        raise VmmError(f"add_model_config_dir: {shown} is not a folder; pass the folder that holds your "
                       "<model name>.json configs")
    _CONFIG_DIRS.insert(0, folder)


def _config_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in reversed(_CONFIG_DIRS):  # earlier dirs win
        if d.is_dir():
            found.update({p.stem: p for p in sorted(d.glob("*.json"))})
    return found


def get_model_config(name: str) -> Optional[dict[str, Any]]:
    """The JSON model config of ``name`` as a dict, or None when ``name`` is a bare entrypoint; a name that is
    neither is a VmmError naming the registered name it resembles, as :func:`create_model` says.

    >>> import vmm
    >>> cfg = vmm.get_model_config("videomamba_t16_k400")
    >>> cfg["architecture"], cfg["model"]["num_classes"], vmm.get_model_config("videomamba_tiny")
    ('videomamba_tiny', 400, None)
    >>> vmm.get_model_config("videomamba_m16_25M_typo")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    vmm.errors.VmmError: unknown model 'videomamba_m16_25M_typo'; did you mean 'videomamba_m16_25m'? available: ...
    """
    path = _config_files().get(name)
    if path is None:
        # None for a typo read as "a bare entrypoint": the caller then built or described the wrong model.
        _import_builtin_models()
        if name not in _ENTRYPOINTS:
            raise VmmError(f"unknown model {name!r}; {unknown_model_hint(name)}available: {', '.join(list_models())}")
        return None
    try:
        cfg = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise VmmError(f"model config {path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except json.JSONDecodeError as e:
        raise VmmError(f"model config {path} is not valid JSON ({e}); fix or delete the file") from None
    if (not isinstance(cfg, dict) or not isinstance(cfg.get("architecture"), str)
            or not isinstance(cfg.get("model", {}), dict) or not isinstance(cfg.get("pretrained", {}), dict)):
        raise VmmError(f'model config {path} must be a JSON object {{"architecture": "<entrypoint>", "model": '
                       '{options}, "pretrained": {...} (optional)}; fix or delete the file')
    if cfg["architecture"] not in _ENTRYPOINTS:
        _import_builtin_models()
    if cfg.get("architecture") not in _ENTRYPOINTS:
        raise VmmError(f"model config {path} names unknown architecture {cfg.get('architecture')!r}; "
                       f"known: {', '.join(sorted(_ENTRYPOINTS))}")
    return cfg


_BUILTIN_MODULES = ("vmm.models.variants", "vmm.models.multimodal")


def _import_builtin_models() -> None:
    # Importing the model modules registers their entrypoints (deferred so `import vmm` stays light).
    import vmm.models.variants  # noqa: F401


def list_models(pattern: str = "*") -> list[str]:
    """Names accepted by :func:`create_model`: entrypoints and JSON configs, sorted; ``pattern`` (shell-style,
    case-insensitive) keeps those it matches.

    >>> import vmm
    >>> "videomamba_tiny" in vmm.list_models()
    True
    >>> vmm.list_models("*K400")
    ['videomamba_m16_k400', 'videomamba_s16_k400', 'videomamba_t16_k400']
    """
    if not isinstance(pattern, str):  # None or a number failed inside fnmatch
        raise VmmError(f"list_models: pattern must be a string such as '*k400*', got {pattern!r:.60}")
    _import_builtin_models()
    names = set(_ENTRYPOINTS) | set(_config_files())
    # fnmatch follows the OS: on Linux '*K400*' matched none of the (lower-case) names.
    return sorted(n for n in names if fnmatch.fnmatchcase(n.lower(), pattern.lower()))


def close_model_name(name: str) -> Optional[str]:
    """The registered name a mistyped ``name`` probably means (other case, spaces around it, a letter off), or None.

    >>> close_model_name(" VideoMamba_Tiny"), close_model_name("videomamba_m16_25"), close_model_name("resnet50")
    ('videomamba_tiny', 'videomamba_m16_25m', None)
    """
    return close_match(name, list_models(), cutoff=0.8)


def close_match(word: str, names: Any, cutoff: float = 0.6) -> Optional[str]:
    """The one of ``names`` that ``word`` probably means (the same in another case, else the closest by difflib
    at ``cutoff``), or None: shared by the "did you mean ...?" hints for model names and config options.

    >>> close_match("num_frame", ["depth", "num_frames"]), close_match("Depth", ["depth"]), close_match("x", ["depth"])
    ('num_frames', 'depth', None)
    """
    names = sorted(names)
    typed = str(word).strip().lower()
    same = [n for n in names if n.lower() == typed]
    close = same or difflib.get_close_matches(typed, names, n=1, cutoff=cutoff)
    return close[0] if close else None


def unknown_model_hint(name: str) -> str:
    """The "did you mean ...? " part of an unknown-model message (see :func:`close_model_name`), or nothing."""
    close = close_model_name(name)
    return f"did you mean {close!r}? " if close else ""


def merge_overrides(base: dict, overrides: dict) -> dict:
    """``base`` (a config's ``"model"`` part) with ``overrides`` on top: dicts merge, and None for a dict section
    keeps it, as None means "this model's own" to an entrypoint (``vision=None`` made vmm_nano a 224px
    VideoMamba-M).

    >>> merge_overrides({"vision": {"depth": 8, "img_size": 64}}, {"vision": {"depth": 2}, "text": None})
    {'vision': {'depth': 2, 'img_size': 64}, 'text': None}
    >>> merge_overrides({"vision": {"depth": 8}}, {"vision": None})
    {'vision': {'depth': 8}}
    """
    out = dict(base)
    for k, v in overrides.items():
        if isinstance(out.get(k), dict) and (v is None or isinstance(v, dict)):
            out[k] = merge_overrides(out[k], v or {})
        else:
            out[k] = v
    return out


def config_fails(architecture: str, options: dict) -> bool:
    """Whether entrypoint ``architecture`` refuses config ``options`` alone (a JSON model config's or a model
    folder's ``"model"``): its checks run on the "meta" device, where nothing is allocated, initialised or read
    (no text weights are loaded). A message then names the file the bad field is in, not the caller's overrides.

    >>> config_fails("videomamba_tiny", {"num_frame": 8}), config_fails("videomamba_tiny", {"depth": 1})
    (True, False)
    """
    import torch

    from vmm.models.persistence import saved_model_kwargs
    try:
        with torch.device("meta"):
            _ENTRYPOINTS[architecture](**saved_model_kwargs(options, {}))
    except VmmError:
        return True
    except Exception:  # noqa: BLE001 - a model of the user's own that cannot be built on "meta": not the config's fault
        return False
    return False


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a model by registered name; keyword overrides replace config fields (nested dicts merge).

    >>> import vmm
    >>> m = vmm.create_model("videomamba_tiny", depth=2, num_frames=2, img_size=32, num_classes=0)
    >>> m.cfg.depth, m.cfg.embed_dim
    (2, 192)
    """
    cfg = get_model_config(name)
    if cfg is not None:
        try:
            model = _ENTRYPOINTS[cfg["architecture"]](**merge_overrides(cfg.get("model", {}), overrides))
        except VmmError as e:
            if not overrides or config_fails(cfg["architecture"], cfg.get("model", {})):  # the file's fault
                raise VmmError(f"model config {_config_files()[name]}: {e} (fix it in that file)") from None
            raise
        model.architecture = cfg["architecture"]
        model.model_name = name
        model.model_meta = {k: v for k, v in cfg.items() if k not in ("architecture", "model")}
        return model
    model = _ENTRYPOINTS[name](**overrides)
    model.architecture = name
    model.model_name = name
    model.model_meta = {}
    return model
