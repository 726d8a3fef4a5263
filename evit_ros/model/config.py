"""What an EfficientViT-Seg network is, without PyTorch: its configuration and input sizes.

Kept apart from :mod:`evit_ros.model.efficientvit` so that the registry (and the CLI's
``--help``) need not import torch.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

# The backbone's deepest stage is at 1/32 of the input.
INPUT_MULTIPLE = 32


@dataclass(frozen=True)
class SegConfig:
    """Architecture of one released EfficientViT-Seg model (see the model registry)."""

    series: str                      # 'b' or 'l'
    width_list: Tuple[int, ...]
    depth_list: Tuple[int, ...]
    attn_dim: int
    head_width: int
    head_depth: int
    head_expand: float
    final_expand: Optional[int]
    num_classes: int

    @property
    def act(self) -> str:
        """Activation of the whole network: hswish (B) or tanh-GELU (L)."""
        return 'hswish' if self.series == 'b' else 'gelu'

    @property
    def bn_eps(self) -> float:
        """Return the BatchNorm eps: 1e-5 for B models, 1e-7 for L models (as released)."""
        return 1e-5 if self.series == 'b' else 1e-7

    @property
    def head_in_channels(self) -> Tuple[int, int, int]:
        """Channels of stage4, stage3, stage2, the head's three inputs."""
        return self.width_list[-1], self.width_list[-2], self.width_list[-3]


def check_input_size(height: int, width: int) -> None:
    """Raise ``ValueError`` unless height and width are positive multiples of 32."""
    if height <= 0 or width <= 0 or height % INPUT_MULTIPLE or width % INPUT_MULTIPLE:
        raise ValueError(
            f'network input {height}x{width} is not a multiple of {INPUT_MULTIPLE}: '
            f'EfficientViT-Seg downsamples by 32; use e.g. '
            f'{_round_up(height)}x{_round_up(width)}')


def _round_up(n: int) -> int:
    return max(INPUT_MULTIPLE, (n + INPUT_MULTIPLE - 1) // INPUT_MULTIPLE * INPUT_MULTIPLE)
