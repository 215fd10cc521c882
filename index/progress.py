"""Progress reporting for ingestion: a rich bar, a caller's callback, or nothing.

>>> seen = []
>>> progress = IngestProgress(seen.append, files_total=2)
>>> progress.advance(files=1, clips=5, path="a.mp4"); progress.close()
>>> seen[-1].files_done, seen[-1].clips_done
(1, 5)
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable, TextIO


@dataclass(frozen=True)
class ProgressUpdate:
    """State handed to a progress callback after every encoded batch and finished file."""

    files_done: int
    files_total: int
    clips_done: int
    elapsed: float
    path: str | None  # the file that just finished, if any

    @property
    def clips_per_second(self) -> float:
        return self.clips_done / self.elapsed if self.elapsed > 0 else 0.0


class IngestProgress:
    """``progress`` is True (rich bar on stderr), False/None (silent) or a callable taking ProgressUpdate."""

    def __init__(self, progress: bool | Callable[[ProgressUpdate], None] | None, files_total: int):
        self.files_total = files_total
        self.files_done = 0
        self.clips_done = 0
        self._start = time.monotonic()
        self._callback = progress if callable(progress) else None
        self._bar = None
        if progress is True and files_total:
            self._bar = _rich_bar(files_total)

    def advance(self, *, files: int = 0, clips: int = 0, path: str | None = None) -> None:
        self.files_done += files
        self.clips_done += clips
        elapsed = time.monotonic() - self._start
        if self._callback is not None:
            self._callback(ProgressUpdate(self.files_done, self.files_total, self.clips_done, elapsed, path))
        if self._bar is not None:
            bar, task = self._bar
            rate = self.clips_done / elapsed if elapsed > 0 else 0.0
            bar.update(task, completed=self.files_done, clips=self.clips_done, rate=rate)

    def close(self) -> None:
        if self._bar is not None:
            self._bar[0].stop()
            self._bar = None


def _rich_bar(files_total: int):
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    bar = Progress(
        SpinnerColumn(),
        TextColumn("indexing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("files"),
        TextColumn("{task.fields[clips]} clips, {task.fields[rate]:.1f} clips/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    task = bar.add_task("indexing", total=files_total, clips=0, rate=0.0)
    bar.start()
    return bar, task


def log_lines(stream: TextIO | None = None, every: float = 60.0,
              label: str = "indexing") -> Callable[[ProgressUpdate], None]:
    """A progress callback for a log (a batch job's output, ``nohup``, a pipe), where a bar cannot redraw and left
    only its last frame: a plain line with the first update, at most one every ``every`` seconds after it, and one
    when the last file is done. ``stream`` defaults to stderr at call time.

    >>> import io
    >>> out = io.StringIO()
    >>> report = log_lines(out, every=1.0)
    >>> for done, clips, seconds in [(0, 4, 2.0), (1, 8, 3.0), (2, 12, 3.5), (4, 20, 10.0)]:
    ...     report(ProgressUpdate(done, 4, clips, seconds, None))
    >>> print(out.getvalue(), end="")
    indexing: 0/4 files, 4 clips, 2.0 clips/s, 0:00:02 elapsed
    indexing: 1/4 files, 8 clips, 2.7 clips/s, 0:00:03 elapsed, about 0:00:09 left
    indexing: 4/4 files, 20 clips, 2.0 clips/s, 0:00:10 elapsed
    """
    state = {"printed_at": None, "finished": False}

    def report(update: ProgressUpdate) -> None:
        finished = update.files_done >= update.files_total
        if state["finished"] or (state["printed_at"] is not None and not finished
                                 and update.elapsed - state["printed_at"] < every):
            return
        line = (f"{label}: {update.files_done}/{update.files_total} files, {update.clips_done} clips, "
                f"{update.clips_per_second:.1f} clips/s, {_clock(update.elapsed)} elapsed")
        if 0 < update.files_done < update.files_total:
            left = update.elapsed / update.files_done * (update.files_total - update.files_done)
            line += f", about {_clock(left)} left"
        print(line, file=stream or sys.stderr, flush=True)
        state.update(printed_at=update.elapsed, finished=finished)

    return report


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
