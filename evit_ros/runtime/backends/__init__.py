"""Inference backends behind the Segmenter: each turns a network input into logits.

A backend is built from a loaded PyTorch model (the source of truth for weights) and a
network size, and exposes ``infer(x) -> logits`` on ``1x3xHxW`` float32 numpy input.
"""

from typing import Tuple

import numpy as np
import torch


class BackendUnavailable(RuntimeError):
    """The backend cannot run on this machine; the message says why."""


class Backend:
    """Interface of an inference backend."""

    #: backend name as selected by users (``torch``, ``onnxruntime``, ``tensorrt``).
    name = 'base'

    def __init__(self, input_size: Tuple[int, int], device: str = 'cpu',
                 precision: str = 'fp32'):
        self.input_size = tuple(input_size)
        self.device = device
        self.precision = precision

    def infer(self, x: np.ndarray) -> torch.Tensor:
        """Run the network on ``x`` (``1x3xHxW`` float32) and return ``1xCxH/8xW/8`` logits."""
        raise NotImplementedError
