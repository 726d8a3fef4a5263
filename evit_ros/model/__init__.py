"""EfficientViT-Seg in PyTorch, loading the official checkpoints strictly.

>>> from evit_ros.model import create_model
>>> model = create_model('b0-cityscapes', weights='official')

The registry, the configurations and :func:`check_input_size` import without torch; the
PyTorch parts load on first use, so that tools reading only the registry (``evit-ros
--help``) start at once.
"""

import importlib
import os
from typing import Optional, TYPE_CHECKING, Union

from evit_ros.model.config import check_input_size, SegConfig
from evit_ros.model.registry import get_entry, ModelEntry, MODELS, UnknownModelError

if TYPE_CHECKING:  # pragma: no cover - names for type checkers only
    from torch import nn

    from evit_ros.model.checkpoint import CheckpointError
    from evit_ros.model.efficientvit import EfficientViTSeg
    from evit_ros.model.fold import fold_batchnorm

# Names served from modules that import torch, loaded when first asked for (PEP 562).
_TORCH_NAMES = {
    'CheckpointError': 'evit_ros.model.checkpoint',
    'EfficientViTSeg': 'evit_ros.model.efficientvit',
    'fold_batchnorm': 'evit_ros.model.fold',
}


def __getattr__(name: str):
    """Load the PyTorch parts of the package on first use."""
    if name in _TORCH_NAMES:
        value = getattr(importlib.import_module(_TORCH_NAMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


__all__ = [
    'CheckpointError', 'check_input_size', 'create_model', 'EfficientViTSeg', 'fold_batchnorm',
    'get_entry', 'load_checkpoint', 'ModelEntry', 'MODELS', 'SegConfig', 'UnknownModelError',
]

OFFICIAL = 'official'


def create_model(name: str, weights: Union[None, str, os.PathLike] = None,
                 num_classes: Optional[int] = None) -> 'EfficientViTSeg':
    """Build a released EfficientViT-Seg model, optionally with weights, in eval mode.

    :param name: a registry name (``b0-cityscapes``) or the release's
        (``efficientvit-seg-b0-cityscapes``).
    :param weights: ``None`` for random initialisation, ``"official"`` for the official
        checkpoint found on this machine (verified by sha256), or a checkpoint path.
    :param num_classes: replace the classifier's class count (for fine-tuning); ``None``
        keeps the release's.
    :raises UnknownModelError: for a name not in the registry.
    :raises CheckpointError: for an unreadable or mismatched checkpoint.
    :raises evit_ros.weights.WeightsNotFound: when ``"official"`` weights are not here.
    """
    from evit_ros.model.efficientvit import EfficientViTSeg
    entry = get_entry(name)
    cfg = entry.config
    if num_classes is not None:
        if num_classes < 1:
            raise ValueError(f'num_classes must be >= 1, got {num_classes}')
        cfg = SegConfig(**{**cfg.__dict__, 'num_classes': num_classes})
    model = EfficientViTSeg(cfg)
    if weights is not None:
        if str(weights) == OFFICIAL:
            from evit_ros.weights import find_checkpoint, verify
            path = find_checkpoint(entry)
            verify(path, entry)
        else:
            path = weights
        load_checkpoint(model, path, entry.name)
    return model.eval()


def load_checkpoint(model: 'nn.Module', path: Union[str, os.PathLike],
                    model_name: Optional[str] = None) -> 'nn.Module':
    """Load a checkpoint file into ``model`` strictly and safely (``weights_only=True``).

    :raises CheckpointError: naming the file and every mismatched key.
    """
    from evit_ros.model.checkpoint import load_into, read_state_dict
    load_into(model, read_state_dict(str(path)), model_name, source=f'checkpoint {path}')
    return model
