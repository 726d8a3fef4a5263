"""Node health for ``/diagnostics``: latency percentiles, frame counters and the status level.

Levels, as the node reports them (one status per camera):

* OK, ``waiting for first image on <topic>`` for :data:`RECENT_S` seconds after the node
  started listening; then WARN ``nothing published on <topic> for N s; publishers seen:
  ...`` (the publishers the ROS graph shows on that topic, or ``none``);
* OK, ``segmenting at <rate> Hz`` while frames flow within the budget;
* WARN when the last frame's node latency (image received to outputs published) exceeded
  ``latency_budget_ms``; ERROR when the last :data:`SUSTAINED_FRAMES` frames all did. The
  budget is judged per frame: time without frames never makes it worse;
* WARN ``rejected frame: <reason>`` for :data:`RECENT_S` seconds after a rejection;
* WARN ``no image for N s on <topic>`` once images stopped for :data:`RECENT_S` seconds;
* ERROR ``backend failed: <reason>`` when the backend failed on the last frame.

When several apply, the newest event wins (a rejection after an over-budget frame, silence
after both): the message says what is happening now, not what happened first.

Times are ``time.monotonic()`` seconds passed in by the caller, so this module is tested
without sleeping.
"""

import threading
from collections import deque
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

#: Latency series kept per frame: the Segmenter's phases, the node's own latency (image
#: received to outputs published, including the wait for the worker) and the pipeline
#: latency (node clock now minus the image stamp).
SERIES = ('preprocess', 'inference', 'postprocess', 'total', 'node', 'pipeline')
PERCENTILES = (50, 95, 99)
WINDOW = 300           # frames in the percentile window
SUSTAINED_FRAMES = 10  # this many frames in a row over budget -> ERROR
RECENT_S = 5.0         # a rejection this recent -> WARN; no image this long -> WARN
#: Budgets when ``latency_budget_ms`` is 0 (auto): a floor per device kind, raised to
#: :data:`AUTO_BUDGET_FACTOR` times the warm-up frame of the backend that runs.
AUTO_BUDGET_FLOOR_MS = {'cpu': 1000.0, 'gpu': 100.0}
AUTO_BUDGET_FACTOR = 3.0


def auto_budget_ms(device: str, warmup_ms: float) -> float:
    """Return the latency budget for ``latency_budget_ms: 0``: from the device and warm-up.

    A CPU frame takes hundreds of milliseconds where a GPU's takes tens, so one fixed
    default is wrong on one of them; the warm-up frame measures the backend that runs.
    """
    floor = AUTO_BUDGET_FLOOR_MS['cpu' if device == 'cpu' else 'gpu']
    return float(max(floor, AUTO_BUDGET_FACTOR * warmup_ms))


@dataclass(frozen=True)
class FrameCounters:
    """Frame accounting: ``received == processed + dropped + rejected + in_flight``.

    ``in_flight`` (0 to 2) counts the frame waiting for the worker and the one it runs.
    """

    received: int = 0
    processed: int = 0
    dropped: int = 0
    rejected: int = 0
    in_flight: int = 0


class LatencyWindow:
    """The last :data:`WINDOW` samples of one latency series, in milliseconds."""

    def __init__(self, size: int = WINDOW):
        self._samples = deque(maxlen=size)

    def add(self, ms: float) -> None:
        """Record one sample."""
        self._samples.append(float(ms))

    def __len__(self) -> int:
        return len(self._samples)

    def summary(self) -> Dict[str, float]:
        """Return ``p50``, ``p95``, ``p99`` and ``max`` of the window (empty when no samples)."""
        if not self._samples:
            return {}
        values = np.fromiter(self._samples, dtype=np.float64)
        out = {f'p{q}': float(v) for q, v in zip(PERCENTILES, np.percentile(values, PERCENTILES))}
        out['max'] = float(values.max())
        return out


