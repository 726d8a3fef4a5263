"""Code style: flake8 with ROS 2's 99-column limit over the package, tests and benchmarks."""

import subprocess
import sys

from conftest import REPO


def test_flake8_clean():
    result = subprocess.run(
        [sys.executable, '-m', 'flake8', '--max-line-length=99', 'evit_ros', 'test', 'bench',
         'launch', 'setup.py'], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
