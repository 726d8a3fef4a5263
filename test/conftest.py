"""Shared fixtures: where ../shared is, isolated caches and ROS domains per test."""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Fast DDS reads its XML profile once per process, when the first participant is created,
# so every rclpy participant of the test process must see the large-image profile from the
# start: best-effort images above the default 512 KB shared-memory segment are otherwise
# dropped silently, whichever test happened to create the first participant.
os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE',
                      str(REPO / 'config' / 'fastdds_large_images.xml'))


def shared_dir() -> Path:
    """Return ``$EVIT_ROS_SHARED`` (default ``../shared`` beside the repository)."""
    return Path(os.environ.get('EVIT_ROS_SHARED', REPO.parent / 'shared')).resolve()


def require_shared(*parts: str) -> Path:
    """Return a path inside the shared folder, or skip the test saying what is missing."""
    path = shared_dir().joinpath(*parts)
    if not path.exists():
        pytest.skip(f'needs {path} (set EVIT_ROS_SHARED to the shared reference folder)')
    return path


@pytest.fixture
def shared():
    """The shared reference folder; skips when absent."""
    return require_shared()


@pytest.fixture
def official_weights(monkeypatch):
    """Point EVIT_ROS_WEIGHTS_DIR at the shared official checkpoints; skip when absent."""
    folder = require_shared('weights', 'efficientvit_seg_b0_cityscapes.pt').parent
    monkeypatch.setenv('EVIT_ROS_WEIGHTS_DIR', str(folder))
    return folder


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Keep every test's weight cache out of the user's home."""
    monkeypatch.setenv('EVIT_ROS_CACHE', str(tmp_path_factory.mktemp('cache')))


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """Undo a test's change of torch's process-wide thread count.

    Results of some CPU kernels depend on the thread count, and tests compare label maps
    computed here with ones computed by node processes at the default count.
    """
    torch = sys.modules.get('torch')
    before = torch.get_num_threads() if torch is not None else None
    yield
    torch = sys.modules.get('torch')
    if torch is not None and before is not None and torch.get_num_threads() != before:
        torch.set_num_threads(before)
