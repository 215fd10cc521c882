"""Every ```python block in README.md and docs/*.md runs as written (each file's blocks in one namespace), and prints
what its comments say it prints.

A ``print(...)`` statement's comment states the printed value when its value part (the text before its first
``: `` or ``;`` outside brackets and quotes, so ``# 42: the tensors of the model`` states ``42``) has one
whitespace-separated word per positional argument of the print (brackets and quotes keep a word together: ``#
(5, 256) (1, 256)``). Each word is compared with ``str()`` of its argument at the statement's first call: as
Python values where both are non-string literals (True/False/None, numbers, tuples, lists, dicts), a float to the
precision the doc writes it, each number its own (``# 0.8`` is any value that rounds to 0.8; a trailing
zero adds none), else as text (``torch.Size([1, 400])``, ``torch.float32``, ``zip``), where ``...`` or a
``<placeholder>`` stands for any text (``# .../red.mp4``, ``# ('<label>', <probability>)``). A print spread over
several lines is compared with its lines' comments joined; a print without a comment of its own, with a comment line
right below it (``print(n, names)`` then ``# 3 ['a', 'b']``). A comment with another number of words is an
explanation (``# 2 clips``, ``# the table vmm eval prints``) and is not compared; one starting with ``e.g.`` or
``like`` opts out explicitly. A print whose output is its whole comment is as stated (``print(f"fps: {fps}")  #
fps: 25.0``). A compared print that never runs fails too: the doc shows output that the example does not produce.
"""
import ast
import io
import json
import re
import subprocess
import sys
import tokenize
from decimal import Decimal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

# Run first in a doc's process: records str() of each argument of each print of the doc's own code (filename
# "<string>") with its line, and writes them as JSON at exit to the file named by the process's first argument.
RECORD_PRINTS = """\
import atexit as __a, builtins as __b, json as __j, pathlib as __p, sys as __s
__doc_prints__, __print__ = [], __b.print
def __record_print__(*args, file=None, **kwargs):
    caller = __s._getframe(1)
    if file is None and caller.f_code.co_filename == "<string>":
        __doc_prints__.append([caller.f_lineno, [str(arg) for arg in args]])
    __print__(*args, file=file, **kwargs)
__b.print = __record_print__
__a.register(lambda path=__s.argv[1]: __p.Path(path).write_text(__j.dumps(__doc_prints__)))
"""
PRELUDE_LINES = RECORD_PRINTS.count("\n")


def _doc_code(doc: Path) -> tuple[str, list[int]]:
    """A doc's ```python blocks joined into one program, and the doc line of each of its lines (index 0 is line 1)."""
    source = doc.read_text()
    parts, lines = [], []
    for block in BLOCK.finditer(source):
        first = source.count("\n", 0, block.start(1)) + 1
        if parts:
            lines += [0, 0]  # the two blank lines between a block's last newline and the next block
        parts.append(block.group(1))
        lines.extend(range(first, first + block.group(1).count("\n")))
    return "\n\n".join(parts), lines


def _top_level(text: str):
    """(index, char, whether the char is outside brackets and quotes) of each char of ``text``, and at the end
    (len(text), "", whether every bracket and quote was closed)."""
    depth, quote = 0, None
    for i, char in enumerate(text):
        outside = depth == 0 and quote is None
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        yield i, char, outside
    yield len(text), "", depth == 0 and quote is None


def _words(text: str) -> list[str] | None:
    """``text`` split at whitespace outside brackets and quotes; None if a bracket or quote is left open."""
    words, start = [], 0
    for i, char, outside in _top_level(text):
        if outside and (char.isspace() or not char):
            words.append(text[start:i])
            start = i + 1
        elif not char:  # the end, inside an open bracket or quote
            return None
    return [word for word in words if word]


def _value_part(comment: str) -> str:
    """The text of a comment before its first ``: `` or ``;`` outside brackets and quotes."""
    for i, char, outside in _top_level(comment):
        if outside and (char == ";" or char == ":" and comment[i + 1:i + 2] in ("", " ")):
            return comment[:i]
    return comment


def _stated_prints(code: str) -> dict[int, tuple[int, list[str], str]]:
    """{first line: (last line, stated words, whole comment)} of each print statement of ``code`` whose comments state
    its output."""
    comments, alone = {}, set()
    for token in tokenize.generate_tokens(io.StringIO(code).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string[1:].strip()
            if token.line.lstrip().startswith("#"):
                alone.add(token.start[0])
    stated = {}
    for node in ast.walk(ast.parse(code)):
        call = node.value if isinstance(node, ast.Expr) else None
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "print"):
            continue
        if any(isinstance(arg, ast.Starred) for arg in call.args) or not call.args:
            continue
        notes = [comments[line] for line in range(node.lineno, node.end_lineno + 1) if line in comments]
        if not notes and node.end_lineno + 1 in alone:  # the output on the line below: print(x)\n# 3 ['a', 'b']
            notes = [comments[node.end_lineno + 1]]
        if not notes or any(re.match(r"(e\.g\.|like)(\s|$)", note) for note in notes):
            continue
        words = _words(" ".join(_value_part(note) for note in notes))
        if words is not None and len(words) == len(call.args):
            stated[node.lineno] = (node.end_lineno, words, " ".join(notes))
    return stated


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text  # not a literal: compared as text


