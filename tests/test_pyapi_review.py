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


def _refused_in_one_line(needle, fn, *args, **kwargs):
    with pytest.raises(vmm.VmmError, match=needle) as e:
        fn(*args, **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_a_mistyped_model_option_names_the_option_it_resembles():
    """create_model("videomamba_tiny", num_frame=8) listed the 24 valid options and left the missing "s" to be
    found; a near miss at a multimodal model's top level did not say that the option lives under vision=."""
    _refused_in_one_line(r"^unknown model option\(s\) num_frame; valid options: .*; did you mean 'num_frames'\?$",
                         vmm.create_model, "videomamba_tiny", num_frame=8)
    _refused_in_one_line(r"^unknown vision option\(s\) num_frame; .*; did you mean 'num_frames'\?$",
                         vmm.create_model, "vmm_nano", vision=dict(num_frame=8))
    _refused_in_one_line(r"; did you mean vision=dict\(num_frames=8\)\?$", vmm.create_model, "vmm_nano", num_frame=8)
    _refused_in_one_line(r"; did you mean 'depth' for depht, 'num_frames' for num_frame\?$", vmm.create_model,
                         "videomamba_tiny", num_frame=8, depht=2, zzz=1)
    # nothing close: no guess
    assert "did you mean" not in _refused_in_one_line("zzz", vmm.create_model, "videomamba_tiny", zzz=1)


def test_from_pretrained_explains_a_model_name_none_and_takes_device(tmp_path):
    """from_pretrained("vmm_nano") said "vmm_nano is not a vmm model folder", from_pretrained(None) raised
    pathlib's TypeError, and device="cpu" (which create_model takes) was "unknown model option(s) device"."""
    _refused_in_one_line(r"^vmm_nano is a registered model name, not a model folder; "
                         r"vmm\.create_model\('vmm_nano', pretrained=True\) builds it with its weights",
                         vmm.from_pretrained, "vmm_nano")
    _refused_in_one_line(r"did you mean the registered model 'vmm_nano'\?", vmm.from_pretrained, "vmm_nan")
    _refused_in_one_line(r"vmm\.create_model\('videomamba_tiny', pretrained=PATH\)", vmm.from_pretrained,
                         "videomamba_tiny")
    for bad in (None, 5, ""):
        _refused_in_one_line(r"^from_pretrained: directory must be the path of a folder written by "
                             r"vmm\.save_pretrained, got ", vmm.from_pretrained, bad)
    folder = vmm.save_pretrained(vmm.create_model("videomamba_tiny", depth=1, num_frames=2, img_size=32), tmp_path)
    model = vmm.from_pretrained(folder, device="cpu", drop_path_rate=0.1)
    assert next(model.parameters()).device.type == "cpu" and model.cfg.drop_path_rate == 0.1
    _refused_in_one_line(r"^device= / --device gpu is not a device", vmm.from_pretrained, folder, device="gpu")


def test_a_frame_count_a_multimodal_folder_refuses_suggests_an_argument_it_takes(tmp_path):
    """vision=dict(num_frames=8) for a folder saved at 4 frames said "pass ... (num_frames=4)", which the
    multimodal model then refused as "num_frames is a vision option of this model"."""
    from tests.tiny_model import save_tiny_model
    folder = save_tiny_model(tmp_path / "mm")
    _refused_in_one_line(r"^--frames 8 \(vision=dict\(num_frames=8\)\): the weights in .* were trained for 4 "
                         r"frames; pass --frames 4 \(vision=dict\(num_frames=4\)\), or leave it out$",
                         vmm.create_model, folder, vision=dict(num_frames=8))
    assert vmm.create_model(folder, vision=dict(num_frames=4)).cfg.vision.num_frames == 4  # the suggestion works
    # a classifier folder keeps the top-level argument
    tiny = vmm.save_pretrained(vmm.create_model("videomamba_tiny", depth=1, num_frames=2, img_size=32), tmp_path / "t")
    _refused_in_one_line(r"^--frames 4 \(num_frames=4\): .* pass --frames 2 \(num_frames=2\)", vmm.create_model, tiny,
                         num_frames=4)
