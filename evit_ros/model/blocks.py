"""Building blocks of EfficientViT, named so that the official checkpoints load strictly.

Every attribute name here (``conv``, ``norm``, ``act``, ``op_list``, ``main``,
``depth_conv``, ``qkv``, ``aggreg``, ...) is part of the checkpoint format: renaming one
breaks strict loading of the released weights.
"""

from typing import Optional, Sequence, Tuple

import torch
from torch import nn
import torch.nn.functional as F

# Added to the linear-attention denominator; zero in fp16, which is one reason the
# attention always runs in fp32.
ATTENTION_EPS = 1.0e-15


def make_norm(kind: Optional[str], channels: int, eps: float) -> Optional[nn.Module]:
    """Return the normalisation layer called ``kind`` (``"bn2d"`` or ``None``)."""
    if kind is None:
        return None
    if kind == 'bn2d':
        return nn.BatchNorm2d(channels, eps=eps)
    raise ValueError(f'unknown norm {kind!r}; expected "bn2d" or None')


def make_act(kind: Optional[str]) -> Optional[nn.Module]:
    """Return the activation called ``kind`` (``hswish``, ``gelu``, ``relu`` or ``None``)."""
    if kind is None:
        return None
    if kind == 'hswish':
        return nn.Hardswish()
    if kind == 'gelu':
        # The release uses the tanh approximation for the L series.
        return nn.GELU(approximate='tanh')
    if kind == 'relu':
        return nn.ReLU()
    raise ValueError(f'unknown activation {kind!r}; expected hswish, gelu, relu or None')


def _triple(value, n: int) -> tuple:
    """Broadcast a per-block setting to ``n`` per-layer settings."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f'expected {n} values, got {len(value)}')
        return tuple(value)
    return (value,) * n


class ConvLayer(nn.Module):
    """Conv2d ('same' padding) followed by an optional norm and an optional activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, groups: int = 1, bias: bool = False,
                 norm: Optional[str] = 'bn2d', act: Optional[str] = None,
                 eps: float = 1e-5):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=kernel_size // 2, groups=groups, bias=bias)
        self.norm = make_norm(norm, out_channels, eps)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.act is not None:
            x = self.act(x)
        return x


