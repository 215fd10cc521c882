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


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vmm' has no attribute {name!r}")


def __dir__():
    return __all__
