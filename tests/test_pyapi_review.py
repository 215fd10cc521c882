"""The top-level API as a notebook user meets it: submodules reachable from ``import vmm``, a model registered
by a cell that is run again, ``load_weights`` given a state dict."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import vmm
from vmm.factory import load_weights
from vmm.models import registry

REPO = Path(__file__).resolve().parents[1]
CELL = '''
@vmm.register_model
def pyapi_review_probe(in_features=576, classes=400):
    return nn.Linear(in_features, classes)
'''


def test_submodules_are_attributes_of_a_fresh_import():
    """``import vmm; vmm.ops.selective_scan`` (as the README writes it) raised "module 'vmm' has no attribute
    'ops'" until some other call had imported vmm.ops, and dir(vmm) listed no submodule for tab completion."""
    code = ("import sys, vmm\n"
            "print('torch' in sys.modules, {'ops', 'transforms', 'models'} <= set(dir(vmm)))\n"
            "print(vmm.ops.selective_scan.__name__, vmm.transforms.EvalTransform.__name__)\n"
            "print(hasattr(vmm, 'no_such_thing'), hasattr(vmm, '_cuda_graph'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-600:]
    assert out.stdout.splitlines() == ["False True", "selective_scan EvalTransform", "False False"]


def test_a_cell_that_registers_a_model_can_run_again(monkeypatch):
    """Running the cell of the docs' register_model example a second time, after editing it, raised "model
    'pyapi_review_probe' registered twice": the kernel had to be restarted."""
    registry.list_models()  # the built-ins register on first use: into the copy, they would be gone after the test
    monkeypatch.setattr(registry, "_ENTRYPOINTS", dict(registry._ENTRYPOINTS))
    notebook = {"__name__": "__main__", "vmm": vmm, "nn": nn}
    exec(CELL, notebook)
    assert vmm.create_model("pyapi_review_probe").in_features == 576
    exec(CELL.replace("576", "10"), notebook)
    assert vmm.create_model("pyapi_review_probe").in_features == 10
    with pytest.raises(ValueError, match=r"^model 'pyapi_review_probe' registered twice; give the function another "
                                         r"name$"):
        exec(CELL, {"__name__": "another_module", "vmm": vmm, "nn": nn})
    assert vmm.create_model("pyapi_review_probe").in_features == 10


def test_load_weights_takes_a_state_dict_as_load_checkpoint_does():
    """load_weights(model, state_dict) failed inside pathlib: "expected str, bytes or os.PathLike object, not
    OrderedDict"."""
    src = vmm.create_model("videomamba_tiny", depth=1, num_frames=2, img_size=32)
    dst = load_weights(vmm.create_model("videomamba_tiny", depth=1, num_frames=2, img_size=32), src.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
