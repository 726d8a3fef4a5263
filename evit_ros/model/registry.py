"""The model registry: one table of every released EfficientViT-Seg model.

Code, CLI, docs and tests all read this table. Figures are the release's own: mIoU on the
data set's val split and TensorRT fp16 latency (batch 1) on Jetson AGX Orin.
"""

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from evit_ros.model.classes import DATASETS
from evit_ros.model.config import SegConfig

CHECKPOINT_URL = 'https://huggingface.co/han-cai/efficientvit-seg/resolve/main/{file}'
RELEASE_PREFIX = 'efficientvit-seg-'


@dataclass(frozen=True)
class ModelEntry:
    """Everything known about one released model."""

    name: str
    config: SegConfig
    dataset: str
    input_size: Tuple[int, int]        # default network (height, width)
    published_miou: float
    orin_latency_ms: float             # TensorRT fp16 on Jetson AGX Orin, as published
    checkpoint_sha256: Optional[str] = None
    checkpoint_bytes: Optional[int] = None

    @property
    def release_name(self) -> str:
        """Name used by the EfficientViT release, e.g. ``efficientvit-seg-b0-cityscapes``."""
        return RELEASE_PREFIX + self.name

    @property
    def checkpoint_file(self) -> str:
        """File name of the official checkpoint."""
        variant, dataset = self.name.split('-')
        return f'efficientvit_seg_{variant}_{dataset}.pt'

    @property
    def checkpoint_url(self) -> str:
        """HTTPS address of the official checkpoint."""
        return CHECKPOINT_URL.format(file=self.checkpoint_file)

    @property
    def class_names(self) -> Tuple[str, ...]:
        """Class names in label order."""
        return DATASETS[self.dataset][0]

    @property
    def palette(self) -> Tuple[Tuple[int, int, int], ...]:
        """RGB colour per class, in label order."""
        return DATASETS[self.dataset][1]

    @property
    def num_classes(self) -> int:
        """Number of output classes."""
        return self.config.num_classes


_B0 = (8, 16, 32, 64, 128), (1, 2, 2, 2, 2)
_B1 = (16, 32, 64, 128, 256), (1, 2, 3, 3, 4)
_B2 = (24, 48, 96, 192, 384), (1, 3, 4, 4, 6)
_B3 = (32, 64, 128, 256, 512), (1, 4, 6, 6, 9)
_L1 = (32, 64, 128, 256, 512), (1, 1, 1, 6, 6)
_L2 = (32, 64, 128, 256, 512), (1, 2, 2, 8, 8)
_CITY = (1024, 2048)
_ADE = (512, 512)


def _entry(name, series, arch, attn_dim, head_width, head_depth, head_expand, final_expand,
           published_miou, orin_ms, sha256=None, size=None) -> ModelEntry:
    dataset = name.split('-')[1]
    classes = len(DATASETS[dataset][0])
    cfg = SegConfig(series, arch[0], arch[1], attn_dim, head_width, head_depth, head_expand,
                    final_expand, classes)
    return ModelEntry(name, cfg, dataset, _CITY if dataset == 'cityscapes' else _ADE,
                      published_miou, orin_ms, sha256, size)


#: name -> entry, in the release's order.
MODELS: Dict[str, ModelEntry] = {e.name: e for e in (
    _entry('b0-cityscapes', 'b', _B0, 16, 32, 1, 4, 4, 75.653, 9.9,
           '923d6fdd5e93640cc0c2f3f213764f34e80b477cd98a6b294d870ea6df5acc50', 2924013),
    _entry('b1-cityscapes', 'b', _B1, 16, 64, 3, 4, 4, 80.547, 24.3),
    _entry('b2-cityscapes', 'b', _B2, 32, 96, 3, 4, 4, 82.073, 46.5),
    _entry('b3-cityscapes', 'b', _B3, 32, 128, 3, 4, 4, 83.016, 81.8),
    _entry('l1-cityscapes', 'l', _L1, 32, 256, 3, 1, None, 82.716, 45.9),
    _entry('l2-cityscapes', 'l', _L2, 32, 256, 5, 1, None, 83.228, 60.0),
    _entry('b1-ade20k', 'b', _B1, 16, 64, 3, 4, None, 42.840, 4.0),
    _entry('b2-ade20k', 'b', _B2, 32, 96, 3, 4, None, 45.941, 7.3),
    _entry('b3-ade20k', 'b', _B3, 32, 128, 3, 4, None, 49.013, 12.5),
    _entry('l1-ade20k', 'l', _L1, 32, 128, 3, 4, 8, 49.191, 7.2),
    _entry('l2-ade20k', 'l', _L2, 32, 128, 3, 4, 8, 50.702, 9.0),
)}


class UnknownModelError(KeyError):
    """Raised for a model name that is not in the registry."""

    def __str__(self) -> str:
        return self.args[0]


def get_entry(name: str) -> ModelEntry:
    """Look up a model by our name (``b0-cityscapes``) or the release's (``efficientvit-seg-…``).

    :raises UnknownModelError: naming the valid models.
    """
    key = name.strip().lower()
    if key.startswith(RELEASE_PREFIX):
        key = key[len(RELEASE_PREFIX):]
    if key not in MODELS:
        raise UnknownModelError(
            f'unknown model {name!r}; valid models: {", ".join(MODELS)} '
            f'(the release names {RELEASE_PREFIX}<model> work too)')
    return MODELS[key]
