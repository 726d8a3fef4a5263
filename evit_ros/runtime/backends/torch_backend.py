"""PyTorch backend: eager inference on CPU or CUDA, BatchNorm folded, fp32 attention."""

from typing import Tuple

import numpy as np
import torch
from torch import nn

from evit_ros.model import fold_batchnorm
from evit_ros.runtime.backends import Backend, BackendUnavailable

PRECISIONS = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}


class TorchBackend(Backend):
    """Run the model with PyTorch (inference mode, folded BatchNorm)."""

    name = 'torch'

    def __init__(self, model: nn.Module, input_size: Tuple[int, int], device: str = 'cpu',
                 precision: str = 'fp32', fold: bool = True, threads: int = 0):
        super().__init__(input_size, device, precision)
        if precision not in PRECISIONS:
            raise BackendUnavailable(f'torch precision {precision!r} is not one of '
                                     f'{", ".join(PRECISIONS)}')
        if device.startswith('cuda') and not torch.cuda.is_available():
            raise BackendUnavailable('torch: CUDA is not available on this machine')
        if device == 'cpu' and precision == 'fp16':
            raise BackendUnavailable('torch: fp16 needs CUDA; use fp32 on the CPU')
        if device == 'cuda':  # report the GPU that runs, as the other backends do
            self.device = f'cuda:{torch.cuda.current_device()}'
        if threads > 0:
            torch.set_num_threads(threads)
        model = fold_batchnorm(model) if fold else model.eval()
        # The attention inside casts itself to fp32 whatever this dtype is.
        self.model = model.to(device=device, dtype=PRECISIONS[precision])
        self.dtype = PRECISIONS[precision]

    @torch.inference_mode()
    def infer(self, x: np.ndarray) -> torch.Tensor:
        """Return fp32 logits for an ``Nx3xHxW`` preprocessed input (N >= 1)."""
        tensor = torch.from_numpy(x).to(self.device, self.dtype)
        return self.model(tensor).float()