class OpSequential(nn.Module):
    """Run the non-empty modules in order (kept in ``op_list``, as the release does)."""

    def __init__(self, ops: Sequence[Optional[nn.Module]]):
        super().__init__()
        self.op_list = nn.ModuleList([op for op in ops if op is not None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.op_list:
            x = op(x)
        return x


class Residual(nn.Module):
    """``main(x) + x`` with an identity shortcut, or plain ``main(x)`` without one."""

    def __init__(self, main: nn.Module, shortcut: bool = True):
        super().__init__()
        self.main = main
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut:
            return self.main(x) + x
        return self.main(x)


class DSConv(nn.Module):
    """Depthwise-separable convolution: ``depth_conv`` (kxk) then ``point_conv`` (1x1)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 bias=False, norm='bn2d', act=('hswish', None), eps: float = 1e-5):
        super().__init__()
        bias, norm, act = _triple(bias, 2), _triple(norm, 2), _triple(act, 2)
        self.depth_conv = ConvLayer(in_channels, in_channels, 3, stride, groups=in_channels,
                                    bias=bias[0], norm=norm[0], act=act[0], eps=eps)
        self.point_conv = ConvLayer(in_channels, out_channels, 1, bias=bias[1],
                                    norm=norm[1], act=act[1], eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(x))


class MBConv(nn.Module):
    """Inverted bottleneck: 1x1 expand, depthwise 3x3 (carries the stride), 1x1 project."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 expand_ratio: float = 4, bias=False, norm='bn2d',
                 act=('hswish', 'hswish', None), eps: float = 1e-5):
        super().__init__()
        bias, norm, act = _triple(bias, 3), _triple(norm, 3), _triple(act, 3)
        mid = round(in_channels * expand_ratio)
        self.inverted_conv = ConvLayer(in_channels, mid, 1, bias=bias[0], norm=norm[0],
                                       act=act[0], eps=eps)
        self.depth_conv = ConvLayer(mid, mid, 3, stride, groups=mid, bias=bias[1],
                                    norm=norm[1], act=act[1], eps=eps)
        self.point_conv = ConvLayer(mid, out_channels, 1, bias=bias[2], norm=norm[2],
                                    act=act[2], eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(self.inverted_conv(x)))


class FusedMBConv(nn.Module):
    """Fused inverted bottleneck: full 3x3 ``spatial_conv`` to the wide width, 1x1 project."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 expand_ratio: float = 4, bias=False, norm='bn2d',
                 act=('gelu', None), eps: float = 1e-5):
        super().__init__()
        bias, norm, act = _triple(bias, 2), _triple(norm, 2), _triple(act, 2)
        mid = round(in_channels * expand_ratio)
        self.spatial_conv = ConvLayer(in_channels, mid, 3, stride, bias=bias[0],
                                      norm=norm[0], act=act[0], eps=eps)
        self.point_conv = ConvLayer(mid, out_channels, 1, bias=bias[1], norm=norm[1],
                                    act=act[1], eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.spatial_conv(x))


class ResBlock(nn.Module):
    """Two full 3x3 convolutions, ``conv1`` then ``conv2`` (the L-series stem)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 expand_ratio: float = 1, bias=False, norm='bn2d',
                 act=('gelu', None), eps: float = 1e-5):
        super().__init__()
        bias, norm, act = _triple(bias, 2), _triple(norm, 2), _triple(act, 2)
        mid = round(in_channels * expand_ratio)
        self.conv1 = ConvLayer(in_channels, mid, 3, stride, bias=bias[0], norm=norm[0],
                               act=act[0], eps=eps)
        self.conv2 = ConvLayer(mid, out_channels, 3, bias=bias[1], norm=norm[1],
                               act=act[1], eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


def relu_linear_attention(qkv: torch.Tensor, dim: int,
                          eps: float = ATTENTION_EPS) -> torch.Tensor:
    """Compute ReLU linear attention over head-major ``[q | k | v]`` channels, computed in fp32.

    :param qkv: ``(B, heads * 3 * dim, H, W)`` tensor, each head owning ``3 * dim``
        consecutive channels laid out as q, k, v.
    :param dim: channels per head.
    :param eps: added to the denominator.
    :returns: ``(B, heads * dim, H, W)`` in fp32.
    """
    batch, _, height, width = qkv.shape
    # Sums over thousands of tokens overflow fp16 and eps underflows to zero there, so
    # the whole computation is done in fp32 whatever the caller's dtype or autocast.
    with torch.autocast(device_type=qkv.device.type, enabled=False):
        qkv = qkv.float().reshape(batch, -1, 3 * dim, height * width)
        q = F.relu(qkv[:, :, :dim])
        k = F.relu(qkv[:, :, dim:2 * dim])
        v = qkv[:, :, 2 * dim:]
        # A row of ones under v gives the denominator from the same matmuls.
        v = F.pad(v, (0, 0, 0, 1), mode='constant', value=1.0)
        vk = torch.matmul(v, k.transpose(-1, -2))
        out = torch.matmul(vk, q)
        out = out[:, :, :-1] / (out[:, :, -1:] + eps)
        return out.reshape(batch, -1, height, width)


def relu_quadratic_attention(qkv: torch.Tensor, dim: int,
                             eps: float = ATTENTION_EPS) -> torch.Tensor:
    """Quadratic form of the same attention, used by the release when H*W <= dim."""
    batch, _, height, width = qkv.shape
    with torch.autocast(device_type=qkv.device.type, enabled=False):
        qkv = qkv.float().reshape(batch, -1, 3 * dim, height * width)
        q = F.relu(qkv[:, :, :dim])
        k = F.relu(qkv[:, :, dim:2 * dim])
        v = qkv[:, :, 2 * dim:]
        weights = torch.matmul(k.transpose(-1, -2), q)
        weights = weights / (weights.sum(dim=2, keepdim=True) + eps)
        out = torch.matmul(v, weights)
        return out.reshape(batch, -1, height, width)


class LiteMLA(nn.Module):
    """Lightweight multi-scale linear attention (Cai et al., ICCV 2023)."""

    def __init__(self, in_channels: int, out_channels: int, dim: int = 32,
                 scales: Tuple[int, ...] = (5,), norm: str = 'bn2d', eps: float = 1e-5):
        super().__init__()
        heads = in_channels // dim
        total = heads * dim
        self.dim = dim
        self.qkv = ConvLayer(in_channels, 3 * total, 1, norm=None, act=None)
        self.aggreg = nn.ModuleList([
            nn.Sequential(
                nn.Conv2d(3 * total, 3 * total, scale, padding=scale // 2, groups=3 * total,
                          bias=False),
                nn.Conv2d(3 * total, 3 * total, 1, groups=3 * heads, bias=False),
            )
            for scale in scales
        ])
        self.proj = ConvLayer(total * (1 + len(scales)), out_channels, 1, norm=norm,
                              act=None, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        qkv = torch.cat([qkv] + [op(qkv) for op in self.aggreg], dim=1)
        height, width = qkv.shape[-2:]
        if height * width > self.dim:
            out = relu_linear_attention(qkv, self.dim)
        else:
            out = relu_quadratic_attention(qkv, self.dim)
        return self.proj(out.to(x.dtype))


class EfficientViTBlock(nn.Module):
    """Residual LiteMLA (``context_module``) then a residual MBConv (``local_module``)."""

    def __init__(self, channels: int, dim: int = 32, expand_ratio: float = 4,
                 act: str = 'hswish', eps: float = 1e-5):
        super().__init__()
        self.context_module = Residual(LiteMLA(channels, channels, dim=dim, eps=eps))
        self.local_module = Residual(MBConv(
            channels, channels, expand_ratio=expand_ratio, bias=(True, True, False),
            norm=(None, None, 'bn2d'), act=(act, act, None), eps=eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_module(self.context_module(x))


class Upsample(nn.Module):
    """Bicubic upsampling by an integer factor, computed in fp32 like the release."""

    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.interpolate(x.float(), scale_factor=self.factor, mode='bicubic',
                            align_corners=False)
        return out.to(x.dtype)
