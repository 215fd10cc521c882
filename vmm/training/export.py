"""The final export: a full ``save_pretrained`` folder, or only the trained tensors (``export.trainable_only``).

A trainable-only folder holds ``config.json`` (the model config, with ``text.init_from`` kept, plus a
``"trainable_only"`` entry) and ``trainable.safetensors``: every trained parameter and every buffer. The
frozen tensors are not stored; :func:`load_trainable_export` rebuilds them from ``text.init_from`` (the
MiniLM/BERT weights the model started from), so only frozen tensors that come from that source are allowed.
The file is named differently from ``model.safetensors`` on purpose: a plain ``from_pretrained`` must not take
a partial folder for a complete one.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import torch.nn as nn

from vmm.errors import VmmError, error_text
from vmm.models.persistence import CONFIG_NAME

TRAINABLE_NAME = "trainable.safetensors"


def _init_source_keys(model: nn.Module) -> set[str]:
    """Model keys whose values the model's ``text.init_from`` provides (what a rebuild restores)."""
    source = getattr(getattr(getattr(model, "cfg", None), "text", None), "init_from", None)
    if not source:
        return set()
    from safetensors import safe_open
    from vmm.models.text import bert_weights_path, text_encoder_key
    with safe_open(str(bert_weights_path(source)), "pt") as f:
        keys = [text_encoder_key(k) for k in f.keys()]
    return {"text_encoder." + k for k in keys if k is not None}


def check_trainable_export(model: nn.Module, frozen: list[str]) -> None:
    """Refuse ``export.trainable_only`` when a frozen tensor could not be rebuilt (checked before training)."""
    restorable = _init_source_keys(model)
    lost = [n for n in frozen if n not in restorable]
    if lost:
        raise VmmError(f"export.trainable_only: frozen {lost[0]} (and {len(lost) - 1} more) does not come from "
                       f"model.text.init_from, so a trainable-only export could not rebuild it; freeze only "
                       f"text-tower weights loaded from init_from or export the full model")


def save_trainable(model: nn.Module, directory: Union[str, Path], frozen: list[str]) -> Path:
    """Write the trained tensors and the config, both renamed into place only once both are written."""
    from safetensors.torch import save_file
    from vmm.models.persistence import _atomic_write_all, model_config_dict
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    frozen_set = set(frozen)
    own = model.state_dict()
    skipped_storage = {own[k].data_ptr() for k in frozen_set if k in own}
    state = {}
    for name, tensor in own.items():
        # Tied weights (the MLM decoder is the word embedding table) are stored once, or not at all if frozen.
        if name in frozen_set or tensor.data_ptr() in skipped_storage:
            continue
        skipped_storage.add(tensor.data_ptr())
        state[name] = tensor.detach().contiguous().cpu()
    cfg = model_config_dict(model)
    cfg["trainable_only"] = {"weights": TRAINABLE_NAME, "frozen": sorted(frozen_set),
                             "rebuilt_from": cfg["model"].get("text", {}).get("init_from")}
    config_text = json.dumps(cfg, indent=2) + "\n"
    _atomic_write_all(directory, {TRAINABLE_NAME: lambda p: save_file(state, p, metadata={"format": "pt"}),
                                  CONFIG_NAME: lambda p: Path(p).write_text(config_text)})
    return directory


def is_trainable_export(directory: Union[str, Path]) -> bool:
    d = Path(directory)
    return d.is_dir() and (d / TRAINABLE_NAME).is_file() and (d / CONFIG_NAME).is_file()


def load_trainable_export(directory: Union[str, Path]) -> nn.Module:
    """Rebuild a model written with ``export.trainable_only``: init_from for frozen parts, the file for the rest.

    ``vmm.from_pretrained`` calls this for a folder where :func:`is_trainable_export` is true and no
    ``model.safetensors`` is present.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from vmm.models.persistence import _check_readable, read_config, recorded_source
    from vmm.models.registry import create_model
    directory = Path(directory)
    cfg = read_config(directory)  # a damaged config.json is one line naming it
    info = cfg.get("trainable_only")
    weights = info.get("weights", TRAINABLE_NAME) if isinstance(info, dict) else None
    frozen = info.get("frozen", []) if isinstance(info, dict) else None
    # A hand-edited entry failed as an AttributeError or TypeError deep in the loader; a weights path that is not
    # a plain name would read a file outside the folder.
    if not (isinstance(weights, str) and weights and Path(weights).name == weights and isinstance(frozen, list)
            and all(isinstance(n, str) for n in frozen)):
        raise VmmError(f"{directory / CONFIG_NAME}: its \"trainable_only\" entry is not a training export's "
                       f"({{\"weights\": a file name in the folder, \"frozen\": [tensor names]}}); re-export the model")
    try:
        model = create_model(cfg["architecture"], **cfg["model"])  # text.init_from loads the frozen tensors
    except VmmError as e:  # a field edited by hand: name the file it is in
        raise VmmError(f"{directory / CONFIG_NAME}: {e}") from None
    path = directory / weights
    if not path.is_file():
        raise VmmError(f"{path} is missing (config.json names it); copy the whole folder again or re-export the model")
    _check_readable(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:  # a copy cut short, or another file under that name
        raise VmmError(f"{path} is not a complete safetensors file ({error_text(e)}); copy it again or re-export "
                       f"the model") from None
    own = model.state_dict()
    frozen = set(frozen)
    unexpected = [k for k in state if k not in own]
    restored = {own[k].data_ptr() for k in list(state) + list(frozen) if k in own}
    missing = [k for k in own if k not in state and own[k].data_ptr() not in restored]
    try:
        if unexpected or missing:
            raise RuntimeError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")
        model.load_state_dict(state, strict=False)  # RuntimeError for a tensor of another shape
    except RuntimeError as e:
        raise VmmError(f"{path} does not fit its config ({error_text(e)}); re-export the model") from None
    model.model_name = cfg.get("model_name") or cfg["architecture"]
    model.model_meta = cfg.get("model_meta") or {}
    model.weights_from = recorded_source(cfg)
    model.pretrained_source = str(directory)
    return model