def _same(printed, stated) -> bool:
    if isinstance(stated, bool) or isinstance(printed, bool):
        return printed is stated
    if isinstance(stated, (int, float)) and isinstance(printed, (int, float)):
        # Each number to its own last digit (0.8 is 0.75 to 0.85), and a hair for the float's own rounding: one
        # tolerance for a whole word let "(0.5, 0.123)" pass a printed (0.5, 0.16).
        last_digit = 10.0 ** Decimal(repr(stated)).as_tuple().exponent if isinstance(stated, float) else 0
        return abs(printed - stated) <= 0.5 * last_digit * (1 + 1e-9)
    if isinstance(stated, (tuple, list)) and type(printed) is type(stated):
        return len(printed) == len(stated) and all(_same(p, s) for p, s in zip(printed, stated))
    if isinstance(stated, dict) and isinstance(printed, dict):
        return printed.keys() == stated.keys() and all(_same(printed[k], stated[k]) for k in stated)
    return printed == stated


PLACEHOLDER = re.compile(r"\.\.\.|<[a-z][a-z_ ]*>")  # "..." or "<label>": any text


def _prints_as_stated(printed: str, stated: str) -> bool:
    """Whether ``printed`` (str() of one argument) is what the doc's word ``stated`` says it is."""
    if PLACEHOLDER.search(stated):
        pattern = ".*".join(re.escape(part) for part in PLACEHOLDER.split(stated))
        return re.fullmatch(pattern, printed, re.S) is not None
    printed_value, stated_value = _literal(printed), _literal(stated)
    if isinstance(printed_value, str) or isinstance(stated_value, str):  # print shows a str without its quotes
        return printed == stated
    return _same(printed_value, stated_value)


def _mismatches(doc: Path, code: str, lines: list[int], calls: list) -> list[str]:
    """One line per stated print of ``code`` that printed something else, or nothing."""
    stated = _stated_prints(code)
    first_call = {}
    for line, args in calls:
        line -= PRELUDE_LINES
        start = max((s for s, (end, *_) in stated.items() if s <= line <= end), default=None)
        if start is not None:
            first_call.setdefault(start, args)
    out = []
    for start, (_, words, comment) in sorted(stated.items()):
        args = first_call.get(start)
        if args is None:
            out.append(f"{doc.name}:{lines[start - 1]}: never prints; the doc says {' '.join(words)}")
        # printed as the whole comment: text with its own ": " or ";" (print(f"fps: {fps}")  # fps: 25.0)
        elif " ".join(args) != comment and not all(_prints_as_stated(a, w) for a, w in zip(args, words)):
            out.append(f"{doc.name}:{lines[start - 1]}: prints {' '.join(args)}; the doc says {' '.join(words)}")
    return out


