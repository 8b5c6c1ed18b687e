"""Progress of long commands: one line on stderr, rewritten in place, only on a terminal."""

from __future__ import annotations

import json
from typing import IO, Any


class ProgressLine:
    """``show(text)`` rewrites one status line; silent unless enabled and on a TTY."""

    def __init__(self, stream: IO[str], enabled: bool, label: str) -> None:
        self.stream = stream
        self.enabled = enabled and stream.isatty()
        self.label = label
        self.shown = False

    def show(self, text: str) -> None:
        if not self.enabled:
            return
        self.stream.write(f"\r{self.label} {text} ")
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False


class TraceWriteProgress:
    """A text stream that passes JSONL writes through and shows how far the trace got.

    The simulator writes batches of lines; each batch's last record gives the trace time
    reached, which against ``start`` and ``hours`` is the share done.
    """

    def __init__(self, out: IO[str], progress: ProgressLine, start: float, hours: float):
        self.out = out
        self.progress = progress
        self.start = start
        self.seconds = hours * 3600.0
        self.lines = 0

    def write(self, text: str) -> int:
        written = self.out.write(text)
        if self.progress.enabled:
            self.lines += text.count("\n")
            self._show(text)
        return written

    def _show(self, text: str) -> None:
        last = text.rstrip("\n").rpartition("\n")[2]
        try:
            ts = float(json.loads(last)["ts"])
        except (ValueError, KeyError, TypeError):
            self.progress.show(f"{self.lines:,} requests")
            return
        share = min(1.0, max(0.0, (ts - self.start) / self.seconds)) if self.seconds else 1.0
        filled = int(share * 30)
        self.progress.show(
            f"[{'#' * filled}{'.' * (30 - filled)}] {share * 100:5.1f}%  {self.lines:,} requests"
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.out, name)
