"""A progress bar with rate and ETA on stderr for long replays.

On a terminal the bar redraws in place; in a log (not a TTY) it prints a plain line every
few seconds instead, so CI output stays readable. The last line is always drawn; a caller
that reports a throughput passes it to :meth:`Progress.close` so that both agree.
"""

import sys
import time
from typing import Optional, TextIO, Tuple


def format_duration(seconds: float) -> str:
    """Return ``seconds`` as ``m:ss`` (or ``h:mm:ss``)."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f'{hours}:{minutes:02d}:{secs:02d}' if hours else f'{minutes}:{secs:02d}'


class Progress:
    """Count work done out of an expected total and show rate and time left.

    :param total: expected number of items (``None`` or 0 when unknown: no ETA).
    :param label: word shown before the bar.
    :param stream: where to draw (default stderr).
    :param interval: seconds between redraws (terminal) or lines (log).
    """

    def __init__(self, total: Optional[int], label: str = 'frames',
                 stream: Optional[TextIO] = None, interval: Optional[float] = None):
        self.total = int(total) if total else 0
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, 'isatty', lambda: False)())
        self.interval = interval if interval is not None else (0.2 if self.tty else 5.0)
        self.done = 0
        self.note = ''
        self.start = time.monotonic()
        self._last = self.start
        self._drawn = False
        self._final: Optional[Tuple[float, float]] = None

    def restart(self, start: Optional[float] = None) -> None:
        """Count time from ``start`` (``time.monotonic()``; default now), e.g. after set-up."""
        self.start = time.monotonic() if start is None else start

    def rate(self) -> float:
        """Items per second so far (or the rate given to :meth:`close`)."""
        if self._final is not None:
            return self._final[0]
        elapsed = self.elapsed()
        return self.done / elapsed if elapsed > 0 else 0.0

    def elapsed(self) -> float:
        """Seconds since the start (or the duration given to :meth:`close`)."""
        if self._final is not None:
            return self._final[1]
        return time.monotonic() - self.start

    def eta(self) -> Optional[float]:
        """Seconds left at the current rate, or ``None`` when it cannot be estimated."""
        elapsed = self.elapsed()
        if not self.total or not self.done:
            return None
        if self.done >= self.total:
            return 0.0
        return elapsed / self.done * (self.total - self.done)

    def text(self) -> str:
        """Return the current progress line (without the carriage return)."""
        elapsed = self.elapsed()
        rate = self.rate()
        if self.total:
            fraction = min(1.0, self.done / self.total)
            filled = int(fraction * 24)
            bar = '#' * filled + '-' * (24 - filled)
            eta = self.eta()
            left = format_duration(eta) if eta is not None else '?'
            line = (f'{self.label} [{bar}] {self.done}/{self.total} {fraction:4.0%} '
                    f'{rate:.1f}/s elapsed {format_duration(elapsed)} ETA {left}')
        else:
            line = f'{self.label} {self.done} {rate:.1f}/s elapsed {format_duration(elapsed)}'
        return f'{line} {self.note}'.rstrip()

    def update(self, count: int = 1, note: Optional[str] = None) -> None:
        """Add ``count`` finished items; ``note`` replaces the text shown after the bar."""
        self.done += count
        if note is not None:
            self.note = note
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._draw()

    def _draw(self) -> None:
        if self.tty:
            self.stream.write('\r\x1b[K' + self.text())
        else:
            self.stream.write(self.text() + '\n')
        self.stream.flush()
        self._drawn = True

    def close(self, rate: Optional[float] = None, elapsed: Optional[float] = None) -> None:
        """Draw the final state and end the line.

        :param rate: the final rate to show instead of items / elapsed time (a replay passes
            its report's throughput, so the bar and the report say the same).
        :param elapsed: the duration to show with it, in seconds.
        """
        if rate is not None or elapsed is not None:
            self._final = (self.rate() if rate is None else rate,
                           self.elapsed() if elapsed is None else elapsed)
        if self.tty or self._drawn or self.done:
            self._draw()
            if self.tty:
                self.stream.write('\n')
            self.stream.flush()
