"""Every shell command of README.md and docs/*.md that runs vmm code parses with that command's real argument
parser, and the ones that can run offline with the shipped vmm_nano model run as written.

A command is one that starts with ``vmm``, ``python -m vmm.<module>`` or ``accelerate launch ... -m
vmm.<module>`` in a ```bash (or unlabelled) block, with backslash continuations joined, alone on its line or in a
pipeline or list (``printf ... | vmm search LIB --queries -``); lines starting with ``#`` (comments, sample output)
and other tools' lines are not commands.

Only parse-checked, because they need what a test machine lacks:
- ``vmm classify``: the official Kinetics-400 checkpoint file;
- ``vmm eval`` (and its ``accelerate launch`` form): the MSRVTT / DiDeMo test sets, official checkpoints, 8 GPUs;
- ``python -m vmm.train`` / ``accelerate launch -m vmm.train``: training data, GPUs, teacher weights (the tiny
  CPU recipe runs in tests/test_train_loop.py); their ``--config`` files must exist and load with the overrides;
- ``python -m vmm.data.synthetic``: 300 to 2000 videos into /tmp and data/ (tests/test_synthetic.py runs it small);
- ``vmm index``/``vmm search`` with an official model (``--checkpoint``, or a name other than vmm_nano);
- any command under ``accelerate launch`` (several GPUs).
``vmm encode`` runs its documented 224-pixel model too (random weights: about 10 s on an idle 2-core machine), and
``vmm demo`` its documented small run (40 videos, about 15 s), whose output must have every line of README's sample
of ``make demo`` (numbers and paths aside).
"""
from __future__ import annotations

import contextlib
import fnmatch
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import videos

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}  # ```text and ```json hold output and data
MODULES = ("vmm.cli", "vmm.train", "vmm.data.synthetic")


@dataclass(frozen=True)
class DocCommand:
    doc: str  # path relative to the repository
    line: int  # line of the doc where the command starts
    text: str  # the command as written, continuations joined
    module: str  # the vmm module it runs
    argv: tuple  # the module's arguments
    launcher: tuple = ()  # accelerate launch's own options, before -m

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def _logical_lines(block: str, first_line: int):
    """(line number, text) of each logical line: a trailing backslash continues on the next line, as in a shell."""
    pending, start = [], first_line
    for i, line in enumerate(block.splitlines()):
        if not pending:
            start = first_line + i
        if line.rstrip().endswith("\\"):
            pending.append(line.rstrip()[:-1].strip())
            continue
        pending.append(line.strip())
        yield start, " ".join(pending)
        pending = []
    if pending:  # a backslash on the block's last line
        yield start, " ".join(pending)


def _segments(text: str) -> list[str]:
    """The commands of a shell line: a pipeline or list (``printf ... | vmm search LIB --queries -``, ``a && b``)
    split at its unquoted ``|``, ``||``, ``&&``, ``;`` and ``&``, each segment's quotes kept."""
    lexer = shlex.shlex(text, posix=False, punctuation_chars="|&;")
    lexer.whitespace_split = True
    segments, words = [], []
    for word in lexer:  # a comment ends the lexer's words
        if set(word) <= set("|&;"):
            segments.append(" ".join(words))
            words = []
        else:
            words.append(word)
    return [*segments, " ".join(words)]


def _commands(doc: str, line: int, text: str) -> list[DocCommand]:
    """The vmm commands of one logical line; a line is run whole (its pipe feeds the command)."""
    try:
        segments = [shlex.split(segment, comments=True) for segment in _segments(text)]
    except ValueError:  # unbalanced quotes: sample output, unless the line starts like one of ours
        if re.match(r"(vmm|python3? -m vmm\.|accelerate launch)\b", text):
            raise AssertionError(f"{doc}:{line}: {text}\n  the shell cannot split this line") from None
        return []
    return [command for words in segments if (command := _command(doc, line, text, words)) is not None]


def _command(doc: str, line: int, text: str, words: list[str]):
    while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):  # VAR=value before the command
        words = words[1:]
    if words[:1] == ["vmm"]:
        return DocCommand(doc, line, text, "vmm.cli", tuple(words[1:]))
    if words[:1] in (["python"], ["python3"]) and words[1:2] == ["-m"] and words[2:3] and words[2].startswith("vmm."):
        return DocCommand(doc, line, text, words[2], tuple(words[3:]))
    if words[:2] == ["accelerate", "launch"] and "-m" in words:
        at = words.index("-m")
        if words[at + 1:at + 2] and words[at + 1].startswith("vmm."):
            return DocCommand(doc, line, text, words[at + 1], tuple(words[at + 2:]), tuple(words[2:at]))
    return None


