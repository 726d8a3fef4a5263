"""Docstrings: pep257 over the package, as ament_pep257 checks ROS 2 packages."""

import subprocess
import sys

from conftest import REPO


def test_pep257_clean():
    result = subprocess.run(
        [sys.executable, '-m', 'pydocstyle', 'evit_ros'], cwd=REPO, capture_output=True,
        text=True)
    assert result.returncode == 0, result.stdout + result.stderr
