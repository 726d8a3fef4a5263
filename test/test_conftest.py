"""The shared-data fixtures: skip outside CI, fail under CI, with one line saying why."""

import subprocess
import sys

from conftest import REPO

NEEDS_SHARED = '''
import sys
sys.path.insert(0, {test_dir!r})
from conftest import require_shared


def test_reference_frames():
    assert require_shared('data', 'frames').is_dir()
'''


def run_pytest(tmp_path, **env):
    """Run a one-test file that needs ``../shared``; return (exit code, output)."""
    test_file = tmp_path / 'test_needs_shared.py'
    test_file.write_text(NEEDS_SHARED.format(test_dir=str(REPO / 'test')))
    environ = {'PATH': '/usr/bin:/bin', 'HOME': str(tmp_path)}
    environ.update(env)
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-rs', '-p', 'no:cacheprovider', str(test_file)],
        cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=120)
    return result.returncode, result.stdout + result.stderr


def test_missing_shared_skips_outside_ci(tmp_path):
    code, output = run_pytest(tmp_path, EVIT_ROS_SHARED='/nonexistent/shared')
    assert code == 0, output
    assert '1 skipped' in output
    assert 'needs /nonexistent/shared/data/frames (set EVIT_ROS_SHARED' in output


def test_missing_shared_fails_under_ci(tmp_path):
    code, output = run_pytest(tmp_path, CI='true', EVIT_ROS_SHARED='/nonexistent/shared')
    assert code == 1, output
    assert '1 failed' in output
    line = ('CI=true but the reference data is missing: needs /nonexistent/shared/data/frames '
            '(set EVIT_ROS_SHARED to the shared reference folder)')
    assert line in output
    assert 'Traceback' not in output and 'pytest.fail(' not in output   # one line, no trace


def test_present_shared_passes_under_ci(tmp_path):
    shared = tmp_path / 'shared'
    (shared / 'data' / 'frames').mkdir(parents=True)
    code, output = run_pytest(tmp_path, CI='true', EVIT_ROS_SHARED=str(shared))
    assert code == 0 and '1 passed' in output, output
