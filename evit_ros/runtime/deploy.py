"""The deployment form of a model: the same function, rewritten to run fast once exported.

Two rewrites, both exact up to float rounding (the export checks them against the
original model):

- BatchNorm folded into the convolution before it (:func:`evit_ros.model.fold_batchnorm`).
- The head's bicubic upsampling as two constant matrix products. For a fixed input size,
  bicubic resizing along each axis is a matrix; ``rows @ x @ cols`` costs a few million
  multiply-adds where ONNX Runtime's cubic ``Resize`` kernel took half of B0's CPU time,
  and it avoids ``Resize(mode=cubic)``, which old TensorRT parsers reject.
"""

import copy
from typing import List, Tuple

import torch
from torch import nn

from evit_ros.model import check_input_size, fold_batchnorm
from evit_ros.model.blocks import Upsample
from evit_ros.runtime.bicubic import bicubic_matrix

UPSAMPLE_MODES = ('matmul', 'resize')


class MatmulUpsample(nn.Module):
    """Bicubic upsampling of a fixed ``h x w`` map as ``rows @ x @ cols`` (fp32)."""

    def __init__(self, in_size: Tuple[int, int], out_size: Tuple[int, int]):
        super().__init__()
        rows = bicubic_matrix(in_size[0], out_size[0])
        cols = bicubic_matrix(in_size[1], out_size[1]).T
        self.register_buffer('rows', torch.from_numpy(rows).float())
        self.register_buffer('cols', torch.from_numpy(cols.copy()).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.matmul(torch.matmul(self.rows, x.float()), self.cols)
        return out.to(x.dtype)


def deployment_model(model: nn.Module, input_size: Tuple[int, int], fold: bool = True,
                     upsample: str = 'matmul') -> nn.Module:
    """Return an eval-mode copy of ``model`` rewritten for a fixed ``(height, width)`` input.

    :param fold: fold BatchNorm into the convolutions.
    :param upsample: ``matmul`` replaces each bicubic :class:`Upsample` by
        :class:`MatmulUpsample`; ``resize`` keeps it (ONNX ``Resize``, as the release).
    :raises ValueError: for an input size that is not a multiple of 32 or a bad mode.
    """
    if upsample not in UPSAMPLE_MODES:
        raise ValueError(f'upsample must be one of {", ".join(UPSAMPLE_MODES)}, '
                         f'got {upsample!r}')
    check_input_size(*input_size)
    out = fold_batchnorm(model) if fold else copy.deepcopy(model).eval()
    if upsample == 'matmul':
        for parent, name, in_size, factor in _upsample_sites(out, input_size):
            size = (in_size[0] * factor, in_size[1] * factor)
            setattr(parent, name, MatmulUpsample(in_size, size))
    return out


def _upsample_sites(model: nn.Module, input_size: Tuple[int, int]) -> List[tuple]:
    """Find every :class:`Upsample` with the spatial size it sees at ``input_size``."""
    seen = {}
    hooks = [module.register_forward_hook(
        lambda mod, args, _out: seen.__setitem__(id(mod), tuple(args[0].shape[-2:])))
        for module in model.modules() if isinstance(module, Upsample)]
    try:
        param = next(model.parameters())
        with torch.inference_mode():
            model(torch.zeros(1, 3, *input_size, dtype=param.dtype, device=param.device))
    finally:
        for hook in hooks:
            hook.remove()
    sites = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, Upsample) and id(child) in seen:
                sites.append((parent, name, seen[id(child)], child.factor))
    return sites