class NodeHealth:
    """Collects what happened to frames and turns it into a ``DiagnosticStatus``.

    Thread-safe: the worker records frames, callbacks record arrivals and rejections, the
    diagnostics timer calls :meth:`status`.

    :param budget_ms: latency budget (``latency_budget_ms``); may be changed at runtime.
    :param topic: the image topic, named in the waiting message.
    :param started: when the node started listening (``time.monotonic()``).
    """

    def __init__(self, budget_ms: float, topic: str = '~/image', started: float = 0.0):
        self.budget_ms = budget_ms
        self.topic = topic
        #: the publishers seen on :attr:`topic` (set by the node from the ROS graph).
        self.publishers: List[str] = []
        self.latency = {name: LatencyWindow() for name in SERIES}
        self.published: Dict[str, int] = {}
        self._lock = threading.Lock()
        self._started = started
        self._over: Optional[Tuple[float, int]] = None   # (last frame time, frames in a row)
        self._last_node_ms = 0.0
        self._last_image: Optional[float] = None
        self._rejection: Optional[Tuple[float, str]] = None
        self._failure: Optional[Tuple[float, str]] = None
        self._rate_mark: Optional[Tuple[float, int]] = None
        self._rate_hz = 0.0

    def restart(self, now: float) -> None:
        """Start listening again (lifecycle activate): the silence clock starts at ``now``."""
        with self._lock:
            self._started = now
            self._last_image = None

    def record_image(self, now: float) -> None:
        """Note that an image arrived (good or bad)."""
        with self._lock:
            self._last_image = now

    def record_frame(self, now: float, latency_ms: Dict[str, float]) -> None:
        """Record a processed frame's latencies (keys from :data:`SERIES`, ``node`` required)."""
        with self._lock:
            for name, value in latency_ms.items():
                self.latency[name].add(value)
            self._last_node_ms = latency_ms['node']
            if self._last_node_ms > self.budget_ms:
                self._over = (now, (self._over[1] if self._over else 0) + 1)
            else:
                self._over = None
            self._failure = None

    def record_output(self, topic: str) -> None:
        """Count one message published on an optional output (colour mask, overlay...)."""
        with self._lock:
            self.published[topic] = self.published.get(topic, 0) + 1

    def record_rejection(self, now: float, reason: str) -> None:
        """Record a frame refused for ``reason`` (one line)."""
        with self._lock:
            self._rejection = (now, reason)

    def record_failure(self, now: float, reason: str) -> None:
        """Record a backend failure; ERROR until a frame succeeds again (or newer news)."""
        with self._lock:
            self._failure = (now, reason)
            self._rejection = (now, reason)

    @property
    def last_rejection(self) -> str:
        """The most recent rejection reason, or ``''``."""
        with self._lock:
            return self._rejection[1] if self._rejection else ''

    def judge(self, now: float, counters: FrameCounters) -> Tuple[bytes, str]:
        """Return ``(level, message)`` for the current state (see the module docstring)."""
        with self._lock:
            publishers = ', '.join(self.publishers) or 'none'
            if counters.received == 0 and self._last_image is None:
                if now - self._started < RECENT_S:
                    return DiagnosticStatus.OK, f'waiting for first image on {self.topic}'
                return DiagnosticStatus.WARN, (
                    f'nothing published on {self.topic} for {now - self._started:.1f} s; '
                    f'publishers seen: {publishers}')
            # (time, level, message): the newest event speaks.
            events: List[Tuple[float, bytes, str]] = []
            if self._failure:
                events.append((self._failure[0], DiagnosticStatus.ERROR,
                               f'backend failed: {self._failure[1]}'))
            if self._over is not None:
                when, count = self._over
                if count >= SUSTAINED_FRAMES:
                    events.append((when, DiagnosticStatus.ERROR, (
                        f'over latency budget on the last {count} frames: last frame '
                        f'{self._last_node_ms:.1f} ms > {self.budget_ms:g} ms')))
                else:
                    events.append((when, DiagnosticStatus.WARN, (
                        f'over latency budget: last frame {self._last_node_ms:.1f} ms > '
                        f'{self.budget_ms:g} ms')))
            if self._rejection and now - self._rejection[0] <= RECENT_S and (
                    not self._failure or self._rejection[0] > self._failure[0]):
                events.append((self._rejection[0], DiagnosticStatus.WARN,
                               f'rejected frame: {self._rejection[1]}'))
            if self._last_image is not None and now - self._last_image > RECENT_S:
                events.append((self._last_image + RECENT_S, DiagnosticStatus.WARN,
                               f'no image for {now - self._last_image:.1f} s on {self.topic}'
                               f'; publishers seen: {publishers}'))
            if events:
                _, level, message = max(events, key=lambda event: event[0])
                return level, message
            return DiagnosticStatus.OK, f'segmenting at {self._rate_hz:.1f} Hz'

    def status(self, now: float, counters: FrameCounters, name: str, hardware_id: str,
               fixed: Iterable[Tuple[str, str]] = ()) -> DiagnosticStatus:
        """Return the node's ``DiagnosticStatus`` and restart the output-rate measurement.

        :param fixed: key/values that describe the configuration (model, backend...).
        """
        with self._lock:
            if self._rate_mark is not None and now > self._rate_mark[0]:
                self._rate_hz = (counters.processed - self._rate_mark[1]) / (
                    now - self._rate_mark[0])
            self._rate_mark = (now, counters.processed)
        level, message = self.judge(now, counters)
        values = list(fixed)
        values += [
            ('frames_received', str(counters.received)),
            ('frames_processed', str(counters.processed)),
            ('frames_dropped', str(counters.dropped)),
            ('frames_rejected', str(counters.rejected)),
            ('frames_in_flight', str(counters.in_flight)),
            ('last_rejection_reason', self.last_rejection),
            ('output_rate_hz', f'{self._rate_hz:.2f}'),
            ('latency_budget_ms', f'{self.budget_ms:g}'),
        ]
        with self._lock:
            for topic, count in sorted(self.published.items()):
                values.append((f'{topic}_published', str(count)))
            for series in SERIES:
                summary = self.latency[series].summary()
                for key in [f'p{q}' for q in PERCENTILES] + ['max']:
                    value = summary.get(key)
                    values.append((f'{series}_ms_{key}',
                                   'nan' if value is None else f'{value:.3f}'))
        return DiagnosticStatus(level=level, name=name, message=message,
                                hardware_id=hardware_id,
                                values=[KeyValue(key=k, value=v) for k, v in values])
