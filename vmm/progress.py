"""Progress bars with named tasks on stderr, or nothing: what long steps outside indexing show (evaluation's
encoding and scoring, zero-shot prompts). Indexing has its own, ``index.progress``, counting files and clips.

>>> with ProgressBars(enabled=False) as bars:
...     advance = bars.task("encoding texts", total=3)
...     advance(3)
"""
from __future__ import annotations

from typing import Callable, Optional


class ProgressBars:
    """A rich progress display (nothing when ``enabled`` is false) holding one bar per :meth:`task`."""

    def __init__(self, enabled: bool):
        self._progress = None
        if enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)
            self._progress = Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[note]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                      console=Console(stderr=True))

    def __enter__(self) -> "ProgressBars":
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def task(self, description: str, total: int) -> Callable[..., None]:
        """A new bar of ``total`` steps; returns ``update(advance=0, note=None, completed=None)``."""
        if self._progress is None:
            return lambda advance=0, note=None, completed=None: None
        task_id = self._progress.add_task(description, total=total, note="")

        def update(advance: int = 0, note: Optional[str] = None, completed: Optional[int] = None) -> None:
            fields = {} if note is None else {"note": note}
            self._progress.update(task_id, advance=advance, completed=completed, **fields)
        return update
