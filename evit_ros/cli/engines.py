"""``evit-ros build-engine`` and ``evit-ros engines list | clean``: the TensorRT engine cache.

``build-engine`` is the robot's "build only" step: it builds (or validates) the engine the
node will load, so the node starts in seconds instead of blocking on a build.
"""

import argparse
import sys

from evit_ros.cli import CommandError, log_runtime_to_stderr
from evit_ros.model import check_input_size
from evit_ros.model.registry import get_entry, MODELS, UnknownModelError
from evit_ros.runtime.engine_cache import ENGINE_DIR_ENV, EngineCache, EngineCacheError

PRECISIONS = ('fp32', 'fp16', 'int8')


def register(subparsers) -> None:
    """Add ``build-engine`` and ``engines`` to the ``evit-ros`` parser."""
    build = subparsers.add_parser(
        'build-engine', help='build the TensorRT engine for a model ahead of time',
        description='Export the model to ONNX and build a TensorRT engine into the engine '
                    'folder (reused as is when a valid one is cached). In fp16/int8 the '
                    'attention stays fp32. Prints where the engine went.')
    build.add_argument('--model', required=True, help=f'model name ({", ".join(MODELS)})')
    build.add_argument('--weights', default='official',
                       help='"official" (default), a checkpoint path, or "none" (random)')
    build.add_argument('--height', type=int, help='network input height (multiple of 32; '
                                                  'default the model\'s)')
    build.add_argument('--width', type=int, help='network input width (multiple of 32)')
    build.add_argument('--precision', choices=PRECISIONS, default='fp16',
                       help='engine precision (default fp16)')
    build.add_argument('--calib', metavar='DIR|BAG',
                       help='int8: folder of images or rosbag2 bag to calibrate on')
    build.add_argument('--calib-topic', help='image topic of the calibration bag')
    build.add_argument('--calib-images', type=int, default=None,
                       help='most calibration frames used (default 100)')
    build.add_argument('--workspace-mb', type=int, default=None,
                       help='TensorRT builder workspace limit in MiB (default 1024; lower it '
                            'when a Jetson runs out of memory)')
    build.add_argument('--device', default='cuda', help='GPU, e.g. cuda or cuda:1')
    build.add_argument('--engine-dir', help=f'engine folder (default ${ENGINE_DIR_ENV} or the '
                                            'package\'s engines/)')
    build.add_argument('--rebuild', action='store_true',
                       help='build even when a valid engine is cached')
    build.set_defaults(func=_build_engine)

    engines = subparsers.add_parser(
        'engines', help='list or remove cached TensorRT engines',
        description='Engines live in --engine-dir, else $EVIT_ROS_ENGINE_DIR, else the '
                    'package\'s engines/ folder when writable, else the user cache.')
    actions = engines.add_subparsers(dest='action', metavar='ACTION')
    engines.set_defaults(func=lambda args: _usage(engines))
    listing = actions.add_parser('list', help='show each engine, what it was built for and '
                                              'whether it is intact')
    listing.add_argument('--engine-dir', help='engine folder')
    listing.set_defaults(func=_list)
    clean = actions.add_parser('clean', help='delete every engine, sidecar and calibration '
                                             'cache (other files are kept)')
    clean.add_argument('--engine-dir', help='engine folder')
    clean.set_defaults(func=_clean)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _build_engine(args) -> int:
    try:
        entry = get_entry(args.model)
    except UnknownModelError as exc:
        raise CommandError(str(exc)) from None
    height = args.height or entry.input_size[0]
    width = args.width or entry.input_size[1]
    try:
        check_input_size(height, width)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if args.precision == 'int8' and not args.calib:
        raise CommandError('int8 needs calibration data: pass --calib DIR (images) or '
                           '--calib BAG (a rosbag2 bag)')
    if args.calib and args.precision != 'int8':
        raise CommandError(f'--calib only applies to --precision int8, not {args.precision}')
    from evit_ros.runtime.backends.tensorrt_backend import (
        DEFAULT_WORKSPACE_MB, TensorRTBackend, tensorrt_missing, TRT_MISSING)
    if tensorrt_missing():
        raise CommandError(TRT_MISSING)
    log_runtime_to_stderr()
    from evit_ros.model import CheckpointError, create_model
    from evit_ros.runtime.backends import BackendUnavailable
    from evit_ros.weights import WeightsNotFound
    weights = None if args.weights == 'none' else args.weights
    try:
        model = create_model(entry.name, weights=weights)
    except (CheckpointError, WeightsNotFound) as exc:
        raise CommandError(str(exc)) from None
    try:
        backend = TensorRTBackend(
            model, (height, width), device=args.device, precision=args.precision,
            engine_dir=args.engine_dir, workspace_mb=args.workspace_mb or DEFAULT_WORKSPACE_MB,
            calib=args.calib, calib_topic=args.calib_topic, calib_images=args.calib_images,
            rebuild=args.rebuild, entry=entry, weights=weights)
    except BackendUnavailable as exc:
        raise CommandError(str(exc)) from None
    state = 'built' if backend.built else 'already cached and valid'
    print(f'{backend.engine_path} ({state}; {args.precision}, {height}x{width}, '
          f'TensorRT {backend.key.tensorrt_version}, {backend.key.gpu_name})')
    return 0


def _list(args) -> int:
    cache = EngineCache(args.engine_dir)
    records = cache.records()
    if not records:
        print(f'no engines in {cache.directory}')
        return 0
    print(f'engines in {cache.directory}:')
    rows = [('ENGINE', 'MODEL', 'INPUT', 'PREC', 'TENSORRT', 'GPU', 'MB', 'BUILT', 'STATUS')]
    for record in records:
        key = record.key
        rows.append((
            record.path.name,
            key.model if key else '?',
            'x'.join(map(str, key.input_shape[-2:])) if key else '?',
            key.precision if key else '?',
            key.tensorrt_version if key else '?',
            f'{key.gpu_name} (sm {key.compute_capability})' if key else '?',
            f'{record.size_bytes / 1e6:.1f}',
            record.built_at or '?',
            record.status))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print('  '.join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _clean(args) -> int:
    cache = EngineCache(args.engine_dir)
    try:
        removed = cache.clean()
    except OSError as exc:
        raise CommandError(f'cannot clean {cache.directory}: {exc}') from None
    except EngineCacheError as exc:
        raise CommandError(str(exc)) from None
    for path in removed:
        print(f'removed {path}')
    print(f'{len(removed)} file(s) removed from {cache.directory}')
    return 0
