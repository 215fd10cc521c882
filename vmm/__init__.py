"""vmm: video-text retrieval with VideoMamba.

>>> import vmm
>>> model = vmm.create_model("videomamba_tiny", depth=2, num_frames=2, img_size=32)
"""
from vmm.errors import CheckpointError, VmmError
from vmm.models.checkpoint import load_checkpoint, read_checkpoint
from vmm.factory import create_model_and_transforms, get_tokenizer
from vmm.models.persistence import from_pretrained, save_pretrained
from vmm.models.registry import create_model, list_models, register_model

__version__ = "0.1.0"

__all__ = ["create_model", "create_model_and_transforms", "get_tokenizer", "list_models", "register_model",
           "load_checkpoint", "read_checkpoint", "save_pretrained", "from_pretrained",
           "VmmError", "CheckpointError", "__version__"]
