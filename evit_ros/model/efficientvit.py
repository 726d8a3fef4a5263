"""EfficientViT-Seg networks: B- and L-series backbones and the segmentation head."""

from typing import Dict

import torch
from torch import nn

from evit_ros.model.blocks import (
    ConvLayer, DSConv, EfficientViTBlock, FusedMBConv, MBConv, OpSequential, ResBlock,
    Residual, Upsample)
from evit_ros.model.config import check_input_size, INPUT_MULTIPLE, SegConfig

# Logits come out at 1/8 of the input.
HEAD_STRIDE = 8

__all__ = ['check_input_size', 'EfficientViTSeg', 'HEAD_STRIDE', 'INPUT_MULTIPLE', 'SegConfig']


class BackboneB(nn.Module):
    """EfficientViT B-series backbone: ``input_stem`` and four ``stages``."""

    def __init__(self, cfg: SegConfig):
        super().__init__()
        w, d, act, eps = cfg.width_list, cfg.depth_list, cfg.act, cfg.bn_eps
        stem = [ConvLayer(3, w[0], 3, stride=2, act=act, eps=eps)]
        stem += [Residual(DSConv(w[0], w[0], act=(act, None), eps=eps)) for _ in range(d[0])]
        self.input_stem = OpSequential(stem)

        stages = []
        channels = w[0]
        for width, depth in zip(w[1:3], d[1:3]):
            blocks = []
            for i in range(depth):
                stride = 2 if i == 0 else 1
                blocks.append(Residual(
                    MBConv(channels, width, stride, 4, act=(act, act, None), eps=eps),
                    shortcut=stride == 1))
                channels = width
            stages.append(OpSequential(blocks))
        for width, depth in zip(w[3:], d[3:]):
            blocks = [Residual(_fewer_norm_mbconv(channels, width, 2, 4, act, eps),
                               shortcut=False)]
            channels = width
            blocks += [EfficientViTBlock(channels, cfg.attn_dim, 4, act, eps)
                       for _ in range(depth)]
            stages.append(OpSequential(blocks))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = {'stage0': self.input_stem(x)}
        x = features['stage0']
        for i, stage in enumerate(self.stages, 1):
            x = features[f'stage{i}'] = stage(x)
        return features


class BackboneL(nn.Module):
    """EfficientViT L-series backbone: five ``stages``, attention only in the last."""

    def __init__(self, cfg: SegConfig):
        super().__init__()
        w, d, act, eps = cfg.width_list, cfg.depth_list, cfg.act, cfg.bn_eps
        stem = [ConvLayer(3, w[0], 3, stride=2, act=act, eps=eps)]
        stem += [Residual(ResBlock(w[0], w[0], act=(act, None), eps=eps)) for _ in range(d[0])]
        stages = [OpSequential(stem)]
        channels = w[0]
        for stage_id in (1, 2):
            width = w[stage_id]
            blocks = [Residual(FusedMBConv(channels, width, 2, 16, act=(act, None), eps=eps),
                               shortcut=False)]
            blocks += [Residual(FusedMBConv(width, width, 1, 4, act=(act, None), eps=eps))
                       for _ in range(d[stage_id])]
            stages.append(OpSequential(blocks))
            channels = width
        width = w[3]
        blocks = [Residual(_fewer_norm_mbconv(channels, width, 2, 16, act, eps), shortcut=False)]
        blocks += [Residual(_fewer_norm_mbconv(width, width, 1, 4, act, eps))
                   for _ in range(d[3])]
        stages.append(OpSequential(blocks))
        channels = width
        width = w[4]
        blocks = [Residual(_fewer_norm_mbconv(channels, width, 2, 24, act, eps), shortcut=False)]
        blocks += [EfficientViTBlock(width, cfg.attn_dim, 6, act, eps) for _ in range(d[4])]
        stages.append(OpSequential(blocks))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = {}
        for i, stage in enumerate(self.stages):
            x = features[f'stage{i}'] = stage(x)
        return features


def _fewer_norm_mbconv(in_ch: int, out_ch: int, stride: int, expand: float, act: str,
                       eps: float) -> MBConv:
    """Build an MBConv with biases on the first two convs and BatchNorm only on the last."""
    return MBConv(in_ch, out_ch, stride, expand, bias=(True, True, False),
                  norm=(None, None, 'bn2d'), act=(act, act, None), eps=eps)


class SegHead(nn.Module):
    """Fuse stage4/3/2 at stride 8, refine with ``middle`` blocks, classify per pixel."""

    def __init__(self, cfg: SegConfig):
        super().__init__()
        act, eps, width = cfg.act, cfg.bn_eps, cfg.head_width
        c4, c3, c2 = cfg.head_in_channels
        self.input_ops = nn.ModuleList([
            OpSequential([ConvLayer(c4, width, 1, eps=eps), Upsample(4)]),
            OpSequential([ConvLayer(c3, width, 1, eps=eps), Upsample(2)]),
            ConvLayer(c2, width, 1, eps=eps),
        ])
        if cfg.series == 'b':
            middle = [Residual(MBConv(width, width, 1, cfg.head_expand, act=(act, act, None),
                                      eps=eps)) for _ in range(cfg.head_depth)]
        else:
            middle = [Residual(FusedMBConv(width, width, 1, cfg.head_expand, act=(act, None),
                                           eps=eps)) for _ in range(cfg.head_depth)]
        self.middle = OpSequential(middle)
        expanded = width * (cfg.final_expand or 1)
        self.output_ops = nn.ModuleList([OpSequential([
            None if cfg.final_expand is None
            else ConvLayer(width, expanded, 1, act=act, eps=eps),
            ConvLayer(expanded, cfg.num_classes, 1, bias=True, norm=None),
        ])])

    def forward(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        names = ('stage4', 'stage3', 'stage2')
        x = sum(op(features[name]) for op, name in zip(self.input_ops, names))
        return self.output_ops[0](self.middle(x))


class EfficientViTSeg(nn.Module):
    """EfficientViT-Seg: ``(B, 3, H, W)`` normalised RGB -> ``(B, classes, H/8, W/8)`` logits."""

    def __init__(self, cfg: SegConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = BackboneB(cfg) if cfg.series == 'b' else BackboneL(cfg)
        self.head = SegHead(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x.shape[-2], x.shape[-1])
        return self.head(self.backbone(x))
