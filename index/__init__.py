"""vmm video libraries: find videos, cut them into clips, embed them, store and search the vectors.

Public API (imported lazily, so decoder worker processes load only what they use):

* :func:`build_library`, :class:`IngestSummary` (index.ingest); :func:`remove_paths`, :func:`sync_index` (index.library);
  :func:`build_library_distributed` (index.distributed); :class:`ProgressUpdate` (index.progress)
* :func:`open_library`, :class:`LibraryReader`, :class:`ClipFilter`, :class:`Hit` (index.reader)
* :class:`ClipEncoder`, :class:`ColorHistogramEncoder` (index.encoder)
* :class:`VectorStore` (index.store), :class:`Catalog`, :class:`LibraryManifest` (index.catalog)
* :func:`discover`, :func:`probe_video`, :func:`decode_video`, :func:`sample_middle_indices`,
  :func:`plan_windows`, :class:`DecodeOptions` (index.discovery, index.decode)

>>> import index
>>> index.sample_middle_indices(8, 4).tolist()
[0, 2, 4, 6]
"""
from importlib import import_module

_EXPORTS = {
    "build_library": "index.ingest",
    "remove_paths": "index.library",
    "sync_index": "index.library",
    "build_library_distributed": "index.distributed",
    "IngestSummary": "index.ingest",
    "open_library": "index.reader",
    "LibraryReader": "index.reader",
    "ClipFilter": "index.reader",
    "Hit": "index.reader",
    "ClipEncoder": "index.encoder",
    "ColorHistogramEncoder": "index.encoder",
    "VectorStore": "index.store",
    "Catalog": "index.catalog",
    "LibraryManifest": "index.catalog",
    "discover": "index.discovery",
    "probe_video": "index.decode",
    "decode_video": "index.decode",
    "sample_middle_indices": "index.decode",
    "plan_windows": "index.decode",
    "DecodeOptions": "index.decode",
    "ProgressUpdate": "index.progress",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'index' has no attribute {name!r}")


def __dir__():
    # The exports load on first use, so without this a notebook's tab completion offered none of them.
    return sorted(set(globals()) | set(__all__))