def _shell_lines():
    """(doc, line, text) of every logical line of the docs' shell blocks, in reading order."""
    for path in DOCS:
        source = path.read_text(encoding="utf-8")
        for block in FENCE.finditer(source):
            if block.group(1) not in SHELL_BLOCKS:
                continue
            first = source.count("\n", 0, block.start(2)) + 1
            for line, text in _logical_lines(block.group(2), first):
                yield str(path.relative_to(REPO)), line, text


def doc_commands() -> list[DocCommand]:
    return [command for doc, line, text in _shell_lines() for command in _commands(doc, line, text)]


def _writes_file(text: str) -> bool:
    """A line that writes a file the next commands read (``printf '%s\\n' red green > colours.txt``): the run below
    runs it where it stands, so a command that needs the file works only if its page writes it first."""
    try:
        words = shlex.split(text, comments=True)
    except ValueError:
        return False
    return words[:1] in (["printf"], ["echo"]) and len(words) >= 3 and words[-2] == ">" and "|" not in words


COMMANDS = doc_commands()


# -- parsing ---------------------------------------------------------------------------------------------------
class _Parsed(Exception):
    """Raised in place of the synthetic corpus writer: its parser lives inside main(), so main stops there."""


def _parse(parse, argv):
    """(what ``parse(argv)`` returns, None), or (None, argparse's one-line complaint about ``argv``)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return parse(list(argv)), None
    except _Parsed:
        return None, None
    except SystemExit as e:
        return None, (err.getvalue().strip().splitlines()[-1] if e.code else "exits while parsing (status 0)")


def _without_placeholders(argv) -> list[str]:
    """Drop optional ``[key=value ...]`` groups: they stand for nothing or for overrides of the reader's choice."""
    out, optional = [], False
    for word in argv:
        optional = optional or word.startswith("[")
        if not optional:
            out.append(word)
        optional = optional and not word.endswith("]")
    return out


def _repo_files(pattern: str) -> list[Path]:
    """The repository files a documented path names; ``<recipe>`` stands for any name."""
    return sorted(REPO.glob(re.sub(r"<[^>]*>", "*", pattern)))


def _check_vmm(argv) -> str | None:
    import vmm
    from vmm.cli import build_parser
    args, error = _parse(build_parser().parse_args, _without_placeholders(argv))
    if error:
        return error
    if not hasattr(args, "_run"):
        return "no subcommand"
    model = getattr(args, "model", None)
    # A name, not a folder: a renamed model breaks the line as surely as a renamed option.
    if model and "/" not in model and model != "color-histogram" and model not in vmm.list_models():
        return f"--model {model} is not a registered model ({', '.join(vmm.list_models())})"
    return None


def _check_train(argv) -> str | None:
    from vmm.errors import VmmError
    from vmm.train import build_parser
    from vmm.training.config import load_config
    args, error = _parse(build_parser().parse_args, _without_placeholders(argv))
    if error:
        return error
    recipes = _repo_files(args.config)
    if not recipes:
        return f"--config {args.config}: no such file in the repository"
    for recipe in recipes:  # every override names a real field with a value of its type, in every recipe meant
        try:
            load_config(recipe, args.overrides)
        except VmmError as e:
            return f"{recipe.relative_to(REPO)}: {e}"
    return None


def _check_synthetic(argv, monkeypatch) -> str | None:
    from vmm.data.synthetic import corpus

    def parsed(*args, **kwargs):
        raise _Parsed

    monkeypatch.setattr(corpus, "generate_corpus", parsed)
    return _parse(corpus.main, _without_placeholders(argv))[1]


def _check_launcher(options) -> str | None:
    from accelerate.commands.launch import launch_command_parser
    error = _parse(launch_command_parser().parse_args, [*options, "-m", "vmm.cli"])[1]
    if error:
        return f"accelerate launch: {error}"
    for option, value in zip(options, options[1:]):
        if option == "--config_file" and not _repo_files(value):
            return f"--config_file {value}: no such file in the repository"
    return None


