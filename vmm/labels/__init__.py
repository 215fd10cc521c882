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

import csv
import io
import json
import re
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence, Union

from vmm.errors import VmmError, one_line

_PACKAGE = "vmm.labels"  # not __name__: doctest runs this file as a module named __init__
_JSON_FORMAT = 'write a list of names, {"name": index, ...} or {"index": "name", ...}'
_CSV_FORMAT = "write rows index,name (a header row is fine) or one name per row"
# "0,abseiling" / "1 air drumming": a label map saved as .txt, whose numbers would become part of every name
_INDEXED_LINE = re.compile(r"(\d+)\s*[,;:\t ]\s*\S")


def builtin_label_sets() -> list[str]:
    """Names accepted by :func:`load_labels` besides file paths.

    >>> builtin_label_sets()
    ['kinetics400']
    """
    return sorted(p.name[:-4] for p in resources.files(_PACKAGE).iterdir() if p.name.endswith(".txt"))


def _check_names(names: Sequence, source: str, where: Callable[[int], str]) -> list[str]:
    """The names without surrounding spaces; VmmError for a non-string, empty, multi-line or repeated one.

    A repeated name would make ``dict(classify_video(...))`` drop a class; ``where(i)`` says where item ``i``
    is for the reader (a file line or a list index).
    """
    clean: list[str] = []
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise VmmError(f"{source} has {name!r} at {where(i)}, not a name; class names must be strings")
        name = name.strip()
        if not name:
            raise VmmError(f"{source} has an empty name at {where(i)}; every class needs a name, in head order")
        if "\n" in name or "\r" in name:
            raise VmmError(f"{source} has a name with a line break at {where(i)} ({one_line(name)}); "
                           "each class name must fit on one line")
        if name in seen:
            raise VmmError(f"{source} names {name!r} twice ({where(seen[name])} and {where(i)}); "
                           "each class needs its own name")
        seen[name] = i
        clean.append(name)
    if not clean:
        raise VmmError(f"{source} has no names; give one name per class, in head order")
    return clean


def _index(i: int) -> str:
    return f"index {i}"


def _line(i: int) -> str:
    return f"line {i + 1}"


def _numbered(lines: list[str]) -> bool:
    numbers = [m and int(m.group(1)) for m in map(_INDEXED_LINE.match, lines)]
    return len(lines) > 1 and numbers in (list(range(len(lines))), list(range(1, len(lines) + 1)))


def _refuse_numbered(lines: list[str], source: str, what: str, fix: str) -> None:
    """VmmError when each of ``lines`` (but perhaps a header) starts with its class number, which would become
    part of every name."""
    if _numbered(lines) or _numbered(lines[1:]):  # with or without a header line
        raise VmmError(f"label file {source} starts each {what} with its class number ({what} 2: {lines[1]!r}); {fix}")


def _from_text(text: str, source: str) -> list[str]:
    # "\n" only: text is read with universal newlines, and str.splitlines would also split inside a name at
    # U+2028, U+0085 or a form feed, giving more classes than the file's lines (`wc -l`)
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()  # a trailing newline is not a class
    _refuse_numbered(lines, source, "line", "save it as .csv (rows index,name) or keep only the names, one per line "
                     "in index order")
    return _check_names(lines, f"label file {source}", _line)


def _by_index(pairs: list, source: str) -> list:
    """The names of ``(index, name)`` pairs in index order; the indices must be 0..N-1 (or 1..N), each once."""
    pairs = sorted(pairs, key=lambda p: p[0])
    start = 1 if pairs and pairs[0][0] == 1 else 0
    for want, (index, _) in enumerate(pairs, start):
        if index != want:
            # sorted: below the one wanted is a repeat, but for a negative first one
            problem = (f"class index {index}" if index < start else f"class index {index} twice" if index < want
                       else f"no class index {want}")
            raise VmmError(f"label file {source} has {problem}; number the classes 0 to N-1 in head order, each once")
    return [name for _, name in pairs]


