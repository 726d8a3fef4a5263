"""Deliberate backend faults for testing a deployment's fault handling.

Set ``EVIT_ROS_FAULT_INJECTION`` to make backends fail on purpose, e.g. to check on the
robot that the node reports ERROR and falls back to the next backend::

    EVIT_ROS_FAULT_INJECTION=backend_raise_after:100              # every backend
    EVIT_ROS_FAULT_INJECTION=backend_raise_after:100:onnxruntime  # that backend only

Each backend built while it is set (and matching the optional name) runs ``N`` frames
normally, then raises :class:`InjectedFault` on every later frame. Unset (the default),
nothing is wrapped. A backend built with a fault armed logs one WARNING saying so.
"""

import logging
import os
from typing import Optional, Tuple

import numpy as np
import torch

from evit_ros.runtime.backends import Backend

LOG = logging.getLogger('evit_ros.runtime')
#: the environment variable read when a backend is built.
VARIABLE = 'EVIT_ROS_FAULT_INJECTION'
_KIND = 'backend_raise_after'


class InjectedFault(RuntimeError):
    """The failure :data:`VARIABLE` asked for."""


def parse(spec: str) -> Optional[Tuple[int, str]]:
    """Return ``(frames, backend name or '')`` for a spec, ``None`` for an empty one.

    :raises ValueError: for a spec that is not ``backend_raise_after:N[:BACKEND]``.
    """
    spec = spec.strip()
    if not spec:
        return None
    parts = spec.split(':')
    if parts[0] != _KIND or len(parts) not in (2, 3) or not parts[1].isdigit():
        raise ValueError(f'{VARIABLE}={spec!r} is not understood; use {_KIND}:N or '
                         f'{_KIND}:N:BACKEND (N frames before the backend raises), or unset it')
    return int(parts[1]), parts[2] if len(parts) == 3 else ''


def armed(backend: Backend) -> Backend:
    """Return ``backend``, wrapped in a :class:`FaultyBackend` when :data:`VARIABLE` asks.

    :raises ValueError: when the variable holds a spec that is not understood.
    """
    fault = parse(os.environ.get(VARIABLE, ''))
    if fault is None or (fault[1] and fault[1] != backend.name):
        return backend
    LOG.warning('%s: %s on %s will raise after %d frames', VARIABLE, backend.name,
                backend.device, fault[0])
    return FaultyBackend(backend, fault[0])


class FaultyBackend(Backend):
    """A backend that runs ``frames`` frames on ``inner``, then raises on every call.

    Everything else (``name``, ``device``, ``precision``, ``postprocess``...) is the inner
    backend's.
    """

    def __init__(self, inner: Backend, frames: int):
        self.inner = inner
        self.frames = frames
        self.calls = 0

    def __getattr__(self, name: str):
        if name == 'inner':
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def name(self) -> str:
        """The inner backend's name."""
        return self.inner.name

    @property
    def device(self) -> str:
        """The inner backend's device."""
        return self.inner.device

    @property
    def precision(self) -> str:
        """The inner backend's precision."""
        return self.inner.precision

    @property
    def input_size(self):
        """The inner backend's network size."""
        return self.inner.input_size

    def infer(self, x: np.ndarray) -> torch.Tensor:
        """Run the inner backend, or raise :class:`InjectedFault` once ``frames`` ran."""
        self.calls += 1
        if self.calls > self.frames:
            raise InjectedFault(f'injected fault ({VARIABLE}={_KIND}:{self.frames}): '
                                f'{self.inner.name} frame {self.calls}')
        return self.inner.infer(x)
