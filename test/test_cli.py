"""``evit-ros`` as a user meets it: fast ``--help``, quiet pipes, one-line refusals, paths.

Every check runs the real command in a child process (the test process has torch and
rclpy loaded already, so import checks cannot run here).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from evit_ros.cli import COMMANDS

CLI = Path(sys.executable).with_name('evit-ros')
HEAVY = ('torch', 'rclpy', 'onnx', 'onnxruntime', 'cv2', 'rosbags', 'matplotlib')
LIGHT_COMMANDS = list(COMMANDS)


def _python(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=120, **kwargs)


@pytest.mark.parametrize('argv', [[]] + [[c] for c in LIGHT_COMMANDS])
def test_parsing_imports_nothing_heavy(argv):
    code = ('import json, sys\n'
            'from evit_ros.cli import build_parser\n'
            f'build_parser({argv!r})\n'
            f'print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n')
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize('command', [c for c in COMMANDS
                                     if Path(REPO, *COMMANDS[c][0].split('.')).with_suffix(
                                         '.py').exists()])
def test_every_help_works(command):
    result = subprocess.run([str(CLI), command, '--help'], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f'usage: evit-ros {command}')
    assert result.stderr == ''


def test_top_level_help_lists_the_commands_without_importing_them():
    code = ('import json, sys\n'
            'from evit_ros.cli import main\n'
            'try:\n'
            '    main(["--help"])\n'
            'except SystemExit as exc:\n'
            '    assert exc.code == 0\n'
            f'print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n')
    result = _python(code)
    assert result.returncode == 0, result.stderr
    listing, imported = result.stdout.rsplit('\n', 2)[:2]
    assert json.loads(imported) == []
    for command in ('weights', 'replay', 'bench', 'config', 'make-bag'):
        assert f'\n    {command} ' in listing


def test_the_cli_choices_agree_with_the_modules():
    from evit_ros.cli import bags
    from evit_ros.eval import bags as eval_bags, make_bag, replay
    assert bags.STORAGES == eval_bags.STORAGES
    assert bags.ENCODINGS == make_bag.ENCODINGS
    assert bags.MODES == replay.MODES
    assert set(bags.COMPRESSED_ENCODINGS) == set(make_bag.ENCODINGS) - {'rgb8', 'bgr8'}


def test_a_closed_pipe_ends_quietly(tmp_path):
    """``evit-ros weights list | head -1``: the reader leaves; no BrokenPipeError traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write: EPIPE on every write
    env = dict(os.environ, EVIT_ROS_CACHE=str(tmp_path))
    try:
        result = subprocess.run([str(CLI), 'weights', 'list', '--no-check'], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, env=env, timeout=120)
    finally:
        os.close(write_end)
    assert result.stderr == ''
    assert result.returncode == 141


def test_head_of_a_real_shell_pipe(tmp_path):
    env = dict(os.environ, EVIT_ROS_CACHE=str(tmp_path))
    result = subprocess.run(['bash', '-c', f'"{CLI}" weights list --no-check | head -1'],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0
    assert result.stdout.split() == ['MODEL', 'WHERE', 'SIZE', 'SHA256', 'PATH']
    assert 'Traceback' not in result.stderr and 'BrokenPipe' not in result.stderr


@pytest.mark.parametrize('encoding,topic,suggested', [
    ('jpeg', '/camera/image', '--topic /camera/image/compressed'),
    ('png', '/cam/image_raw/', '--topic /cam/image_raw/compressed'),
    ('rgb8', '/camera/image/compressed', '--topic /camera/image '),
])
def test_make_bag_refuses_a_topic_of_the_wrong_transport(encoding, topic, suggested, tmp_path):
    images = tmp_path / 'images'
    images.mkdir()
    result = subprocess.run(
        [str(CLI), 'make-bag', '--images', str(images), '--topic', topic, '--encoding',
         encoding, '-o', str(tmp_path / 'bag')], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith('evit-ros make-bag: error: --encoding ')
    assert suggested in lines[0] + ' '
    assert not (tmp_path / 'bag').exists()


def test_config_prints_paths_that_exist(tmp_path):
    """From any folder: the profile path to export, and the presets."""
    fastdds = subprocess.run([str(CLI), 'config', 'fastdds'], capture_output=True, text=True,
                             cwd=tmp_path, timeout=120)
    assert fastdds.returncode == 0, fastdds.stderr
    path = Path(fastdds.stdout.strip())
    assert path.is_absolute() and path.name == 'fastdds_large_images.xml'
    assert '<profiles' in path.read_text()
    preset = subprocess.run([str(CLI), 'config', 'preset', 'b0-cityscapes'],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert Path(preset.stdout.strip()).name == 'b0-cityscapes.yaml'
    missing = subprocess.run([str(CLI), 'config', 'preset', 'nope'], capture_output=True,
                             text=True, cwd=tmp_path, timeout=120)
    assert missing.returncode == 1
    assert missing.stderr.startswith("evit-ros config: error: no preset for 'nope'; presets: ")
    # As the README uses it: exported by a real shell, as typed.
    shell = subprocess.run(
        ['bash', '-c', f'export FASTDDS_DEFAULT_PROFILES_FILE="$("{CLI}" config fastdds)" && '
                       f'test -f "$FASTDDS_DEFAULT_PROFILES_FILE" && '
                       f'echo "$FASTDDS_DEFAULT_PROFILES_FILE"'],
        capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert shell.returncode == 0 and shell.stdout.strip() == str(path)


def test_config_finds_the_profile_in_a_non_editable_venv_install(tmp_path):
    """``pip install .`` into a venv: the profile is found in ``<venv>/share``, not the clone."""
    from test_package import _tracked_copy
    src = _tracked_copy(tmp_path / 'src')
    venv = tmp_path / 'venv'
    subprocess.run([sys._base_executable, '-m', 'venv', '--without-pip', str(venv)],
                   check=True, timeout=120)
    installed = subprocess.run(
        # --ignore-installed: without it pip would uninstall this venv's own evit_ros first.
        [sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--no-build-isolation',
         '--ignore-installed', '--prefix', str(venv), str(src)], capture_output=True, text=True,
        timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    shutil.rmtree(src)  # nothing may come from the copy of the clone
    # `config` needs nothing but the package itself, so this bare venv runs it.
    result = subprocess.run(
        [str(venv / 'bin' / 'python'), '-c',
         'import sys; from evit_ros.cli import main; sys.exit(main(["config", "fastdds"]))'],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={'PATH': os.environ['PATH'], 'HOME': str(tmp_path)})
    assert result.returncode == 0, result.stderr
    expected = venv / 'share' / 'evit_ros' / 'config' / 'fastdds_large_images.xml'
    assert result.stdout.strip() == str(expected)
    assert expected.read_bytes() == (REPO / 'config' / 'fastdds_large_images.xml').read_bytes()


def test_engines_command_names_the_engine_cache_variable():
    from evit_ros.cli import engines
    from evit_ros.runtime import engine_cache
    assert engines.ENGINE_DIR_ENV == engine_cache.ENGINE_DIR_ENV == 'EVIT_ROS_ENGINE_DIR'
