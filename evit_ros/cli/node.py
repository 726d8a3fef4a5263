"""``evit-ros node``: run the segmentation node (the same as ``segmentation_node``)."""

import argparse

from evit_ros.cli import CommandError

EPILOG = """examples:
  evit-ros node --ros-args -p backend:=onnxruntime -r '~/image:=/camera/image_raw'
  evit-ros node --ros-args -p "cameras:=[/front/image_raw,/left/image_raw]"
  evit-ros node --preset b0-cityscapes --ros-args -p device:=cuda -r __ns:=/front
  evit-ros node --ros-args --params-file config/segmentation.yaml

Set FASTDDS_DEFAULT_PROFILES_FILE to config/fastdds_large_images.xml in the camera driver's
process too: large best-effort images are dropped silently without it."""


def register(subparsers) -> None:
    """Add the ``node`` subcommand."""
    parser = subparsers.add_parser(
        'node', help='run the ROS 2 segmentation node',
        description='Run segmentation_node. Everything after the options is passed to ROS '
                    '(--ros-args -p name:=value -r from:=to ...).',
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--preset', metavar='MODEL',
                        help='load the parameter preset of a model (config/presets/MODEL.yaml) '
                             'before any other parameters')
    # An option with REMAINDER: argparse would refuse '--ros-args ...' as a positional.
    parser.add_argument('--ros-args', dest='ros_args', nargs=argparse.REMAINDER, default=None,
                        metavar='ARG', help='ROS arguments: -p name:=value, -r from:=to, '
                                            '--params-file FILE ...')
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Start the node with the preset (if any) and the ROS arguments; return its exit code."""
    argv = ['evit-ros-node']
    if args.preset:
        from evit_ros.ros.resources import preset_file, presets
        try:
            path = preset_file(args.preset)
        except FileNotFoundError:
            raise CommandError(f'no preset {args.preset!r}; available: '
                               f'{", ".join(presets()) or "none installed"}') from None
        argv += ['--ros-args', '--params-file', str(path)]
    if args.ros_args is not None:
        argv += ['--ros-args'] + args.ros_args
    from evit_ros.ros.segmentation_node import main
    return main(argv)
