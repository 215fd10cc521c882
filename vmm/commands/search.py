"""``vmm search LIB "text"``, ``vmm search LIB --queries FILE`` or ``vmm search LIB --video QUERY.mp4``: ranked
moments of a library."""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys

_LINE_END = re.compile(r"\r\n|\r|\n")  # Windows, old Mac and Unix line ends, as editors read them


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("library", metavar="LIB", help="library folder made by `vmm index`")
    p.add_argument("text", nargs="?", help="text query")
    p.add_argument("--video", metavar="QUERY", help="search by an example video instead of text")
    # Appended, as --path: a second --queries replaced the first, whose queries were silently not searched.
    p.add_argument("--queries", metavar="FILE", action="append",
                   help="search each line of FILE (UTF-8 text, one query a line; - reads stdin) with one model load; "
                        "repeat it for several files")
    p.add_argument("-k", type=int, default=10, help="number of results [10]")
    p.add_argument("--rerank", type=int, default=0, metavar="K",
                   help="re-score the top K clips with the ITM head (official two-stage recipe) [0: none]")
    p.add_argument("--per-video", action="store_true", help="at most one moment per video")
    p.add_argument("--no-merge", action="store_true", help="list overlapping windows separately")
    # Appended: a second --path replaced the first, and the videos it kept were silently left out.
    p.add_argument("--path", dest="path_glob", action="append",
                   help="only videos whose path matches this glob (a relative one is taken from the current folder; "
                        "'*red*' matches anywhere); repeat it for videos matching any of the globs")
    p.add_argument("--min-duration", type=float, help="only videos at least this long (s)")
    p.add_argument("--max-duration", type=float, help="only videos at most this long (s)")
    p.add_argument("--json", action="store_true", help="print a JSON list of hits")
    p.add_argument("--model", help="override the library's model (must be the same weights)")
    p.add_argument("--checkpoint", help="override the library's checkpoint (must be the same weights)")
    p.add_argument("--device", default=None, help="cpu or cuda[:N] for the model [cuda when available]")


def _fmt_time(t: float) -> str:
    # Rounded before splitting: the end of a 59.997 s video printed as "0:60.00".
    m, cs = divmod(round(t * 100), 6000)
    return f"{m}:{cs // 100:02d}.{cs % 100:02d}"


def _check_options(args: argparse.Namespace) -> None:
    """Refuse options that would otherwise fail deep in the search or quietly return nothing."""
    import shlex

    from vmm.commands import refuse_blank
    from vmm.errors import VmmError
    from vmm.factory import resolve_device
    args.texts = None  # (file, line, text) of each query of --queries
    # An unset "$FILE": '' read as the working folder ("--queries  is a folder"), and --video '' as a missing video
    for source in args.queries or ():
        refuse_blank("--queries", source, "pass a text file with one query a line, or - to read stdin")
    refuse_blank("--video", args.video, "pass the path of a video file to search by")
    if args.queries is not None:
        if args.text is not None:
            raise VmmError(f"give a text query or --queries {args.queries[0]}, not both; add {args.text!r} to the file "
                           "as a line of its own")
        if args.video is not None:
            raise VmmError("--queries holds text queries and --video is a video query; search by --video in a "
                           "separate call")
        args.texts = [query for source in args.queries for query in _read_queries(source)]
    elif (args.text is None) == (args.video is None):
        raise VmmError("give a text query, --video QUERY.mp4 or --queries FILE (exactly one)")
    if args.text is not None:
        try:
            args.text.encode("utf-8")
        except UnicodeEncodeError:  # bytes the locale could not decode reach argv as surrogate escapes
            raise VmmError(f"the query {os.fsencode(args.text)!r} is not valid UTF-8 text; type it again, or set a "
                           "UTF-8 locale (e.g. LANG=C.UTF-8) for the terminal") from None
    if args.k < 1:
        raise VmmError(f"-k {args.k}: pass at least 1 result")
    if "" in (args.path_glob or ()):  # an unset shell variable (--path "$DIR"): it named the working folder
        raise VmmError("--path is an empty string (''); pass a glob or a folder of the videos to keep, or drop --path")
    if args.rerank < 0:
        raise VmmError(f"--rerank {args.rerank}: pass the number of top clips to re-score (0, the default, "
                       "re-scores none)")
    for option, value in (("--min-duration", args.min_duration), ("--max-duration", args.max_duration)):
        if value is not None and not value >= 0:
            raise VmmError(f"{option} {value:g}: pass a number of seconds >= 0")
    if args.min_duration is not None and args.max_duration is not None and args.min_duration > args.max_duration:
        raise VmmError(f"--min-duration {args.min_duration:g} is above --max-duration {args.max_duration:g}: no "
                       "video can match; swap or widen them")
    if args.device is not None:
        resolve_device(args.device)
    from retrieval.library import COLOR_HISTOGRAM, _is_library, _read_model_file
    from vmm.commands import check_library_readable
    # A "~" the shell left alone (a quoted "~/My Videos/lib") is the home folder, as VideoLibrary.open takes it:
    # the checks below read the library's model file through it.
    args.library = os.path.expanduser(args.library)
    if args.text is not None and not os.path.isdir(args.library) and _is_library(os.path.expanduser(args.text)):
        # Else "library QUERY does not exist; create it with `vmm index`", for a library that is right there.
        raise VmmError(f"the arguments look swapped: {args.text!r} is a library and {args.library!r} is no folder; "
                       f"give the library first: vmm search {shlex.quote(args.text)} {shlex.quote(args.library)}")
    if args.text is not None and _is_video_file(args.text):
        # Else the file's name was searched as words, and its ranking looked like an answer.
        raise VmmError(f"the query {args.text!r} is a video file; search by it with --video "
                       f"{shlex.quote(args.text)}, or write the words to search for")
    if not check_library_readable(args.library):
        return  # missing or not a folder: opening the library names it
    given = [f"--{name}" for name in ("model", "checkpoint") if getattr(args, name) not in (None, COLOR_HISTOGRAM)]
    recorded = _read_model_file(args.library, given=args.model is not None or args.checkpoint is not None).get("model")
    if recorded == COLOR_HISTOGRAM and given:  # else the override loads the default video-text model's weights
        raise VmmError(f"library {args.library} was indexed with {COLOR_HISTOGRAM}, which has no weights: drop "
                       f"{' and '.join(given)}")


