"""EfficientViT-Seg in PyTorch, loading the official checkpoints strictly.

>>> from evit_ros.model import create_model
>>> model = create_model('b0-cityscapes', weights='official')
"""

import os
from typing import Optional, Union

from torch import nn

from evit_ros.model.checkpoint import CheckpointError, load_into, read_state_dict
from evit_ros.model.efficientvit import check_input_size, EfficientViTSeg, SegConfig
from evit_ros.model.fold import fold_batchnorm
from evit_ros.model.registry import get_entry, ModelEntry, MODELS, UnknownModelError

__all__ = [
    'CheckpointError', 'check_input_size', 'create_model', 'EfficientViTSeg', 'fold_batchnorm',
    'get_entry', 'load_checkpoint', 'ModelEntry', 'MODELS', 'SegConfig', 'UnknownModelError',
]

OFFICIAL = 'official'


def create_model(name: str, weights: Union[None, str, os.PathLike] = None,
                 num_classes: Optional[int] = None) -> EfficientViTSeg:
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


def load_checkpoint(model: nn.Module, path: Union[str, os.PathLike],
                    model_name: Optional[str] = None) -> nn.Module:
    """Load a checkpoint file into ``model`` strictly and safely (``weights_only=True``).

    :raises CheckpointError: naming the file and every mismatched key.
    """
    load_into(model, read_state_dict(str(path)), model_name, source=f'checkpoint {path}')
    return model
