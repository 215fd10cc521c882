"""The ``vmm`` command: a thin argparse layer over the Python API.

Each subcommand lives in ``vmm/commands/<name>.py`` with ``add_arguments(parser)`` and ``run(args) -> int``.
User errors (:class:`vmm.errors.VmmError`) print one line ``error: ...`` and exit with status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import os
import shlex
import signal
import sys
from typing import Optional, Sequence

from vmm.errors import OneLineArgumentParser, VmmError, one_line, out_of_memory

COMMANDS = {
    "demo": "run the offline demo: generate a video library, index it, search it, evaluate",
    "index": "index a folder of videos into a searchable library",
    "search": "search a library by text or by example video",
    "eval": "zero-shot retrieval evaluation (MSRVTT, DiDeMo, ActivityNet, LSMDC, MSVD protocols)",
    "classify": "top labels of videos: Kinetics-400 with a VideoMamba classifier, any label set zero-shot",
    "encode": "encode a video clip with a VideoMamba encoder and print shape and timing",
}


class _Parser(OneLineArgumentParser):
    """The ``vmm`` parser: its usage errors name the command, and a file that was read as an option because its
    name starts with '-'."""

    def __init__(self, *args, dash_files: Sequence[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.dash_files = list(dash_files)
        self.hint = ""  # added to its usage errors: what an unknown command was probably meant to be

    def error_line(self, message: str) -> str:
        if self.dash_files:
            name = self.dash_files[0]
            message += (f"; {one_line(name)!r} is a file, but a name that starts with '-' reads as an option: "
                        f"write it as ./{one_line(name)}")
        return super().error_line(f"{self.prog}: {message}{self.hint}")


def _unknown_command_hint(word: str, commands: Sequence[str], argv: Sequence[str]) -> str:
    """What `vmm WORD` was probably meant as: `vmm help index` as `vmm index --help`, `vmm serch` as `vmm search`."""
    if word == "help":
        asked = next((a for a in argv[argv.index(word) + 1:] if a in commands), "COMMAND")
        return f"; for a command's options run `vmm {asked} --help`"
    close = difflib.get_close_matches(word.lower(), commands, n=1)  # `vmm ENCODE` with caps lock on
    return f"; did you mean {close[0]!r}?" if close else ""


def _misspelt_option(argv: Sequence[str], parser: argparse.ArgumentParser):
    """The parser and its one-line error for the first option of ``argv`` that its command does not know but is
    close to one it does (`--libary` or `-library` for --library, `vmm index --version` for vmm's own), else None:
    argparse blamed the missing --library, or left `--per-vidoe` over as an unrecognized argument without naming
    the option meant."""
    command = parser
    for arg in argv:
        if arg == "--":  # what follows is never read as an option
            break
        if command is parser and arg in parser.commands:
            command = parser.commands[arg]
            continue
        if not arg.startswith("-") or " " in arg or arg in command.dash_files:
            continue  # argparse reads a word with a space as a positional (a query), never as an option
        name = arg.split("=", 1)[0]
        options = [o for action in command._actions for o in action.option_strings if o.startswith("--")]
        if not arg.startswith("--"):
            if "-" + name in options:  # `-library`, as ffmpeg or Go tools write long options
                return command, f"unrecognized option {name}; did you mean -{name}?"
            continue
        if command is not parser and name not in options and name in parser._option_string_actions:
            return command, f"{name} is an option of vmm itself: vmm {name}"  # `vmm index --version`
        if any(o.startswith(name) for o in options):
            continue  # argparse takes a unique prefix, and names the options an ambiguous one could be
        close = difflib.get_close_matches(name, options, n=1)
        if close:
            return command, f"unrecognized option {name}; did you mean {close[0]}?"
    return None


def _dash_files(argv: Sequence[str]) -> list[str]:
    argv = list(argv)
    if "--" in argv:  # what follows is never read as an option
        argv = argv[:argv.index("--")]
    return [a for a in argv if a.startswith("-") and a != "-" and os.path.exists(a)]


def build_parser(dash_files: Sequence[str] = ()) -> argparse.ArgumentParser:
    parser = _Parser(prog="vmm", description="Video-text retrieval with VideoMamba.", dash_files=dash_files)
    from vmm import __version__
    parser.add_argument("--version", action="version", version=f"vmm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.commands = {}
    for name, help_text in COMMANDS.items():
        try:
            module = importlib.import_module(f"vmm.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"vmm.commands.{name}":
                continue  # command not part of this build
            raise
        p = sub.add_parser(name, help=help_text, description=help_text, dash_files=dash_files)
        parser.commands[name] = p
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


class _StdoutError(Exception):
    """Writing to standard output failed: its own type, so that no command's ``except OSError`` mistakes it for a
    problem with one of its files."""


class _GuardedStdout:
    """sys.stdout, whose write errors other than a closed pipe raise :class:`_StdoutError`, and which writes what
    its encoding cannot hold escaped."""

    def __init__(self, stream):
        self._stream = stream

    def _guard(self, call, *args):
        try:
            return call(*args)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise _StdoutError(e.strerror or str(e)) from None

    def write(self, text):
        try:
            return self._guard(self._stream.write, text)
        except UnicodeEncodeError:
            # A path the locale cannot encode (a non-UTF-8 locale, or a file name that is not UTF-8) ended the
            # command with a traceback. The stream encodes the whole text before it writes any: nothing is doubled.
            encoding = self._stream.encoding
            return self._guard(self._stream.write, text.encode(encoding, "backslashreplace").decode(encoding))

    def flush(self):
        return self._guard(self._stream.flush)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _mute_stdout() -> None:
    # Python flushes stdout again at exit: pointed at /dev/null, that flush cannot fail a second time.
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass  # stdout is no file (captured)


def _check_parallelism(args: argparse.Namespace) -> None:
    """Refuse thread and process counts far above the CPUs: torch crashes on a huge --threads, and hundreds of
    threads or decoders only contend for the same cores."""
    limit = 4 * (os.cpu_count() or 1)
    for name, least in (("threads", 1), ("workers", 0)):
        value = getattr(args, name, None)
        if value is None:
            continue
        if value < least:
            raise VmmError(f"--{name} {value}: pass at least {least} (or omit --{name} for the default)")
        if value > limit:
            raise VmmError(f"--{name} {value} is far above the {os.cpu_count()} CPUs of this machine; pass at most "
                           f"{limit} (or omit --{name} for the default)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``vmm ARGS``; returns the exit status (0 done, 2 user error or out of memory, 130 interrupted, 141 closed
    pipe, 143 stopped by SIGTERM)."""
    # Everything, the imports of the commands (torch) included, runs under these handlers: a Ctrl-C in the first
    # second of start-up should print one word, not the traceback of an import.
    if sys.stdout is None:  # started with stdout closed (>&-): a file opened later would take its place as fd 1
        _say_error("standard output is closed; redirect it instead (e.g. > /dev/null)")
        return 2
    with _standard_streams(), _stopping_on_sigterm():
        try:
            return _main(argv)
        except VmmError as e:
            _say_error(one_line(str(e)))
            return 2
        except _Terminated:
            _say("stopped by SIGTERM")
            return 128 + int(signal.SIGTERM)
        except KeyboardInterrupt:
            _say("interrupted")
            return 130
        except _StdoutError as e:
            _say_error(f"cannot write to standard output ({e}); redirect it to a file or device with room (what the "
                       "command finished before is kept)")
            _mute_stdout()
            return 2
        except BrokenPipeError:
            # The reader of the output went away (`vmm search ... | head`): stop quietly like other tools.
            _mute_stdout()
            return 141  # 128 + SIGPIPE, the status of a command the signal ended
        except (MemoryError, RuntimeError) as e:
            what = out_of_memory(e)
            if what is None:
                raise
            # Sizes too big for this machine (or a GPU another job fills) are no bug of vmm: one line, as a user
            # error, where a traceback ended with status 1. A command's own run names its options (_memory_fix).
            _say_error(f"out of memory ({what}); free memory (other programs, another job on the GPU)")
            return 2


def _memory_fix(args: argparse.Namespace) -> str:
    """How a run of the command ``args`` holds needs less memory, naming only options that command has: vmm search,
    which has neither --frames nor --batch-size and whose library fixes the model, was told to pass them."""
    smaller = [text for dest, text in (("frames", "fewer --frames"), ("batch_size", "a smaller --batch-size"))
               if hasattr(args, dest)]
    if args.command == "search":
        smaller += ["a smaller --rerank"] if args.rerank > 0 else []
    elif hasattr(args, "model"):
        smaller.append("a smaller model")
    ways = ", ".join(smaller[:-1]) + " or " * (len(smaller) > 1) + "".join(smaller[-1:])
    return (f"a run needs less memory with {ways}, or " if ways else "") + \
        "free memory (other programs, another job on the GPU)"


@contextlib.contextmanager
def _standard_streams():
    """sys.stdout guarded (:class:`_GuardedStdout`), and a closed stderr made /dev/null."""
    stdout, stderr = sys.stdout, sys.stderr
    if stderr is None:
        # Started with stderr closed (2>&-): print(file=None) wrote every error and warning to stdout, among the
        # results, and a file opened later took fd 2, where C libraries and decoder workers write their messages.
        # The exit status still tells.
        _cover_fd(2)
        sys.stderr = open(os.devnull, "w")
    sys.stdout = _GuardedStdout(stdout)
    try:
        yield
    finally:
        if stderr is None:
            sys.stderr.close()
        sys.stdout, sys.stderr = stdout, stderr


def _cover_fd(fd: int) -> None:
    """Point a closed ``fd`` at /dev/null, so that no file opened later becomes it."""
    try:
        os.fstat(fd)
    except OSError:
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler, `timeout`, `kill`), raised as a Ctrl-C is: the same clean-up runs (decoder workers
    stopped, nothing half-written), where the default action ended the process on the spot without a word."""


@contextlib.contextmanager
def _stopping_on_sigterm():
    """Raise :class:`_Terminated` on SIGTERM in this process (outside the main thread, where no handler can be set,
    SIGTERM keeps its default)."""
    pid = os.getpid()

    def stop(signum, frame):
        if os.getpid() != pid:
            # A forked worker (of a fork pool that does not reset SIGTERM itself, as vmm demo's does) inherits the
            # handler, and its pool ends it with SIGTERM: it dies as it would have, without a traceback of its own.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise _Terminated

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _say(text: str) -> None:
    try:
        print(text, file=sys.stderr)
    except (OSError, AttributeError):
        pass  # stderr is closed or full as well: the exit status still tells


def _say_error(message: str) -> None:
    _say(f"error: {message}")


def _holding_signals(build, *args):
    """``build(*args)`` with Ctrl-C and SIGTERM held until it returns. Building the parser imports numpy (encode.py),
    and a KeyboardInterrupt raised inside numpy's import is half-caught there: numpy stays loaded without most of its
    functions, and the command then failed with an AttributeError traceback. Held, the signal arrives as soon as
    the imports are done and stops the command cleanly."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX
        return build(*args)
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        return build(*args)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _check_current_folder() -> None:
    """Refuse to run in a folder deleted since the shell entered it: torch's import died there with "Intel oneMKL
    FATAL ERROR: Cannot load libtorch_cpu.so", and relative paths cannot be resolved."""
    try:
        os.getcwd()
    except FileNotFoundError:
        raise VmmError("the current folder no longer exists (deleted or moved since this shell entered it); cd to an "
                       "existing folder, e.g. cd ~, and run the command again") from None