def _is_video_file(text: str) -> bool:
    """Whether a text query names a video file that exists: `vmm search LIB clip.mp4`, meant as --video. Both tests,
    so that words that happen to name a file ("dog", "notes.txt") are still searched as words."""
    from pathlib import Path

    from index.discovery import VIDEO_EXTENSIONS
    return Path(text).suffix.lower() in VIDEO_EXTENSIONS and os.path.isfile(os.path.expanduser(text))


def _read_queries(source: str) -> list[tuple[str, int, str]]:
    """(file, line number, query) of each line of ``source`` (``-``: stdin) that holds more than white space."""
    from pathlib import Path

    from vmm.errors import VmmError
    name, shown = ("- (stdin)", "stdin") if source == "-" else (source, source)  # as an option's value; in a note
    if source == "-" and sys.stdin is None:  # started with stdin closed (<&-)
        raise VmmError("--queries -: stdin is closed; pipe the queries in, one a line, or pass a file")
    if source == "-" and sys.stdin.isatty():  # else a silent wait that looks like a hang
        print("reading queries from the terminal, one a line; end with Ctrl-D", file=sys.stderr)
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(os.path.expanduser(source)).read_bytes()
    except FileNotFoundError:
        raise VmmError(f"--queries {source} does not exist; pass a text file with one query a line") from None
    except IsADirectoryError:
        raise VmmError(f"--queries {source} is a folder; pass a text file with one query a line") from None
    except OSError as e:
        raise VmmError(f"--queries {name} cannot be read ({e.strerror or e}); check the path and its permissions"
                       ) from None
    try:
        # utf-8-sig: Windows editors start a file with a byte-order mark, which stuck to the first query.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        import shlex

        from index.discovery import VIDEO_EXTENSIONS
        if Path(source).suffix.lower() in VIDEO_EXTENSIONS:  # --queries for --video: "save it as UTF-8" misled
            raise VmmError(f"--queries {source} is a video, not a text file of queries; search by it with --video "
                           f"{shlex.quote(source)}") from None
        line = len(_LINE_END.split(data[:e.start].decode("utf-8-sig")))  # a line is what an editor can go to
        raise VmmError(f"--queries {name} is not UTF-8 text ({e.reason} at line {line}); save it as UTF-8") from None
    # Not splitlines(): it also splits at form feeds and Unicode separators (U+2028 pasted from a web page), which
    # cut one query in two and moved every later line number off the one an editor shows. strip(): a query's
    # surrounding spaces change nothing the model reads.
    queries = [(shown, n, line.strip()) for n, line in enumerate(_LINE_END.split(text), 1) if line.strip()]
    if not queries:
        raise VmmError(f"--queries {name} holds no queries; write one query a line")
    return queries


