"""Shared fixtures: where ../shared is, isolated caches and ROS domains per test."""

import os
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


def under_ci() -> bool:
    """Return whether this run is a CI run (``CI=true``, as CI services set it)."""
    return os.environ.get('CI', '').strip().lower() in ('true', '1', 'yes')


def require_shared(*parts: str) -> Path:
    """Return a path inside the shared folder, or skip the test saying what is missing.

    Under CI (``CI=true``) a missing path fails the test instead: CI is where the
    real-data tests must run, and a run that skipped them all would pass unnoticed.
    """
    path = shared_dir().joinpath(*parts)
    if not path.exists():
        reason = f'needs {path} (set EVIT_ROS_SHARED to the shared reference folder)'
        if under_ci():
            pytest.fail(f'CI=true but the reference data is missing: {reason}', pytrace=False)
        pytest.skip(reason)
    return path


@pytest.fixture
def shared():
    """The shared reference folder; skips when absent."""
    return require_shared()


# The user's own weights, read before the tests isolate the cache (see evit_ros.weights
# weights_dirs): EVIT_ROS_WEIGHTS_DIR, then $EVIT_ROS_CACHE/weights or ~/.cache/evit_ros.
USER_WEIGHT_DIRS = [Path(d).expanduser() for d in (
    os.environ.get('EVIT_ROS_WEIGHTS_DIR'),
    os.path.join(os.environ.get('EVIT_ROS_CACHE') or os.path.join('~', '.cache', 'evit_ros'),
                 'weights')) if d]
B0_CHECKPOINT = 'efficientvit_seg_b0_cityscapes.pt'


def official_checkpoint() -> Path:
    """Return the official B0 checkpoint: ../shared's, else the user's; skip when absent."""
    for folder in [shared_dir() / 'weights'] + USER_WEIGHT_DIRS:
        if (folder / B0_CHECKPOINT).is_file():
            return (folder / B0_CHECKPOINT).absolute()
    pytest.skip(f'needs {B0_CHECKPOINT} in {shared_dir() / "weights"}, $EVIT_ROS_WEIGHTS_DIR '
                f'or the weight cache (evit-ros weights fetch|import b0-cityscapes)')


@pytest.fixture
def official_weights(monkeypatch):
    """Point EVIT_ROS_WEIGHTS_DIR at a folder with the official B0 checkpoint; skip if none.

    The shared folder's, else the user's EVIT_ROS_WEIGHTS_DIR or weight cache.
    """
    folder = official_checkpoint().parent
    monkeypatch.setenv('EVIT_ROS_WEIGHTS_DIR', str(folder))
    return folder


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Keep every test's weight cache out of the user's home."""
    monkeypatch.setenv('EVIT_ROS_CACHE', str(tmp_path_factory.mktemp('cache')))


@pytest.fixture(scope='module')
def one_torch_thread():
    """Run a module's PyTorch single-threaded (``pytest.mark.usefixtures``), then restore.

    Same results, steady times: on a loaded 2-core machine two OpenMP threads wait on each
    other, and B0 forwards at 128x256 swing from 10 ms to 2 s.
    """
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """Undo a test's change of torch's process-wide thread count.

    Results of some CPU kernels depend on the thread count, and tests compare label maps
    computed here with ones computed by node processes at the default count. torch is
    imported here, so the count is known even before the first test that imports it (the
    package imports torch lazily now: a test that first imported it and set 1 thread left
    every later test at 1).
    """
    import torch
    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)
