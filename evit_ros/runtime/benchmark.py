"""Latency of whole ``segment()`` calls, and the machine and libraries they ran on.

Used by ``evit-ros bench`` and the scripts in ``bench/``. Numbers are wall-clock
milliseconds per call (pre- and post-processing included) after a warm-up, reported as
median / p90 / p99; the CPU time per call and the load average are kept beside them, so a
reader can tell a slow pipeline from a busy machine.
"""

import os
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np


@dataclass
class Latency:
    """Per-call latency statistics of one pipeline, in milliseconds."""

    runs: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    cpu_ms: float                  # median process CPU time per call (all threads)
    fps: float                     # 1000 / median
    phases_ms: Dict[str, float] = field(default_factory=dict)   # median per phase

    @classmethod
    def of(cls, wall_ms: List[float], cpu_ms: List[float],
           phases: Optional[Dict[str, List[float]]] = None) -> 'Latency':
        """Summarise per-call wall and CPU times (and optional per-phase times)."""
        wall = np.asarray(wall_ms, dtype=np.float64)
        median = float(np.median(wall))
        return cls(
            runs=len(wall), median_ms=median, p90_ms=float(np.percentile(wall, 90)),
            p99_ms=float(np.percentile(wall, 99)), mean_ms=float(wall.mean()),
            min_ms=float(wall.min()), cpu_ms=float(np.median(cpu_ms)),
            fps=1000.0 / median if median > 0 else float('inf'),
            phases_ms={k: float(np.median(v)) for k, v in (phases or {}).items()})

    def as_dict(self) -> dict:
        """Return the statistics as plain JSON-ready values."""
        return asdict(self)

    def summary(self) -> str:
        """One line: ``median 41.2 ms  p90 …  p99 …  24.3 fps  (cpu 60.1 ms)``."""
        return (f'median {self.median_ms:.1f} ms  p90 {self.p90_ms:.1f}  '
                f'p99 {self.p99_ms:.1f}  {self.fps:.1f} fps  (cpu {self.cpu_ms:.1f} ms/frame, '
                f'{self.runs} runs)')


def time_calls(call: Callable[[], object], runs: int, warmup: int = 3,
               phases: Optional[Callable[[], Dict[str, float]]] = None) -> Latency:
    """Call ``call()`` ``warmup`` times untimed, then ``runs`` times timed.

    :param phases: called after each timed call; returns that call's ``{phase: ms}``
        (e.g. a Segmenter's timings) to report medians per phase.
    """
    if runs < 1:
        raise ValueError(f'runs must be >= 1, got {runs}')
    for _ in range(max(0, warmup)):
        call()
    wall, cpu, per_phase = [], [], {}
    for _ in range(runs):
        start_cpu, start = time.process_time(), time.perf_counter()
        call()
        wall.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
        for name, value in (phases() if phases else {}).items():
            per_phase.setdefault(name, []).append(value)
    return Latency.of(wall, cpu, per_phase)


def segmenter_phases(segmenter) -> Dict[str, float]:
    """Return the last ``segment()`` call's phase timings in ms."""
    t = segmenter.timings
    return {'preprocess': t.preprocess_ms, 'inference': t.inference_ms,
            'postprocess': t.postprocess_ms}


def cpu_model() -> str:
    """Return the CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform``)."""
    try:
        with open('/proc/cpuinfo') as handle:
            for line in handle:
                if line.lower().startswith(('model name', 'hardware', 'cpu model')):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """Return what the numbers were measured on: CPU, cores, OS, load average."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    info = {'cpu': cpu_model(), 'arch': platform.machine(), 'cores_available': cores,
            'os': f'{platform.system()} {platform.release()}',
            'python': platform.python_version(), 'load_average_1_5_15': load}
    try:
        import torch
        info['torch_threads'] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def library_versions() -> Dict[str, str]:
    """Return versions of the libraries on the inference path (absent ones omitted)."""
    import importlib
    versions = {}
    for name in ('evit_ros', 'torch', 'onnxruntime', 'onnx', 'numpy', 'cv2', 'tensorrt'):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        versions[name] = str(getattr(module, '__version__', '?'))
    return versions


def synthetic_frame(height: int = 1024, width: int = 2048, seed: int = 0) -> np.ndarray:
    """Return a deterministic street-like RGB frame (sky, facades, road) for timing.

    Used when no real frame is at hand; post-processing cost depends on how many class
    boundaries a frame has, so a real frame is preferable.
    """
    import cv2
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), np.uint8)
    image[: height // 3] = (135, 180, 235)
    image[height // 3: 2 * height // 3] = (120, 110, 100)
    image[2 * height // 3:] = (90, 90, 95)
    for _ in range(40):
        x, y = int(rng.integers(0, width)), int(rng.integers(height // 4, height))
        w, h = int(rng.integers(width // 40, width // 8)), int(rng.integers(height // 20,
                                                                            height // 4))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.rectangle(image, (x, y), (x + w, y + h), color, -1)
    noise = rng.integers(-12, 13, image.shape, dtype=np.int16)
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