def _is_index(text: str) -> bool:
    # A negative number too, for _by_index to refuse: "-1,background" as a CSV's first row passed for a header
    # and the class was dropped without a word.
    number = text.strip().removeprefix("-")
    return number.isascii() and number.isdigit()


def _unquote(name):
    # PySlowFast's kinetics_classnames.json writes many names with extra quotes: "\"passing American football\""
    quoted = isinstance(name, str) and len(name) >= 2 and name[0] == name[-1] == '"'
    return name[1:-1] if quoted else name


def _from_json(text: str, source: str) -> list[str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise VmmError(f"label file {source} is not valid JSON ({e.msg}, line {e.lineno}); {_JSON_FORMAT}") from None
    if isinstance(data, dict):
        if all(type(v) is int for v in data.values()):  # PySlowFast / PyTorchVideo: {"abseiling": 0, ...}
            data = _by_index([(v, k) for k, v in data.items()], source)
        elif all(_is_index(k) for k in data):  # the VideoMamba demo's {"0": "riding a bike", ...}
            data = _by_index([(int(k), v) for k, v in data.items()], source)
    if not isinstance(data, list):
        raise VmmError(f"label file {source} is JSON of another shape; {_JSON_FORMAT}")
    return _check_names([_unquote(n) for n in data], f"label file {source}", _index)


def _from_csv(text: str, source: str) -> list[str]:
    rows = list(csv.reader(io.StringIO(text)))
    while rows and not any(cell.strip() for cell in rows[-1]):
        rows.pop()
    if all(len(row) <= 1 for row in rows):
        names = [row[0] if row else "" for row in rows]
        # "0;cat": Excel saves CSV with semicolons where the comma is the decimal mark; each row became one name
        _refuse_numbered(names, source, "row",
                         "separate the number and the name with a comma (index,name), or keep only the names")
        return _check_names(names, f"label file {source}", _line)
    rows = [row for row in rows if any(cell.strip() for cell in row)]  # the indices say where each name goes
    body = rows[1:] if not _is_index(rows[0][0]) else rows  # a header such as id,name
    bad = [row for row in body if len(row) != 2 or not _is_index(row[0])]
    if bad:
        raise VmmError(f"label file {source} has the row {','.join(bad[0])!r}; {_CSV_FORMAT}")
    names = _by_index([(int(i), name) for i, name in body], source)
    return _check_names(names, f"label file {source}", _index)


_READERS = {".json": _from_json, ".csv": _from_csv}


def load_labels(labels: Union[str, Path, Sequence[str]]) -> list[str]:
    """Class names in head index order, checked (no empty or repeated name): a built-in set
    (``"kinetics400"``), a file or a list of names.

    A file is UTF-8 text with one name per line; a ``.json`` file a list of names or a label map
    (``{"name": index}`` as PySlowFast's ``kinetics_classnames.json``, or ``{"index": "name"}``); a ``.csv``
    file ``index,name`` rows (a header row is fine) or one name per row. Label maps are put in index order.

    >>> from vmm.labels import load_labels
    >>> load_labels("kinetics400")[331]
    'zumba'
    >>> load_labels(["cat", " dog "])
    ['cat', 'dog']
    """
    if not isinstance(labels, (str, Path)):
        return _check_names(list(labels), "the label list", _index)
    text = str(labels)
    if text in builtin_label_sets():
        return _from_text(resources.files(_PACKAGE).joinpath(f"{text}.txt").read_text(encoding="utf-8"), text)
    path = Path(text).expanduser()
    if path.is_file():
        try:
            # utf-8-sig: Notepad and Excel start a file with a byte-order mark, which stuck to the first class name
            content = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            raise VmmError(f"label file {path} is not UTF-8 text; write one class name per line") from None
        return _READERS.get(path.suffix.lower(), _from_text)(content, str(path))
    raise VmmError(f"unknown label set {text!r}: not a built-in set ({', '.join(builtin_label_sets())}) "
                   "and no such file; pass a text file with one class name per line")