def test_the_docs_have_commands_of_every_kind():
    by_module = {m: [c for c in COMMANDS if c.module == m] for m in MODULES}
    assert all(by_module.values()), {m: len(c) for m, c in by_module.items()}
    assert len(COMMANDS) >= 35, "\n".join(map(str, COMMANDS))
    # A continued line is one command; a commented output line is none.
    eval_line = next(c for c in COMMANDS if c.doc == "README.md" and c.argv[:1] == ("eval",))
    assert eval_line.argv[-2:] == ("--json", "report.json")
    assert not [c for c in COMMANDS if c.text.startswith("#")]
    assert {c.doc for c in COMMANDS} >= {"README.md", "docs/search.md", "docs/classify.md", "docs/evaluation.md",
                                          "docs/synthetic.md", "docs/training.md"}


def test_commands_in_pipelines_and_lists_are_found():
    # A line that pipes into vmm was skipped as "another tool's" and its vmm command never checked.
    line = "printf '%s\\n' 'a | b' x | vmm search ~/lib --queries - && vmm index v --library 'l;1'  # then | vmm demo"
    assert [c.argv for c in _commands("x.md", 1, line)] == [("search", "~/lib", "--queries", "-"),
                                                             ("index", "v", "--library", "l;1")]


def test_lines_that_write_a_file_are_found():
    # README's `vmm classify ... --labels colours.txt` failed as written: the file was written on another page only.
    assert _writes_file("printf '%s\\n' red 'dark green' > colours.txt   # the labels, one a line")
    assert not _writes_file("printf '%s\\n' a b | vmm search ~/lib --queries -")
    assert not _writes_file("vmm search ~/lib 'a > b' > hits.txt")


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"{c.doc}:{c.line}")
def test_documented_command_parses(command, monkeypatch):
    assert command.module in MODULES, f"{command}\n  no parser known for {command.module}: add it to this test"
    error = _check_launcher(command.launcher) if command.launcher else None
    if error is None:
        if command.module == "vmm.cli":
            error = _check_vmm(command.argv)
        elif command.module == "vmm.train":
            error = _check_train(command.argv)
        else:
            error = _check_synthetic(command.argv, monkeypatch)
    assert error is None, f"{command}\n  {error}"


# -- running ---------------------------------------------------------------------------------------------------
# The videos under ~/videos, in seconds: one long enough for `--min-duration 60` under holidays/, a short one beside
# it that the filter must drop, and ~/videos/old for `--remove`.
VIDEOS = {"red.mp4": 2, "square.mp4": 2, "holidays/long.mp4": 61, "holidays/beach.mp4": 2, "old/green.mp4": 2}
QUERY_SOURCE = "square.mp4"  # query.mp4 is a copy: a search by it must rank this video first
# clips/ for `vmm classify clips/`: squares of the docs' label colours, which vmm_nano must name zero-shot
CLIP_COLOURS = {"red": videos.RED, "green": videos.GREEN, "blue": videos.BLUE}
ROW = re.compile(r"^\s*(\d+)\s+(-?\d+\.\d+)\s+(.+?)\s+\d+:\d\d\.\d\d-\d+:\d\d\.\d\d\s*$", re.M)
JSON_FIELDS = {"rank", "score", "path", "start", "end", "clip_ids", "itm", "exists"}  # as docs/search.md lists them


def _index_json_fields() -> set[str]:
    """The keys of `vmm index --json` as docs/search.md lists them: the `names` between its "`--json` (the run's
    summary" and the keys of `--remove`'s object."""
    text = (REPO / "docs" / "search.md").read_text(encoding="utf-8")
    start = text.index("`--json` (the run's summary")
    return set(re.findall(r"`(\w+)`", text[start:text.index("with `--remove`", start)]))


def _make_videos(home: Path, work: Path) -> None:
    for name, seconds in VIDEOS.items():
        path = home / "videos" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if seconds > 10:  # 1 fps at 32x24 keeps a minute of video cheap to write and to index
            videos.write_long(str(path), seconds, fps=1)
        elif "square" in name:
            videos.write_moving_square(str(path), seconds)
        else:
            videos.write_solid(str(path), videos.GREEN if "green" in name else videos.RED, seconds)
    shutil.copy(home / "videos" / QUERY_SOURCE, work / "query.mp4")
    videos.write_moving_square(str(work / "clip.mp4"), seconds=1.0)
    (work / "clips").mkdir()
    for name, colour in CLIP_COLOURS.items():
        videos.write_moving_square(str(work / "clips" / f"{name}.mp4"), seconds=1.0, color=colour)