def _run_examples(doc: Path, folder: Path) -> list[str]:
    """Runs a doc's examples in ``folder`` (failing the test if they fail) and returns their stated-value mismatches."""
    code, lines = _doc_code(doc)
    prints = folder.parent / f"{folder.name}.prints.json"  # beside the run's folder: the example owns that one
    result = subprocess.run([sys.executable, "-c", RECORD_PRINTS + code, str(prints)], cwd=folder,
                            capture_output=True, text=True, timeout=600,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, f"{doc.name} example failed:\n{result.stderr[-3000:]}"
    return _mismatches(doc, code, lines, json.loads(prints.read_text()))


@pytest.mark.parametrize("doc", [d for d in DOCS if BLOCK.search(d.read_text())], ids=lambda d: d.name)
def test_python_examples_run(doc, tmp_path):
    mismatches = _run_examples(doc, tmp_path)
    assert mismatches == [], "the docs' comments state other values than the examples print:\n" + "\n".join(mismatches)


def test_stated_values_are_compared(tmp_path):
    """The rule of the module docstring, on a doc whose comments are right and wrong (line numbers are the doc's)."""
    doc = tmp_path / "page.md"
    doc.write_text("""Intro.

```python
import os
x = 41 + 1
print(x)  # 42: the answer
print(x)  # 43: off by one
print(x / 100, (x, x))  # 0.4 (42, 42)
print(x / 100)  # 0.43
print([x], "a b", os.sep)  # [42] 'a b' /
print(os.getcwd())  # .../folder
print(x,
      x + 1)  # 42 42
print(True, None)
# True 0
print(x)  # 42 explained in three words
print(x)  # e.g. 7
print(x)  # like 7
print(x)  # likely
```

Text between blocks.

```python
for i in range(3):
    print(i)  # 0
if x < 0:
    print(x)  # -1
print(x == 42, "torch.Size([1, 2])")  # True torch.Size([1, 2])
print("('doing laundry', 0.004)")  # ('<label>', <probability>)
print((x / 100, x / 1000))  # (0.4, 0.05)
print((x / 100, x / 1000))  # (0.4, 0.042)
print(f"x: {x}; {x / 100}")  # x: 42; 0.42
```
""")
    (tmp_path / "folder").mkdir()
    assert _run_examples(doc, tmp_path / "folder") == [
        "page.md:7: prints 42; the doc says 43",
        "page.md:9: prints 0.42; the doc says 0.43",
        "page.md:10: prints [42] a b /; the doc says [42] 'a b' /",
        "page.md:12: prints 42 43; the doc says 42 42",
        "page.md:14: prints True None; the doc says True 0",
        "page.md:19: prints 42; the doc says likely",
        "page.md:28: never prints; the doc says -1",
        "page.md:31: prints (0.42, 0.042); the doc says (0.4, 0.05)",
    ]

def test_every_export_is_documented():
    """Every name of the `vmm`, `index` and `retrieval` APIs is on a docs page; every function is called in an
    example that the test above runs."""
    import inspect

    import index
    import retrieval
    import vmm
    text = "\n".join(d.read_text() for d in DOCS)
    code = "\n".join(block for d in DOCS for block in BLOCK.findall(d.read_text()))
    unnamed, unrun = [], []
    for module in (vmm, index, retrieval):
        for name in module.__all__:
            if name.startswith("__"):
                continue
            word = re.compile(rf"\b{re.escape(name)}\b")
            if not word.search(text):
                unnamed.append(f"{module.__name__}.{name}")
            elif inspect.isfunction(getattr(module, name)) and not word.search(code):
                unrun.append(f"{module.__name__}.{name}")
    assert unnamed == [] and unrun == [], f"not in the docs: {unnamed}; in no ```python example: {unrun}"


# The indexer's writes: docs/index.md names them and tells users to change a library through build_library and
# remove_paths instead (they take no library lock), so no example calls them.
NOT_FOR_EXAMPLES = {"Catalog.commit", "Catalog.set_setting", "Catalog.prune_tombstones"}


def test_every_public_method_is_documented():
    """Every public method and property of the exported classes, and of the models and encoders the public functions
    build, is named on a docs page; every method is called in an example that test_python_examples_run runs."""
    import inspect

    import index
    import retrieval
    import vmm
    from vmm.embedder import VideoTextEncoder
    from vmm.models.multimodal import VideoTextModel
    from vmm.models.videomamba import VideoMamba
    from vmm.tokenizer import Tokenizer
    text = "\n".join(d.read_text() for d in DOCS)
    code = "\n".join(block for d in DOCS for block in BLOCK.findall(d.read_text()))
    classes = [getattr(m, n) for m in (vmm, index, retrieval) for n in m.__all__ if inspect.isclass(getattr(m, n))]
    unnamed, unrun = [], []
    for cls in {*classes, VideoTextModel, VideoMamba, VideoTextEncoder, Tokenizer}:
        for name, member in vars(cls).items():
            method = isinstance(member, (classmethod, staticmethod)) or inspect.isfunction(member)
            if name.startswith("_") or name == "forward" or not (method or isinstance(member, property)):
                continue  # forward is model(x), which the examples call
            if not re.search(rf"\b{name}\b", text):
                unnamed.append(f"{cls.__name__}.{name}")
            elif method and not re.search(rf"\.{name}\(", code) and f"{cls.__name__}.{name}" not in NOT_FOR_EXAMPLES:
                unrun.append(f"{cls.__name__}.{name}")
    assert unnamed == [] and unrun == [], f"not in the docs: {sorted(unnamed)}; in no ```python example: {sorted(unrun)}"


def test_readme_multimodal_example_scores_deterministically():
    """The README's scoring example is what a user copies to score videos: its model must be in eval mode (it came
    back in training mode, so dropout changed the similarity it prints on every call)."""
    import torch
    namespace = {}
    exec(BLOCK.findall((REPO / "README.md").read_text())[0], namespace)
    model, video, ids, mask = (namespace[name] for name in ("model", "video", "ids", "mask"))
    with torch.no_grad():
        scores = [model.similarity(model.encode_video(video, per_frame=True), model.encode_text(ids, mask))
                  for _ in range(2)]
    assert torch.equal(*scores)
