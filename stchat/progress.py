"""Progress of long commands (downloads, verification, conversion) on stderr, never on stdout.

On a terminal one status line is redrawn in place (file name, percent, bar, bytes, speed,
ETA; then conversion layers), at most ten times a second. Anywhere else (a pipe, a log file,
CI) escape codes and carriage returns would only be noise (peers' complaint: spinners leaking
into logs), so each stage gets one plain line when it starts and one when it ends.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

_REDRAW_SECONDS = 0.1
_BAR = 24


def human_bytes(count: float) -> str:
    """1536 -> '1.5 KiB'; binary units, like `--memory`."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"  # pragma: no cover


def human_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Reporter:
    """Writes progress to `stream`; `tty=None` asks the stream whether it is a terminal."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self._status = False   # a status line is on screen (tty mode)
        self._last_draw = 0.0
        self._stage = ""

    def line(self, text: str) -> None:
        """A permanent line (stage start or end, notice, warning)."""
        self._clear()
        print(text, file=self.stream, flush=True)

    def _draw(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < _REDRAW_SECONDS:
            return
        self._last_draw = now
        self.stream.write(f"\r{text}\x1b[K")
        self.stream.flush()
        self._status = True

    def _clear(self) -> None:
        if self._status:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._status = False

    def transfer(self, name: str, total: int, already: int = 0) -> "Transfer":
        return Transfer(self, name, total, already)

    def stage(self, label: str, done: int, total: int) -> None:
        """Conversion progress: `label done/total` (tty: redrawn; otherwise the first step only)."""
        if self.tty:
            self._draw(f"  converting: {label} {done}/{total}", force=done >= total)
        elif label != self._stage:
            self.line(f"converting: {label} (0/{total})")
        self._stage = label

    def fraction(self, label: str, done: int, total: int) -> None:
        """Progress through bytes (verification): a redrawn percentage on a terminal, nothing elsewhere."""
        if self.tty and total:
            self._draw(f"  {label} {done / total * 100:5.1f}% {human_bytes(done)}/{human_bytes(total)}",
                       force=done >= total)

    def done(self) -> None:
        self._clear()


class Transfer:
    """One file's download: `update(bytes_on_disk)` as data arrives, `finish()` at the end."""

    def __init__(self, reporter: Reporter, name: str, total: int, already: int):
        self.reporter, self.name, self.total = reporter, name, total
        self.start_bytes = self.done_bytes = already
        self.started = time.monotonic()
        resumed = f", resuming at {human_bytes(already)}" if already else ""
        reporter.line(f"downloading {name} ({human_bytes(total)}{resumed})")

    def speed(self) -> float:
        elapsed = time.monotonic() - self.started
        return (self.done_bytes - self.start_bytes) / elapsed if elapsed > 0 else 0.0

    def update(self, done: int) -> None:
        self.done_bytes = done
        if not self.reporter.tty:
            return
        fraction = done / self.total if self.total else 1.0
        filled = int(fraction * _BAR)
        speed = self.speed()
        eta = human_seconds((self.total - done) / speed) if speed > 0 else "--:--"
        shown = self.name if len(self.name) <= 32 else "..." + self.name[-29:]   # one terminal line
        self.reporter._draw(f"  {shown} {fraction * 100:5.1f}% [{'#' * filled}{'.' * (_BAR - filled)}] "
                            f"{human_bytes(done)}/{human_bytes(self.total)} {human_bytes(speed)}/s ETA {eta}")

    def restarted(self, done: int) -> None:
        """The server ignored the range: counting starts again from `done`."""
        self.start_bytes = self.done_bytes = done
        self.started = time.monotonic()

    def finish(self) -> None:
        elapsed = time.monotonic() - self.started
        fetched = self.done_bytes - self.start_bytes
        self.reporter.line(f"downloaded {self.name}: {human_bytes(fetched)} in {human_seconds(elapsed)} "
                           f"({human_bytes(self.speed())}/s)")