def _runs_offline(args) -> bool:
    if args.command == "demo":  # the shipped vmm_nano; the full 300-video run is `make demo`'s, not a test's
        return args.model is None and args.videos <= 50
    if args.command == "encode":  # without --checkpoint any model runs with random weights
        return args.checkpoint is None
    if args.command in ("index", "search", "classify"):  # the shipped model, or the one the library records
        return args.checkpoint is None and args.model in (None, "vmm_nano")
    return False


def _expand(path: str, home: Path) -> Path:
    """``path`` as the shell of the test sees it: ``~`` is the test's home, a relative path is absolute."""
    return Path(str(home) + path[1:] if path.startswith("~") else path).absolute()


def _videos_under(home: Path, paths) -> list[str]:
    roots = [_expand(p, home) for p in paths]
    return [name for name in VIDEOS if any(r == home / "videos" / name or r in (home / "videos" / name).parents
                                           for r in roots)]


def _check_output(args, out: str, home: Path, indexed: set, work: Path) -> None:
    if args.command == "classify":
        _check_classify(args, out, work)
    elif args.command == "demo":
        for line in _demo_sample():  # README's sample of `make demo`: another run's numbers and paths, same lines
            assert re.search(_sample_pattern(line), out, re.M), f"README's sample line is not in the output: {line}"
        library = _expand(args.out, home) / "library"
        assert re.search(rf"^\[2/4\] vmm index .* --library {re.escape(str(library))} ", out, re.M)
        assert re.search(rf"^      indexed {args.videos} files \({args.videos} clips\), 0 unchanged, 0 failed", out, re.M)
        assert out.count("\n        1. ") == args.queries  # one ranked list per example search
        assert re.search(rf"^done in .*: \d+/{args.queries} queries found their video in the top 5 of {args.videos} clips",
                         out, re.M)
    elif args.command == "encode":
        assert re.search(r"-> embedding \(1, \d+\)", out)
    elif args.command == "index" and args.remove:
        assert f"removed {len(_videos_under(home, args.paths))} file(s)" in out
    elif args.command == "index":
        n = len(_videos_under(home, args.paths))
        library = _expand(args.library, home)
        new = 0 if library in indexed else n  # a second run embeds only new or changed files
        if args.json:
            report = json.loads(out)
            documented = _index_json_fields()
            assert set(report) == documented, f"keys the doc and the output do not share: {set(report) ^ documented}"
            assert (report["indexed"], report["unchanged"], report["failed"]) == (new, n - new, 0)
        else:
            assert re.search(rf"^indexed {new} files .*, {n - new} unchanged, 0 failed", out, re.M)
        indexed.add(library)
    elif args.json:
        # --queries prints one {"query", "hits"} object per query, a single query its hits alone
        lists = [q["hits"] for q in json.loads(out)] if getattr(args, "queries", None) else [json.loads(out)]
        for hits in lists:
            assert hits and all(JSON_FIELDS <= set(h) for h in hits)
            if args.rerank:  # the top hits carry their ITM logit, which is their score
                assert hits[0]["itm"] is not None and hits[0]["score"] == hits[0]["itm"]
    else:
        # --queries prints a table per query, each under a "query: TEXT" line
        tables = re.split(r"^query: .*$", out, flags=re.M)[1:] if getattr(args, "queries", None) else [out]
        assert tables
        for table in tables:
            _check_table([m.group(3) for m in ROW.finditer(table)], args, home)


