"""Node health for ``/diagnostics``: latency percentiles, frame counters and the status level.

Levels, as the node reports them:

* OK, ``waiting for first image on <topic>`` before any frame arrived;
* OK, ``segmenting at <rate> Hz`` while frames flow within the budget;
* WARN when the last frame's node latency (image received to outputs published) exceeded
  ``latency_budget_ms``, when a frame was rejected in the last :data:`RECENT_S` seconds
  (the message names the reason), or when no image arrived for :data:`RECENT_S` seconds;
* ERROR when every frame for :data:`SUSTAINED_S` seconds was over budget, or when the
  backend failed on the last frame.

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
SUSTAINED_S = 5.0      # over budget this long -> ERROR
RECENT_S = 5.0         # a rejection this recent -> WARN; no image this long -> WARN


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
    """

    def __init__(self, budget_ms: float, topic: str = '~/image'):
        self.budget_ms = budget_ms
        self.topic = topic
        self.latency = {name: LatencyWindow() for name in SERIES}
        self.published: Dict[str, int] = {}
        self._lock = threading.Lock()
        self._over_since: Optional[float] = None
        self._last_node_ms = 0.0
        self._last_image: Optional[float] = None
        self._rejection: Optional[Tuple[float, str]] = None
        self._failure: Optional[str] = None
        self._rate_mark: Optional[Tuple[float, int]] = None
        self._rate_hz = 0.0

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
                if self._over_since is None:
                    self._over_since = now
            else:
                self._over_since = None
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
        """Record a backend failure; ERROR until a frame succeeds again."""
        with self._lock:
            self._failure = reason
            self._rejection = (now, reason)

    @property
    def last_rejection(self) -> str:
        """The most recent rejection reason, or ``''``."""
        with self._lock:
            return self._rejection[1] if self._rejection else ''

    def judge(self, now: float, counters: FrameCounters) -> Tuple[bytes, str]:
        """Return ``(level, message)`` for the current state (see the module docstring)."""
        with self._lock:
            if self._failure:
                return DiagnosticStatus.ERROR, f'backend failed: {self._failure}'
            if counters.received == 0:
                return DiagnosticStatus.OK, f'waiting for first image on {self.topic}'
            if self._over_since is not None and now - self._over_since >= SUSTAINED_S:
                return DiagnosticStatus.ERROR, (
                    f'over latency budget for {now - self._over_since:.1f} s: last frame '
                    f'{self._last_node_ms:.1f} ms > {self.budget_ms:g} ms')
            problems: List[str] = []
            if self._over_since is not None:
                problems.append(f'over latency budget: last frame {self._last_node_ms:.1f} ms '
                                f'> {self.budget_ms:g} ms')
            if self._rejection and now - self._rejection[0] <= RECENT_S:
                problems.append(f'rejected frame: {self._rejection[1]}')
            if self._last_image is not None and now - self._last_image > RECENT_S:
                problems.append(f'no image for {now - self._last_image:.1f} s on {self.topic}')
            if problems:
                return DiagnosticStatus.WARN, '; '.join(problems)
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
