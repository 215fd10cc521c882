"""Search and evaluation on top of vmm models and video libraries.

``from retrieval import VideoLibrary`` is the search API (imported lazily so metric helpers stay light).
"""
_EXPORTS = {"VideoLibrary": "retrieval.library", "SearchHit": "retrieval.library", "Where": "retrieval.library"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")


def __dir__():
    # The exports load on first use, so without this a notebook's tab completion offered none of them.
    return sorted(set(globals()) | set(__all__))