def _demo_sample() -> list[str]:
    """The lines of README's ```text block that shows `make demo`'s output."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    [sample] = [body for kind, body in FENCE.findall(text) if kind == "text" and body.startswith("[2/4] vmm index ")]
    return sample.splitlines()


def _sample_pattern(line: str) -> str:
    """A regex of the output lines a sample line shows: any number for a number, any path for a path (a word from
    ``/``), anything for ``...``, any run of spaces for one."""
    def part(text: str) -> str:
        if text == "...":
            return ".*"
        if text.startswith("/"):
            return r"\S+"
        if text[0].isdigit():
            return r"\d+(?:\.\d+)?"
        return r"\s+" if text[0].isspace() else re.escape(text)
    return "^" + "".join(part(p) for p in re.split(r"(\.\.\.|(?<!\S)/\S*|\d+(?:\.\d+)?|\s+)", line) if p) + "$"


def test_sample_lines_match_other_runs():
    pattern = _sample_pattern("[2/4] vmm index /.../out/videos --library /x/lib  in 9.0 s (33.3 clips/s) ...")
    assert re.match(pattern, "[2/4] vmm index /home/u/demo/videos --library /h/l in 12.25 s (4 clips/s) and more")
    assert not re.match(pattern, "[2/4] vmm index /home/u/demo/videos --library /h/l in 1 s (4 clip/s)")
    assert len(_demo_sample()) >= 3


CLASSIFY_HEADER = re.compile(r"(.+): \d+ clips? x \d+ crops? of \d+ frames at \d+ px, \S+ zero-shot "
                             r"\((\d+) labels x (\d+) templates\), \d+\.\d\d s on cpu")
LABEL_ROW = re.compile(r"\s+(\d+)\s+([01]\.\d{4})\s+(.+)")


def _check_classify(args, out: str, work: Path) -> None:
    """docs/classify.md's text output: per video a header line, then rank, probability and label, best first; a
    square of one of the labels' colours is named by that colour."""
    from vmm.classify import DEFAULT_TEMPLATES
    labels = [line.strip() for line in (work / args.labels).read_text().splitlines() if line.strip()]
    named = []
    for block in out.strip().split("\n\n"):
        header, *rows = block.splitlines()
        video, n_labels, n_templates = CLASSIFY_HEADER.fullmatch(header).groups()
        assert (int(n_labels), int(n_templates)) == (len(labels), len(args.template or DEFAULT_TEMPLATES))
        top = [LABEL_ROW.fullmatch(row).groups() for row in rows]
        assert [int(rank) for rank, _, _ in top] == list(range(1, min(args.top_k, len(labels)) + 1))
        assert [float(p) for _, p, _ in top] == sorted((float(p) for _, p, _ in top), reverse=True)
        assert {label for _, _, label in top} <= set(labels)
        if Path(video).stem in labels:
            assert top[0][2] == Path(video).stem, f"{video}: {top}"
        named.append(Path(video).name)
    given = [sorted(p.name for p in (work / v).iterdir()) if (work / v).is_dir() else [Path(v).name]
             for v in args.videos]
    assert named == [name for names in given for name in names]


def _check_table(paths: list[str], args, home: Path) -> None:
    """The paths of one result table of ``vmm search``, as its options promise them."""
    assert 1 <= len(paths) <= args.k
    if args.per_video:
        assert len(set(paths)) == len(paths)
    if args.video:
        assert paths[0] == str(home / "videos" / QUERY_SOURCE)
    if args.path_glob or args.min_duration:
        wanted = {str(home / "videos" / name) for name, seconds in VIDEOS.items()
                  if any(fnmatch.fnmatch(str(home / "videos" / name), glob) for glob in args.path_glob or ["*"])
                  and seconds >= (args.min_duration or 0)}
        assert wanted and set(paths) == wanted


