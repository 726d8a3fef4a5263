"""One worker, several cameras: take the frames waiting at this moment as one batch.

Each camera hands frames over through its own :class:`~evit_ros.ros.latest_slot.LatestSlot`
(latest wins); all slots share one condition, so the worker sleeps until any camera has a
frame. When more cameras wait than a batch takes (``max_batch``), the next batch starts
with the camera after the last one taken: round-robin, so under overload every camera gets
its share and none starves. With several workers, a camera whose frame is in a worker is
skipped until that frame is done, so each camera's outputs stay in order.
"""

import threading
from typing import Any, List, Optional, Sequence, Tuple

from evit_ros.ros.latest_slot import LatestSlot


class BatchGate:
    """The cameras' slots and the round-robin order in which the worker takes them.

    :param count: number of cameras (one slot each).
    """

    def __init__(self, count: int):
        self.cond = threading.Condition()
        self.slots: List[LatestSlot] = [LatestSlot(self.cond) for _ in range(count)]
        self._next = 0
        self._closed = False

    def take(self, max_batch: int, timeout: Optional[float] = None
             ) -> Optional[List[Tuple[int, Any]]]:
        """Wait for frames; return ``[(camera index, frame), ...]`` (at most ``max_batch``).

        :returns: ``None`` once closed; ``[]`` when ``timeout`` passed without a frame.
        """
        with self.cond:
            self.cond.wait_for(lambda: self._closed or any(s.waiting and not s.busy
                                                           for s in self.slots), timeout)
            if self._closed:
                return None
            batch: List[Tuple[int, Any]] = []
            count = len(self.slots)
            for step in range(count):
                index = (self._next + step) % count
                if self.slots[index].busy:
                    continue
                frame = self.slots[index].poll()
                if frame is None:
                    continue
                batch.append((index, frame))
                if len(batch) >= max_batch:
                    break
            if batch:
                self._next = (batch[-1][0] + 1) % count
            return batch

    def close(self) -> None:
        """Wake the worker for good; later :meth:`take` calls return ``None``."""
        with self.cond:
            self._closed = True
            for slot in self.slots:
                slot.close()
            self.cond.notify_all()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def order(self) -> Sequence[int]:
        """Return the camera indices in the order the next batch considers them."""
        count = len(self.slots)
        return [(self._next + step) % count for step in range(count)]
