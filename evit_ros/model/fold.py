"""Deployment form of a model: BatchNorm folded into the convolution before it."""

import copy

import torch
from torch import nn

from evit_ros.model.blocks import ConvLayer


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Return an eval-mode copy of ``model`` with every ``conv -> BatchNorm`` pair fused.

    The copy computes the same function (to float rounding) with fewer kernels; its
    state dict no longer matches the checkpoint format, so fold after loading weights.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, ConvLayer) and isinstance(module.norm, nn.BatchNorm2d):
            module.conv = _fuse(module.conv, module.norm)
            module.norm = None
    return folded


def _fuse(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    # Fold in fp32 (eps = 1e-7 of the L models is below bf16/fp16 resolution near 1), then
    # keep the conv's own device and dtype so a model on CUDA or in half stays there.
    work = torch.promote_types(conv.weight.dtype, torch.float32)
    weight = conv.weight.to(work)
    scale = norm.weight.to(work) / torch.sqrt(norm.running_var.to(work) + norm.eps)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, conv.dilation, conv.groups, bias=True,
                      padding_mode=conv.padding_mode, device=weight.device,
                      dtype=conv.weight.dtype)
    fused.weight.copy_(weight * scale.reshape(-1, 1, 1, 1))
    bias = conv.bias.to(work) if conv.bias is not None else torch.zeros_like(scale)
    fused.bias.copy_((bias - norm.running_mean.to(work)) * scale + norm.bias.to(work))
    return fused
