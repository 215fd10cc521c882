"""The built-in model variants: registered from the modules the registry names as its own."""
import importlib

import pytest

import vmm
from vmm.models import registry


def test_every_builtin_entrypoint_comes_from_a_module_the_registry_imports():
    """register_model treats a function from any other module as a user's: it re-imports the built-ins and
    checks the JSON configs for every one of them. vmm.models.factory, which only registered the variants, was
    renamed vmm.models.variants (vmm.factory is the public factory); the registry must follow such a move."""
    vmm.list_models()
    builtin = {name: fn.__module__ for name, fn in registry._ENTRYPOINTS.items() if fn.__module__.startswith("vmm.")}
    assert {"videomamba_tiny", "videomamba_middle_vision", "videomamba_m16_mm"} <= set(builtin)
    assert set(builtin.values()) == set(registry._BUILTIN_MODULES)
    assert builtin["videomamba_tiny"] == "vmm.models.variants"
    for module in registry._BUILTIN_MODULES:
        importlib.import_module(module)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("vmm.models.factory")
