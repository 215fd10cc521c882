"""vmm: video-text retrieval with VideoMamba.

The public API is imported lazily (PEP 562), so ``import vmm`` and ``from vmm.errors import VmmError`` do not
pay for importing torch until a model function is used.

>>> import vmm
>>> model = vmm.create_model("videomamba_tiny", depth=2, num_frames=2, img_size=32)
"""
from vmm.errors import CheckpointError, VmmError

__version__ = "0.1.0"

_LAZY = {
    "create_model": "vmm.factory",
    "list_models": "vmm.models.registry",
    "register_model": "vmm.models.registry",
    "get_model_config": "vmm.models.registry",
    "load_checkpoint": "vmm.models.checkpoint",
    "read_checkpoint": "vmm.models.checkpoint",
    "vision_overrides_from_state_dict": "vmm.models.checkpoint",
    "save_pretrained": "vmm.models.persistence",
    "from_pretrained": "vmm.models.persistence",
    "create_model_and_transforms": "vmm.factory",
    "get_tokenizer": "vmm.factory",
}

__all__ = sorted(_LAZY) + ["VmmError", "CheckpointError", "__version__"]


def _submodules() -> set:
    import pkgutil
    return {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}


def __getattr__(name: str):
    import importlib
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _submodules():  # `import vmm; vmm.ops.selective_scan`, as the README writes it, found no `ops`
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module 'vmm' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(__all__) | _submodules())
