"""Where official checkpoints live on this machine, and how they are verified.

Search order for a model's checkpoint: ``$EVIT_ROS_WEIGHTS_DIR`` (a folder of official
files), then the cache ``$EVIT_ROS_CACHE`` (default ``~/.cache/evit_ros``).
"""

import json
import os
from pathlib import Path
from typing import Dict, Optional

from evit_ros.model.checkpoint import CheckpointError, sha256_of
from evit_ros.model.registry import ModelEntry

HASHES_FILE = 'recorded_sha256.json'


class WeightsNotFound(FileNotFoundError):
    """No checkpoint for a model was found; the message says how to get one."""

    def __str__(self) -> str:
        return self.args[0]


def cache_dir() -> Path:
    """Return the weights cache folder (``$EVIT_ROS_CACHE`` or ``~/.cache/evit_ros``)."""
    root = os.environ.get('EVIT_ROS_CACHE') or os.path.join('~', '.cache', 'evit_ros')
    return Path(root).expanduser().resolve() / 'weights'


def weights_dirs() -> list:
    """Return the folders searched for checkpoints, in order."""
    dirs = []
    if os.environ.get('EVIT_ROS_WEIGHTS_DIR'):
        dirs.append(Path(os.environ['EVIT_ROS_WEIGHTS_DIR']).expanduser().resolve())
    dirs.append(cache_dir())
    return dirs


def recorded_hashes() -> Dict[str, str]:
    """Return the sha256 values recorded on first download (trust on first use)."""
    path = cache_dir() / HASHES_FILE
    try:
        with open(path) as handle:
            data = json.load(handle)
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def expected_sha256(entry: ModelEntry) -> Optional[str]:
    """Return the sha256 a checkpoint must have: the published one, else the recorded one."""
    return entry.checkpoint_sha256 or recorded_hashes().get(entry.checkpoint_file)


def verify(path: Path, entry: ModelEntry) -> str:
    """Check ``path`` against the model's known sha256 and return its digest.

    :raises CheckpointError: naming the expected and the actual value on a mismatch.
    """
    actual = sha256_of(str(path))
    expected = expected_sha256(entry)
    if expected and actual != expected:
        raise CheckpointError(
            f'{path} fails its sha256 check for {entry.name}: expected {expected}, got '
            f'{actual}; the file is corrupt or not the official checkpoint. Fetch it again: '
            f'evit-ros weights fetch {entry.name}')
    return actual


def fetch_hint(entry: ModelEntry) -> str:
    """Return the commands that make a model's weights available."""
    return (f'get them with `evit-ros weights fetch {entry.name}` (downloads '
            f'{entry.checkpoint_url}), or, with the file at hand, '
            f'`evit-ros weights import {entry.name} /path/to/{entry.checkpoint_file}`, '
            f'or point EVIT_ROS_WEIGHTS_DIR at a folder that holds {entry.checkpoint_file}')


def find_checkpoint(entry: ModelEntry) -> Path:
    """Return the path of the model's official checkpoint on this machine.

    :raises WeightsNotFound: with the fetch and import commands.
    """
    for folder in weights_dirs():
        candidate = folder / entry.checkpoint_file
        if candidate.is_file():
            return candidate
    searched = ', '.join(str(d) for d in weights_dirs())
    raise WeightsNotFound(f'no weights for {entry.name} in {searched}; {fetch_hint(entry)}')