def run(args: argparse.Namespace) -> int:
    from retrieval.library import VideoLibrary, Where
    from vmm.errors import VmmError, one_line
    _check_options(args)
    # A relative --path is taken from the current folder by the library's search (retrieval.absolute_path_glob).
    where = Where(args.path_glob, args.min_duration, args.max_duration)
    texts = [args.text] if args.texts is None else [text for *_, text in args.texts]
    with VideoLibrary.open(args.library, model=args.model, checkpoint=args.checkpoint, device=args.device) as lib:
        clips = len(lib)
        # Neither can exceed the library: asking for more only allocates result arrays of that size.
        size = max(clips, 1)
        options = dict(k=min(args.k, size), rerank=min(args.rerank, size), where=where, per_video=args.per_video,
                       merge=not args.no_merge)
        if args.texts is None:
            results = [lib.search(text=args.text, video=args.video, **options)]
        else:
            try:
                results = lib.search_many(texts, **options)
            except VmmError as error:  # a query of the file that cannot be searched: which line of which file
                if getattr(error, "text_index", None) is None:
                    raise
                raise VmmError("line {1} of --queries {0}: {2}".format(*args.texts[error.text_index][:2], error)
                               ) from None
        reads = [None if text is None else lib.truncated_query(text) for text in texts]
    for i, read in enumerate(reads):
        if read is not None:  # else the words past the cut were silently left out of the search
            which = "the query" if args.texts is None else "the query on line {1} of {0}".format(*args.texts[i])
            print(one_line(f"note: {which} is longer than the model reads ({lib.encoder.max_text_len} tokens), so "
                           f"it was searched as {read!r}; shorten it to the words that matter"), file=sys.stderr)
    if args.json:
        # "exists": what the table says in words, for a script (a file deleted or moved since the last vmm index)
        found = [[{**h.to_dict(), "exists": os.path.exists(h.path)} for h in hits] for hits in results]
        print(json.dumps(found[0] if args.texts is None else
                         [{"query": text, "hits": hits} for text, hits in zip(texts, found)], indent=2))
        return 0
    if len(results) > 1 and not any(results):
        # One filter and one library for every query, so one reason: said once per query, it filled the screen.
        sys.stdout.write(_no_results(args, clips, queries=len(results)) + "\n")
        return 0
    tables = [_table(args, hits, clips) for hits in results]
    if args.texts is None:
        sys.stdout.write(tables[0])
    else:  # each table headed by its query, a blank line between them
        sys.stdout.write("\n".join(f"query: {one_line(text)}\n{table}" for text, table in zip(texts, tables)))
    return 0


def _table(args: argparse.Namespace, hits, clips: int) -> str:
    """The hits as the table `vmm search` prints, or why there are none."""
    from vmm.errors import one_line
    if not hits:
        return _no_results(args, clips) + "\n"
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text
    table = Table(box=None)
    for col in ("rank", "score", "path", "start-end"):
        table.add_column(col, justify="right" if col in ("rank", "score") else "left")
    outside = args.rerank > 0 and any(h.itm is None for h in hits)
    for h in hits:
        # -100 is the official score of a hit the ITM head did not re-score (JSON keeps it); a table reader
        # would take it for a terrible match, so the table shows a dash and says why below.
        score = "-" if args.rerank > 0 and h.itm is None else f"{h.score:.4f}"
        # Text, not markup: a file named "[intro] clip.mp4" lost its "[intro]" as a style tag.
        path = Text(one_line(h.path))
        if not os.path.exists(h.path):  # deleted or moved since the last vmm index: say so rather than list it bare
            path.append("  (file not found; vmm index updates the library)")
        table.add_row(str(h.rank), score, path, f"{_fmt_time(h.start)}-{_fmt_time(h.end)}")
    # Rendered into a string and printed by us: writing stdout itself, Rich exits with status 1 on a closed pipe
    # and its write errors escape vmm.cli's handling.
    rendered = io.StringIO()
    console = Console(file=rendered, width=200, force_terminal=sys.stdout.isatty())
    # As wide as the widest row: at 200 columns a longer path was cut with "…" and folded over two lines.
    console.width = max(200, console.measure(table, options=console.options.update_width(1 << 20)).maximum)
    console.print(table)
    if outside:
        rendered.write(f"-: outside the {args.rerank} re-scored clips, in their first-stage order "
                       f"(score -100 in --json, the official value)\n")
    return rendered.getvalue()


def _no_results(args: argparse.Namespace, clips: int, queries: int = 1) -> str:
    """Why a search (of ``queries`` texts) found nothing: with k >= 1 only an empty library or filters that no video
    passes can do that, and a bare "no results" left a mistyped --path (or one relative to another folder) looking
    like no match."""
    from vmm.errors import one_line
    none = "no results" if queries == 1 else f"no results for any of the {queries} queries"
    if clips == 0:
        return one_line(f"{none}: the library holds no clips; add videos with `vmm index VIDEOS --library "
                        f"{args.library}`")
    given = [f"--{name.replace('_', '-')} {value:g}" for name, value in
             (("min_duration", args.min_duration), ("max_duration", args.max_duration)) if value is not None]
    globs = args.path_glob or []
    given[:0] = [f"--path {glob}" for glob in globs]
    if any(not glob.startswith("*") and not os.path.isabs(os.path.expanduser(glob)) for glob in globs):
        given[len(globs) - 1] += f" (taken from {os.getcwd()})"
    if not given:
        return none
    return one_line(f"{none}: no indexed video matches {', '.join(given)}; widen or drop "
                    f"{'it' if len(given) == 1 else 'them'}")
