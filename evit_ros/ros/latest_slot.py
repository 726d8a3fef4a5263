"""The depth-1 hand-over between subscription callbacks and the inference worker.

Callbacks :meth:`LatestSlot.put` frames without ever blocking on inference; the worker
:meth:`LatestSlot.take` s the newest. A frame replaced before the worker took it is counted
as dropped, so ``received == processed + dropped + rejected + in_flight`` at all times and a
slow model falls behind by at most one frame instead of queueing.
"""

import threading
from typing import Any, Optional

from evit_ros.ros.diagnostics import FrameCounters


class LatestSlot:
    """A one-frame mailbox where the latest frame wins, with the node's frame counters."""

    def __init__(self, cond: Optional[threading.Condition] = None):
        # Several cameras' slots share one condition, so that one worker waits on them all.
        self._cond = cond if cond is not None else threading.Condition()
        self._frame: Optional[Any] = None
        self._closed = False
        self._received = self._processed = self._dropped = self._rejected = 0
        self._in_flight = 0

    def put(self, frame: Any) -> bool:
        """Offer a frame; return ``True`` when it replaced one the worker never took."""
        with self._cond:
            self._received += 1
            replaced = self._frame is not None
            if replaced:
                self._dropped += 1
            self._frame = frame
            self._cond.notify_all()
            return replaced

    def reject(self) -> None:
        """Count a frame refused on arrival (it never enters the slot)."""
        with self._cond:
            self._received += 1
            self._rejected += 1

    def take(self, timeout: Optional[float] = None) -> Optional[Any]:
        """Wait for the newest frame and mark it in flight; ``None`` once closed or timed out."""
        with self._cond:
            self._cond.wait_for(lambda: self._frame is not None or self._closed, timeout)
            if self._closed or self._frame is None:
                return None
            frame, self._frame = self._frame, None
            self._in_flight = 1
            return frame

    @property
    def waiting(self) -> bool:
        """Whether a frame waits to be taken."""
        return self._frame is not None

    @property
    def busy(self) -> bool:
        """Whether a frame taken from this slot is still being processed."""
        return self._in_flight > 0

    def poll(self) -> Optional[Any]:
        """Take the waiting frame without blocking (marked in flight); ``None`` when empty."""
        with self._cond:
            if self._closed or self._frame is None:
                return None
            frame, self._frame = self._frame, None
            self._in_flight = 1
            return frame

    def done(self, processed: bool) -> None:
        """Finish the in-flight frame: ``processed`` or, when ``False``, rejected."""
        with self._cond:
            self._in_flight = 0
            if processed:
                self._processed += 1
            else:
                self._rejected += 1
            self._cond.notify_all()     # its next frame may go to any waiting worker

    def close(self) -> None:
        """Wake the worker for good; later :meth:`take` calls return ``None``."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def counters(self) -> FrameCounters:
        """Return a consistent snapshot; ``in_flight`` counts the waiting and the running frame."""
        with self._cond:
            waiting = 0 if self._frame is None else 1
            return FrameCounters(self._received, self._processed, self._dropped,
                                 self._rejected, self._in_flight + waiting)