def _main(argv: Optional[Sequence[str]]) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _holding_signals(build_parser, _dash_files(argv))
    word = next((a for a in argv if not a.startswith("-")), None)
    if word is not None and word not in parser.commands:
        parser.hint = _unknown_command_hint(word, list(parser.commands), argv)
    misspelt = _misspelt_option(argv, parser)
    if misspelt is not None:
        command, message = misspelt
        command.error(message)
    args, extra = parser.parse_known_args(argv)
    command = parser.commands.get(getattr(args, "command", None), parser)
    many = [a for a in command._actions if not a.option_strings and a.nargs in ("+", "*")]
    empty = [a for a in command._actions if not a.option_strings and a.nargs == "?" and getattr(args, a.dest) is None]
    # argparse leaves "--" and what follows it over once the positionals before the options are filled, although
    # no word after "--" is an option: `vmm search LIB -k 5 -- "-red car"`, `vmm index a.mp4 --library L -- -b.mp4`.
    cut = extra.index("--") if "--" in extra else len(extra)
    loose = extra[:cut] + extra[cut + 1:]  # the words left over that are no options
    options = any(word.startswith("-") for word in extra[:cut])
    if len(loose) == 1 and empty and not options:
        # `vmm search LIB -k 5 "red car"`: argparse fills LIB and the optional query together, before the options,
        # and left the query over as unrecognised.
        setattr(args, empty[0].dest, loose[0])
    elif loose and many and not options:
        # `vmm index ~/a --library L ~/b`: argparse ends a list of PATHs at the first option and left ~/b over.
        setattr(args, many[0].dest, getattr(args, many[0].dest) + loose)
    elif loose or options:  # a "--" with nothing after it (a script's `-- "$@"`) is no mistake
        # named by the command's parser: "vmm: unrecognized arguments" pointed at the wrong --help
        hint = ""
        if args.command == "search" and args.text is None and extra[0].startswith("-") and extra[0] != "--":
            hint = (f"; a query that starts with '-' reads as an option: give it last, after --: vmm search LIB "
                    f"[options] -- {shlex.quote(' '.join(extra))}")
        elif args.command == "search" and not options:
            words = " ".join(([args.text] if args.text is not None else []) + loose)
            hint = f"; a query of several words is one argument, quote it: vmm search LIB {shlex.quote(words)}"
        command.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    if not hasattr(args, "_run"):  # `vmm` alone: a usage mistake, so the help goes where errors go
        parser.print_help(sys.stderr)
        return 2
    _check_parallelism(args)
    _check_current_folder()
    try:
        code = int(args._run(args) or 0)
    except (MemoryError, RuntimeError) as e:
        what = out_of_memory(e)
        if what is None:
            raise
        raise VmmError(f"out of memory ({what}); {_memory_fix(args)}") from None
    sys.stdout.flush()  # stdout to a pipe is block-buffered: a closed pipe shows here, not at exit
    return code


if __name__ == "__main__":
    sys.exit(main())
