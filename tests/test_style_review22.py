"""Style anchors that are behaviour: importing vmm changes no process-wide state, and the lazy packages show their
exports to tab completion."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Every module of the three packages, then what a library author would see changed in their process.
STATE_PROBE = r'''
import json, logging, os, pkgutil, signal, sys, warnings, importlib
import torch
def state():
    root = logging.getLogger()
    return {"env": dict(os.environ), "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(), "dtype": str(torch.get_default_dtype()),
            "grad": torch.is_grad_enabled(), "deterministic": torch.are_deterministic_algorithms_enabled(),
            "matmul_precision": torch.get_float32_matmul_precision(),
            "tf32": [torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32],
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "root_logger": [root.level, [repr(h) for h in root.handlers]],
            "last_resort": repr(logging.lastResort), "warning_filters": [repr(f) for f in warnings.filters],
            "signals": {s.name: repr(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM)},
            "excepthook": repr(sys.excepthook), "cwd": os.getcwd()}
before = state()
names = []
for package in ("vmm", "index", "retrieval"):
    pkg = importlib.import_module(package)
    names += [m.name for m in pkgutil.walk_packages(pkg.__path__, package + ".")]
for name in names:
    importlib.import_module(name)
after = state()
# Loggers of our own modules may exist (getLogger(__name__)); none may print or stop propagating by itself.
loud = [name for name, lg in logging.root.manager.loggerDict.items()
        if name.split(".")[0] in ("vmm", "index", "retrieval") and isinstance(lg, logging.Logger)
        and (lg.handlers or not lg.propagate or lg.level)]
env_before, env_after = before.pop("env"), after.pop("env")
changed = {k: [before[k], after[k]] for k in before if before[k] != after[k]}
changed.update({"env " + k: "set, removed or changed" for k in {*env_before, *env_after}
                if env_before.get(k) != env_after.get(k)})  # names only: values may be secrets
print(json.dumps({"modules": len(names), "changed": changed, "loud_loggers": loud}))
'''


def test_importing_every_module_changes_no_process_wide_state():
    """A library imported into someone's program must leave its torch threads and dtype, logging, warnings
    filters, signal handlers and environment as they were (open_clip writes TOKENIZERS_PARALLELISM at import)."""
    out = subprocess.run([sys.executable, "-c", STATE_PROBE], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["modules"] > 50  # the walk found the packages' modules, not an empty path
    assert result["changed"] == {} and result["loud_loggers"] == [], result


def test_lazy_exports_are_offered_to_tab_completion():
    """``index.build_`` and ``retrieval.Vid`` completed to nothing in a REPL or notebook: the exports load on first
    use and the packages listed only what was already loaded (vmm itself lists its own)."""
    code = ("import rlcompleter, index, retrieval\n"
            "c = rlcompleter.Completer({'index': index, 'retrieval': retrieval})\n"
            "print(set(index.__all__) <= set(dir(index)), set(retrieval.__all__) <= set(dir(retrieval)))\n"
            "print(c.complete('index.build_library_d', 0), c.complete('retrieval.VideoLib', 0))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["True True", "index.build_library_distributed( retrieval.VideoLibrary("]
