"""Progress bars of long jobs (tqdm on stderr) that also work in a log file.

On a terminal a bar refreshes in place; when stderr is a file or a pipe (a batch job, ``nohup``,
CI) tqdm would either stay silent (its ``disable=None``) or pile its carriage-return refreshes onto
one line, so there each refresh is written as a line of its own, every ``LOG_INTERVAL_S`` seconds.
"""

from __future__ import annotations

import sys

LOG_INTERVAL_S = 30.0


class _LineWriter:
    """stderr for a tqdm bar that is not on a terminal: one line per refresh."""

    def write(self, text: str) -> None:
        text = text.strip("\r\n")
        if text:
            sys.stderr.write(text + "\n")

    def flush(self) -> None:
        sys.stderr.flush()


def progress_bar(enabled: bool, **kwargs):
    """A tqdm bar on stderr (``kwargs``: total, unit, desc, ...), silent unless ``enabled``."""
    from tqdm import tqdm

    if sys.stderr.isatty():
        return tqdm(file=sys.stderr, disable=not enabled, dynamic_ncols=True, **{"mininterval": 1.0, **kwargs})
    return tqdm(file=_LineWriter(), disable=not enabled, ncols=120, **{**kwargs, "mininterval": LOG_INTERVAL_S})
