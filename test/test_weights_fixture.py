"""The ``official_weights`` fixture finds the user's own weights when ../shared is absent.

Runs pytest in a child process on a probe test, with the shared folder pointed elsewhere
and the real checkpoint linked into a weights folder or a cache.
"""

import os
import subprocess
import sys

import pytest

from conftest import official_checkpoint, REPO

PROBE = '''
from conftest import isolated_cache, official_weights  # noqa: F401 - fixtures


def test_probe(official_weights):
    from evit_ros.weights import find_checkpoint
    from evit_ros.model import get_entry
    found = find_checkpoint(get_entry('b0-cityscapes'))
    assert found.parent == official_weights
    print('FOUND', found)
'''


def _probe(tmp_path, **env):
    (tmp_path / 'test_probe.py').write_text(PROBE)
    clean = {k: v for k, v in os.environ.items()
             if k not in ('EVIT_ROS_WEIGHTS_DIR', 'EVIT_ROS_CACHE', 'PYTEST_ADDOPTS')}
    clean.update(EVIT_ROS_SHARED=str(tmp_path / 'no-shared'), HOME=str(tmp_path / 'home'),
                 PYTHONPATH=str(REPO / 'test'), **env)
    return subprocess.run([sys.executable, '-m', 'pytest', '-q', '-rs', '-s', '-p',
                           'no:cacheprovider', str(tmp_path / 'test_probe.py')],
                          capture_output=True, text=True, cwd=tmp_path, env=clean,
                          timeout=300)


@pytest.mark.parametrize('where', ['EVIT_ROS_WEIGHTS_DIR', 'EVIT_ROS_CACHE'])
def test_uses_the_users_weights_without_shared(tmp_path, where):
    checkpoint = official_checkpoint()
    folder = tmp_path / 'mine' / ('weights' if where == 'EVIT_ROS_CACHE' else 'pt')
    folder.mkdir(parents=True)
    (folder / checkpoint.name).symlink_to(checkpoint)
    value = folder.parent if where == 'EVIT_ROS_CACHE' else folder
    result = _probe(tmp_path, **{where: str(value)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert '1 passed' in result.stdout
    assert f'FOUND {folder / checkpoint.name}' in result.stdout


def test_skips_saying_where_it_looked(tmp_path):
    result = _probe(tmp_path)
    assert '1 skipped' in result.stdout, result.stdout + result.stderr
    assert 'needs efficientvit_seg_b0_cityscapes.pt in ' in result.stdout
    assert 'evit-ros weights fetch|import b0-cityscapes' in result.stdout
