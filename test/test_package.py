"""The package installs both ways: colcon in a ROS 2 workspace, and pip into a plain venv."""

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from conftest import REPO

VENV_BIN = Path(sys.executable).parent


def _tracked_copy(dest: Path) -> Path:
    """Copy the files git tracks (a fresh clone's content) into ``dest``."""
    files = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard'], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        src = REPO / name
        if src.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    return dest


def test_package_xml_is_format3_ament_python():
    root = ElementTree.parse(REPO / 'package.xml').getroot()
    assert root.get('format') == '3'
    assert root.findtext('name') == 'evit_ros'
    assert root.find('export').findtext('build_type') == 'ament_python'
    depends = {e.text for e in root.iter('exec_depend')}
    assert {'rclpy', 'sensor_msgs', 'std_msgs', 'diagnostic_msgs'} <= depends
    assert (REPO / 'resource' / 'evit_ros').is_file()


def test_colcon_build_installs_nodes_launch_and_config(tmp_path):
    colcon = VENV_BIN / 'colcon'
    if not colcon.exists():
        pytest.skip('colcon is not installed in this environment (requirements.txt has it)')
    _tracked_copy(tmp_path / 'src' / 'evit_ros')
    result = subprocess.run([str(colcon), 'build', '--event-handlers', 'console_direct-'],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    prefix = tmp_path / 'install' / 'evit_ros'
    # `ros2 run evit_ros segmentation_node` looks in lib/<package>.
    assert (prefix / 'lib' / 'evit_ros' / 'segmentation_node').is_file()
    assert (prefix / 'lib' / 'evit_ros' / 'evit-ros').is_file()
    share = prefix / 'share' / 'evit_ros'
    assert (share / 'package.xml').is_file()
    assert (prefix / 'share' / 'ament_index' / 'resource_index' / 'packages'
            / 'evit_ros').is_file()
    for launch_file in (REPO / 'launch').glob('*.launch.py'):
        assert (share / 'launch' / launch_file.name).is_file()
    for config_file in (REPO / 'config').glob('*.yaml'):
        assert (share / 'config' / config_file.name).is_file()


def test_pip_install_into_plain_prefix(tmp_path):
    src = _tracked_copy(tmp_path / 'src')
    target = tmp_path / 'site'
    result = subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--no-build-isolation',
         '--target', str(target), str(src)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for module in ('model', 'runtime', 'ros', 'eval', 'cli'):
        assert (target / 'evit_ros' / module / '__init__.py').is_file()
    assert (target / 'bin' / 'segmentation_node').is_file()


# System-dependency keys of ros/rosdistro rosdep/python.yaml (commit 000730dc, 2025) that
# package.xml may name; ROS packages (rclpy, sensor_msgs, ament_*) resolve by package name.
ROSDEP_PYTHON_KEYS = {'python3-numpy', 'python3-yaml', 'python3-opencv', 'python3-matplotlib',
                      'python3-onnxruntime-pip', 'python3-pytest', 'python3-hypothesis'}
# Looked up there and absent (or retired): naming one breaks `rosdep install`.
NOT_ROSDEP_KEYS = {'python3-torch', 'python3-torch-pip', 'python3-pytorch-pip',
                   'python3-onnx', 'python3-onnx-pip', 'python3-rosbags',
                   'python3-rosbags-pip'}


def test_package_xml_names_only_real_rosdep_keys():
    root = ElementTree.parse(REPO / 'package.xml').getroot()
    keys = {e.text for tag in ('depend', 'exec_depend', 'build_depend', 'test_depend')
            for e in root.iter(tag)}
    system = {k for k in keys if k.startswith('python3-')}
    assert system <= ROSDEP_PYTHON_KEYS, system - ROSDEP_PYTHON_KEYS
    assert not keys & NOT_ROSDEP_KEYS
    # The PyPI-only dependencies are named in a comment instead.
    text = (REPO / 'package.xml').read_text()
    assert 'No rosdep key exists for torch' in text
    for name in ('onnx', 'rosbags', 'requirements.txt'):
        assert name in text
