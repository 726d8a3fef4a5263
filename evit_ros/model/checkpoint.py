"""Strict, safe loading of official EfficientViT-Seg checkpoints."""

import os
import re
from typing import Dict, Optional

import torch
from torch import nn

from evit_ros.download import sha256_of  # noqa: F401 - part of this module's API


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, corrupt, or for another model."""


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Read a checkpoint without unpickling arbitrary objects.

    Accepts ``{"state_dict": {...}}`` (the release's format) or a bare state dict.

    :raises CheckpointError: when the file is missing, not a torch file, or holds no tensors.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f'checkpoint {path} does not exist')
    if os.path.getsize(path) == 0:
        raise CheckpointError(f'checkpoint {path} is empty (0 bytes); {_AGAIN}')
    try:
        # weights_only: a downloaded file must never run code while it is read.
        data = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or hostile files
        raise CheckpointError(f'checkpoint {path} {_load_failure(exc)}; {_AGAIN}') from None
    if isinstance(data, dict) and 'state_dict' in data and isinstance(data['state_dict'], dict):
        data = data['state_dict']
    if not isinstance(data, dict) or not data or not all(
            isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f'checkpoint {path} holds no state dict of tensors')
    return data


_AGAIN = 'download it again or re-import it with `evit-ros weights import`'


def _load_failure(exc: Exception) -> str:
    """Say in one line why ``torch.load`` failed, without torch's advice to drop safety.

    torch's own messages run over many lines, carry terminal colour codes and suggest
    ``weights_only=False``, which would let a hostile file run code: never pass that on.
    """
    text = str(exc)
    refused = re.search(r'Unsupported global: GLOBAL (\S+)', text)
    if refused:
        return (f'holds Python objects other than tensors ({refused.group(1)}); refused '
                'because unpickling them could run code')
    detail = re.search(r'WeightsUnpickler error:\s*(.+)', text, re.DOTALL)
    if detail:
        return f'is not a torch weights file ({_first_line(detail.group(1))})'
    if 'PytorchStreamReader' in text:
        reason = _first_line(text).split('. ')[0].split(': ', 1)[-1].rstrip('.')
        return f'is truncated or corrupt ({reason})'
    if isinstance(exc, EOFError):
        return 'is truncated (unexpected end of file)'
    first = _first_line(text)
    if not first or 'weights_only' in first:
        first = type(exc).__name__
    return f'is not a readable torch weights file ({first})'


def _first_line(text: str) -> str:
    """Return the first non-empty line of ``text`` without terminal escape codes."""
    text = re.sub(r'\x1b\[[0-9;]*m', '', text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else ''


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
