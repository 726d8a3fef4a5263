"""Strict, safe loading of official EfficientViT-Seg checkpoints."""

import hashlib
import os
from typing import Dict, Optional

import torch
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, corrupt, or for another model."""


def sha256_of(path: str, chunk: int = 1 << 20) -> str:
    """Return the hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for block in iter(lambda: handle.read(chunk), b''):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Read a checkpoint without unpickling arbitrary objects.

    Accepts ``{"state_dict": {...}}`` (the release's format) or a bare state dict.

    :raises CheckpointError: when the file is missing, not a torch file, or holds no tensors.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f'checkpoint {path} does not exist')
    try:
        # weights_only: a downloaded file must never run code while it is read.
        data = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or hostile files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f'checkpoint {path} is not a readable torch weights file ({first}); '
            'download it again or re-import it with `evit-ros weights import`') from None
    if isinstance(data, dict) and 'state_dict' in data and isinstance(data['state_dict'], dict):
        data = data['state_dict']
    if not isinstance(data, dict) or not data or not all(
            isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f'checkpoint {path} holds no state dict of tensors')
    return data


def load_into(model: nn.Module, state_dict: Dict[str, torch.Tensor],
              model_name: Optional[str] = None, source: str = 'checkpoint') -> None:
    """Load ``state_dict`` strictly, naming every missing, unexpected or mis-shaped key.

    :raises CheckpointError: on any mismatch; the model is left unchanged.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [f'{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}'
                 for k, v in expected.items()
                 if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or misshaped:
        what = model_name or type(model).__name__
        parts = []
        for label, keys in (('missing', missing), ('unexpected', unexpected),
                            ('mis-shaped', misshaped)):
            if keys:
                shown = ', '.join(keys[:5]) + (f' (+{len(keys) - 5} more)' if len(keys) > 5
                                               else '')
                parts.append(f'{len(keys)} {label}: {shown}')
        raise CheckpointError(
            f'{source} does not fit model {what}: ' + '; '.join(parts)
            + '. Is it the checkpoint of another model?')
    model.load_state_dict(state_dict, strict=True)
