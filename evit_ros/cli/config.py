"""``evit-ros config``: where the installed config files are, for shells and launch setups.

``export FASTDDS_DEFAULT_PROFILES_FILE="$(evit-ros config fastdds)"`` works the same in a
source checkout, a pip install into a venv and a colcon workspace.
"""

import argparse
import sys

from evit_ros.cli import CommandError


def register(subparsers) -> None:
    """Add ``config`` and its items to the ``evit-ros`` parser."""
    parser = subparsers.add_parser(
        'config', help="print where the installed config files are (Fast DDS profile, "
                       "presets)",
        description='Print the path of an installed config file, found as the node finds '
                    'it: the ament share folder, <prefix>/share/evit_ros/config (pip or '
                    'colcon install), then the source checkout. Without an item: every '
                    'config file found.')
    items = parser.add_subparsers(dest='item', metavar='ITEM')
    parser.set_defaults(func=_all)
    fastdds = items.add_parser(
        'fastdds', help='the Fast DDS profile that lets large images through shared memory',
        description='Print the path of fastdds_large_images.xml, e.g. for '
                    'export FASTDDS_DEFAULT_PROFILES_FILE="$(evit-ros config fastdds)" in '
                    'the shell that starts the camera driver.')
    fastdds.set_defaults(func=_fastdds)
    preset = items.add_parser('preset', help="a model's parameter preset (a ROS params file)")
    preset.add_argument('model', help='registry model name, e.g. b0-cityscapes')
    preset.set_defaults(func=_preset)


def _found(path_of) -> str:
    try:
        return str(path_of())
    except FileNotFoundError as exc:
        raise CommandError(str(exc)) from None


def _fastdds(args: argparse.Namespace) -> int:
    from evit_ros.ros.resources import fastdds_profile
    print(_found(fastdds_profile))
    return 0


def _preset(args: argparse.Namespace) -> int:
    from evit_ros.ros.resources import preset_file, presets
    if args.model not in presets():
        raise CommandError(f'no preset for {args.model!r}; presets: '
                           f'{", ".join(sorted(presets())) or "none installed"}')
    print(_found(lambda: preset_file(args.model)))
    return 0


def _all(args: argparse.Namespace) -> int:
    from evit_ros.ros.resources import config_dirs, fastdds_profile, presets
    print(f'fastdds  {_found(fastdds_profile)}')
    for model, path in sorted(presets().items()):
        print(f'preset   {model}  {path}')
    print('searched: ' + ', '.join(str(d) for d in config_dirs()), file=sys.stderr)
    return 0
