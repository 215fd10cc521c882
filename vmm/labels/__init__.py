"""Class-name lists for classifier heads, one name per line in head index order.

``kinetics400.txt`` is the Kinetics-400 order of the released VideoMamba K400 heads: the order of the
official VideoMamba demo's ``kinetics_class_index.py`` (OpenGVLab's K400 annotation order, index 0 =
"riding a bike", 341 = "abseiling"). It is *not* the alphabetical order of other Kinetics tools
(mmaction2, PyTorchVideo): reading a VideoMamba head with an alphabetical list gives wrong names.

>>> from vmm.labels import load_labels
>>> names = load_labels("kinetics400")
>>> len(names), names[0], names[341]
(400, 'riding a bike', 'abseiling')
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Union

from vmm.errors import VmmError

_PACKAGE = "vmm.labels"  # not __name__: doctest runs this file as a module named __init__


def builtin_label_sets() -> list[str]:
    """Names accepted by :func:`load_labels` besides file paths.

    >>> builtin_label_sets()
    ['kinetics400']
    """
    return sorted(p.name[:-4] for p in resources.files(_PACKAGE).iterdir() if p.name.endswith(".txt"))


def _parse(text: str, source: str) -> list[str]:
    names = [line.strip() for line in text.splitlines()]
    while names and not names[-1]:
        names.pop()  # a trailing newline is not a class
    if not names:
        raise VmmError(f"label file {source} is empty; write one class name per line")
    empty = [i for i, n in enumerate(names) if not n]
    if empty:
        raise VmmError(f"label file {source} has an empty line at class index {empty[0]}; "
                       "write one class name per line, in head order")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise VmmError(f"label file {source} names {name!r} twice (lines {seen[name] + 1} and {i + 1}); "
                           "each class needs its own name")
        seen[name] = i
    return names


def load_labels(name_or_path: Union[str, Path]) -> list[str]:
    """Class names in head index order: a built-in set (``"kinetics400"``) or a text file, one name per line.

    >>> from vmm.labels import load_labels
    >>> load_labels("kinetics400")[331]
    'zumba'
    """
    text = str(name_or_path)
    if text in builtin_label_sets():
        return _parse(resources.files(_PACKAGE).joinpath(f"{text}.txt").read_text(encoding="utf-8"), text)
    path = Path(text).expanduser()
    if path.is_file():
        try:
            # utf-8-sig: Notepad and Excel start a file with a byte-order mark, which stuck to the first class name
            return _parse(path.read_text(encoding="utf-8-sig"), str(path))
        except UnicodeDecodeError:
            raise VmmError(f"label file {path} is not UTF-8 text; write one class name per line") from None
    raise VmmError(f"unknown label set {text!r}: not a built-in set ({', '.join(builtin_label_sets())}) "
                   "and no such file; pass a text file with one class name per line")