@pytest.mark.slow
def test_offline_commands_run_as_written(tmp_path):
    from vmm.cli import build_parser
    home, work, bin_dir = tmp_path / "home", tmp_path / "work", tmp_path / "bin"
    for folder in (home, work, bin_dir):
        folder.mkdir()
    _make_videos(home, work)
    # `vmm` on PATH is this interpreter's: the command text stays exactly as the docs have it.
    (bin_dir / "vmm").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m vmm.cli "$@"\n')
    (bin_dir / "vmm").chmod(0o755)
    # One OpenMP thread: on a busy 2-core machine a second one spins, and each command took 5 s instead of 3.
    env = {"HOME": str(home), "PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    indexed, ran = set(), []
    for command in _commands_in_reading_order(work, env):
        args, error = _parse(build_parser().parse_args, command.argv)
        if error:
            continue  # test_documented_command_parses names it; the count of commands run below drops
        if not _runs_offline(args):
            continue
        done = subprocess.run(["bash", "-c", command.text], cwd=work, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, f"{command}\n  exit {done.returncode}: {done.stderr[-2000:]}"
        try:
            _check_output(args, done.stdout, home, indexed, work)
        except AssertionError as e:
            raise AssertionError(f"{command}\n  unexpected output ({e}):\n{done.stdout[-2000:]}") from None
        ran.append(command)
    assert {c.doc for c in ran} == {"README.md", "docs/search.md", "docs/classify.md"} and len(ran) >= 15, \
        "\n".join(map(str, ran))
    assert {c.argv[0] for c in ran} == {"demo", "encode", "index", "search", "classify"}, "\n".join(map(str, ran))


def _commands_in_reading_order(work: Path, env: dict):
    """The docs' vmm commands to run, in reading order, after running (in ``work``) each line before them that
    writes a file they read."""
    for doc, line, text in _shell_lines():
        if _writes_file(text):
            subprocess.run(["bash", "-c", text], cwd=work, env=env, check=True)
        for command in _commands(doc, line, text):
            if command.module == "vmm.cli" and not command.launcher:  # a launcher's processes need their GPUs
                yield command


# -- every option is documented --------------------------------------------------------------------------------
# Where a command's options are described: its own page, plus any paragraph of any page that names the command.
OPTION_PAGES = {"classify": ["docs/classify.md"], "eval": ["docs/evaluation.md"],
                "index": ["docs/search.md", "docs/index.md"], "search": ["docs/search.md"]}


def _undocumented_options(name: str) -> list[str]:
    from vmm.cli import build_parser
    paragraphs = [p for doc in DOCS for p in re.split(r"\n\s*\n", doc.read_text(encoding="utf-8"))]
    texts = [p for p in paragraphs if f"vmm {name}" in p] + [(REPO / f).read_text() for f in OPTION_PAGES.get(name, [])]
    parser = build_parser()._subparsers._group_actions[0].choices[name]
    return [option for action in parser._actions for option in action.option_strings
            if option not in ("-h", "--help")
            and not any(re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", t) for t in texts)]


@pytest.mark.parametrize("name", ["demo", "index", "search", "classify", "encode", "eval"])
def test_every_option_is_documented(name):
    assert _undocumented_options(name) == [], f"vmm {name}: options only --help describes"


def _parsers():
    from vmm.cli import build_parser
    from vmm.data.synthetic.corpus import build_parser as synthetic_parser
    from vmm.train import build_parser as train_parser
    commands = build_parser()._subparsers._group_actions[0].choices
    return {**{f"vmm {name}": parser for name, parser in commands.items()}, "python -m vmm.train": train_parser(),
            "python -m vmm.data.synthetic": synthetic_parser()}


PARSER_NAMES = [*(f"vmm {c}" for c in ("demo", "index", "search", "classify", "encode", "eval")), "python -m vmm.train",
                "python -m vmm.data.synthetic"]


@pytest.mark.parametrize("name", PARSER_NAMES)
def test_every_option_has_help(name):
    # `--help` is where a user looks first: an option listed there without a word is a riddle.
    parsers = _parsers()
    assert sorted(parsers) == sorted(PARSER_NAMES)  # a new command joins the list above
    parser = parsers[name]
    bare = [action.option_strings[0] if action.option_strings else action.dest
            for action in parser._actions if not action.help]
    assert bare == [], f"{name} --help lists options without a description"


# -- what the commands' pages promise ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vmm_nano_framemean", "videomamba_m16_mm"])
def test_a_model_name_means_released_weights_never_random_ones(name, tmp_path, capsys):
    """docs/search.md: `--model NAME` means the model's released weights, never random ones. A video-text model
    registered without any was indexed with random weights, new at every load, so every later search of that
    library failed as "built with model X (weights A) but this model is X (weights B)"."""
    from vmm.cli import main
    from vmm.demo import DemoConfig, run_demo
    from vmm.errors import VmmError
    video, lib = videos.write_solid(str(tmp_path / "red.mp4"), videos.RED, 1.0), tmp_path / "lib"
    assert main(["index", video, "--library", str(lib), "--model", name, "--workers", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: model {name} has no released weights") and err.count("\n") == 1
    assert "--checkpoint PATH" in err and not lib.exists()
    with pytest.raises(VmmError, match=f"^model {name} has no released weights"):
        run_demo(DemoConfig(out_dir=tmp_path / "demo", model=name, num_videos=2, workers=0))
    assert not (tmp_path / "demo").exists()
