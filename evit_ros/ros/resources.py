"""Where the installed config files are: the Fast DDS profile and the per-model presets.

Looked up, in order, in the package's ament share folder (when ``ament_index_python`` finds
``evit_ros``), in ``sys.prefix/share/evit_ros`` (a pip or colcon install into a venv), and in
the source checkout's ``config/`` folder.
"""

import os
import sys
from pathlib import Path
from typing import Dict, List

PACKAGE = 'evit_ros'
FASTDDS_PROFILE = 'fastdds_large_images.xml'
# Fast DDS 3 reads the first; the second is the deprecated name older setups still export.
PROFILE_VARIABLES = ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE')
_SOURCE_CONFIG = Path(__file__).resolve().parents[2] / 'config'


def config_dirs() -> List[Path]:
    """Return the candidate ``config`` folders, most specific (installed) first."""
    dirs = []
    try:
        from ament_index_python.packages import get_package_share_directory
        dirs.append(Path(get_package_share_directory(PACKAGE)) / 'config')
    except (ImportError, LookupError, OSError, ValueError):
        pass  # not installed through ament, or no AMENT_PREFIX_PATH
    dirs.append(Path(sys.prefix) / 'share' / PACKAGE / 'config')
    dirs.append(_SOURCE_CONFIG)
    return dirs


def config_file(relative: str) -> Path:
    """Return the first existing ``config/<relative>``.

    :raises FileNotFoundError: naming every folder searched.
    """
    for folder in config_dirs():
        candidate = folder / relative
        if candidate.is_file():
            return candidate
    searched = ', '.join(str(d) for d in config_dirs())
    raise FileNotFoundError(f'{relative} is not installed (searched {searched}); reinstall '
                            f'evit_ros or run from a source checkout')


def fastdds_profile() -> Path:
    """Return the Fast DDS profile that lets large images through shared memory."""
    return config_file(FASTDDS_PROFILE)


def preset_file(model: str) -> Path:
    """Return the parameter preset (a ROS params file) for a registry model name."""
    return config_file(f'presets/{model}.yaml')


def presets() -> Dict[str, Path]:
    """Return model name -> preset file for every preset found."""
    found: Dict[str, Path] = {}
    for folder in reversed(config_dirs()):
        for path in sorted((folder / 'presets').glob('*.yaml')):
            found[path.stem] = path
    return found


def use_large_image_profile(environ=os.environ) -> str:
    """Point Fast DDS at :func:`fastdds_profile` unless the user chose a profile already.

    Must run before the process creates its first DDS participant (``rclpy.init``). Only
    affects Fast DDS; other RMW implementations ignore the variables.

    :returns: the profile in effect, or ``''`` when none could be found.
    """
    for name in PROFILE_VARIABLES:
        if environ.get(name):
            return environ[name]
    try:
        path = str(fastdds_profile())
    except FileNotFoundError:
        return ''
    environ[PROFILE_VARIABLES[0]] = path
    return path
