"""``evit-ros build-engine`` and ``evit-ros engines list | clean``: the TensorRT engine cache.

``build-engine`` is the robot's "build only" step: it builds (or validates) the engine the
node will load, so the node starts in seconds instead of blocking on a build. On TensorRT
>= 10 it first makes the precision's ONNX artifact (int8: calibrated on ``--calib`` once,
there; scored on CamVid frames with ``--check-data``) and compiles that, or compiles the
prebuilt ``--artifact`` of ``evit-ros export``; the printed engine path is what the node's
``engine`` parameter and replay's ``--engine`` take.
"""

import argparse
import sys

from evit_ros.cli import CommandError, log_runtime_to_stderr
from evit_ros.cli.check_data import add_check_args, labelled_checks
from evit_ros.model import check_input_size
from evit_ros.model.registry import get_entry, MODELS, UnknownModelError
# The engine cache imports torch: loaded inside the commands, so --help stays fast.
ENGINE_DIR_ENV = 'EVIT_ROS_ENGINE_DIR'

PRECISIONS = ('fp32', 'fp16', 'int8')


def register(subparsers) -> None:
    """Add ``build-engine`` and ``engines`` to the ``evit-ros`` parser."""
    build = subparsers.add_parser(
        'build-engine', help='build the TensorRT engine for a model ahead of time',
        description='Build a TensorRT engine into the engine folder (reused as is when a '
                    'valid one is cached). Needs an NVIDIA GPU with TensorRT 8.5, 8.6, 10.x '
                    'or 11.x. On TensorRT >= 10 the engine is compiled from the precision\'s '
                    'ONNX artifact (int8: calibrated on --calib when the artifact is made); '
                    'on 8.x with precision flags, attention kept fp32. Prints where the '
                    'engine went: pass it to the node (engine:=PATH) or replay (--engine).')
    build.add_argument('--model', required=True, help=f'model name ({", ".join(MODELS)})')
    build.add_argument('--weights', default='official',
                       help='"official" (default), a checkpoint path, or "none" (random)')
    build.add_argument('--height', type=int, help='network input height (multiple of 32; '
                                                  'default the model\'s)')
    build.add_argument('--width', type=int, help='network input width (multiple of 32)')
    build.add_argument('--precision', choices=PRECISIONS,
                       help="engine precision (default fp16, or the --artifact's)")
    build.add_argument('--calib', metavar='DIR|BAG',
                       help='int8: folder of images or rosbag2 bag to calibrate on')
    build.add_argument('--calib-topic', help='image topic of the calibration bag')
    build.add_argument('--calib-images', type=int, default=None,
                       help='most calibration frames used (default 100)')
    add_check_args(build, 'keep an artifact that misses its mIoU/agreement bound (its '
                          'sidecar records it)')
    build.add_argument('--artifact', metavar='FILE.onnx',
                       help='compile this artifact of `evit-ros export --precision ...` '
                            '(TensorRT >= 10; precision and size from its sidecar) instead '
                            'of making one; copied beside the engine')
    build.add_argument('--workspace-mb', type=int, default=None,
                       help='TensorRT builder workspace limit in MiB (default 1024; lower it '
                            'when a Jetson runs out of memory)')
    build.add_argument('--max-batch', type=int, default=1,
                       help='largest batch the engine takes (multi-camera nodes; default 1)')
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
    if args.artifact:
        _take_from_artifact(args, entry)
    args.precision = args.precision or 'fp16'
    height = args.height or entry.input_size[0]
    width = args.width or entry.input_size[1]
    try:
        check_input_size(height, width)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if args.precision == 'int8' and not args.calib and not args.artifact:
        raise CommandError('int8 needs calibration data: pass --calib DIR (images) or '
                           '--calib BAG (a rosbag2 bag)')
    if args.calib and args.precision != 'int8':
        raise CommandError(f'--calib only applies to --precision int8, not {args.precision}')
    if args.max_batch < 1:
        raise CommandError(f'--max-batch must be >= 1, got {args.max_batch}')
    from evit_ros.runtime.backends.tensorrt_backend import (
        DEFAULT_WORKSPACE_MB, TensorRTBackend, tensorrt_missing)
    missing = tensorrt_missing()
    if missing:
        raise CommandError(
            'build-engine needs an NVIDIA GPU with TensorRT (8.5, 8.6, 10.x or 11.x) and '
            'cuda-python or pycuda; ' + missing[len('tensorrt: '):]
            + '. Without a GPU, run the model on the CPU with onnxruntime instead')
    checks = None if args.artifact else labelled_checks(args, entry)
    log_runtime_to_stderr()
    from evit_ros.model import CheckpointError, create_model
    from evit_ros.runtime.backends import BackendUnavailable
    from evit_ros.weights import WeightsNotFound
    weights = None if args.weights == 'none' else args.weights
    model = None  # an artifact is compiled as it is: no weights read
    if not args.artifact:
        try:
            model = create_model(entry.name, weights=weights)
        except (CheckpointError, WeightsNotFound) as exc:
            raise CommandError(str(exc)) from None
    try:
        backend = TensorRTBackend(
            model, (height, width), device=args.device, precision=args.precision,
            engine_dir=args.engine_dir, workspace_mb=args.workspace_mb or DEFAULT_WORKSPACE_MB,
            calib=args.calib, calib_topic=args.calib_topic, calib_images=args.calib_images,
            rebuild=args.rebuild, entry=entry, weights=weights, max_batch=args.max_batch,
            artifact_checks=checks, artifact=args.artifact)
    except BackendUnavailable as exc:
        raise CommandError(str(exc)) from None
    state = 'built' if backend.built else 'already cached and valid'
    print(f'{backend.engine_path} ({state}; {backend.precision}, {height}x{width}, batch up '
          f'to {backend.max_batch}, TensorRT {backend.key.tensorrt_version}, '
          f'{backend.key.gpu_name})')
    return 0


def _take_from_artifact(args, entry) -> None:
    """Set precision and size from ``--artifact``'s sidecar; refuse flags that contradict it."""
    for flag, value in (('--calib', args.calib), ('--check-data', args.check_data)):
        if value:
            raise CommandError(f'{flag} does not apply with --artifact: the artifact was '
                               'calibrated and checked when it was exported')
    from evit_ros.runtime.artifact import ArtifactError, read_artifact_info
    try:
        info = read_artifact_info(args.artifact)
    except ArtifactError as exc:
        raise CommandError(str(exc)) from None
    made_height, made_width = info['input_size']
    for flag, asked, made in (('--model', args.model, info.get('model') or args.model),
                              ('--precision', args.precision, info['precision']),
                              ('--height', args.height, made_height),
                              ('--width', args.width, made_width)):
        if asked is not None and asked != made:
            raise CommandError(f'{flag} {asked} does not match the artifact {args.artifact} '
                               f'({info["model"]}, {info["precision"]}, {made_height}x'
                               f'{made_width}); drop {flag} or export the artifact again')
    args.precision, args.height, args.width = info['precision'], made_height, made_width


def _list(args) -> int:
    from evit_ros.runtime.engine_cache import EngineCache
    cache = EngineCache(args.engine_dir)
    records = cache.records()
    if not records:
        print(f'no engines in {cache.directory}')
        return 0
    print(f'engines in {cache.directory}:')
    rows = [('ENGINE', 'MODEL', 'INPUT', 'PREC', 'TENSORRT', 'TYPING', 'CPU_MIOU', 'AGREE',
             'GPU', 'MB', 'BUILT', 'STATUS')]
    for record in records:
        key = record.key
        miou, agreement = artifact_checks(record.build)
        rows.append((
            record.path.name,
            key.model if key else '?',
            'x'.join(map(str, key.input_shape[-2:])) if key else '?',
            key.precision if key else '?',
            key.tensorrt_version if key else '?',
            str(record.build.get('typing', '?')),
            miou, agreement,
            f'{key.gpu_name} (sm {key.compute_capability})' if key else '?',
            f'{record.size_bytes / 1e6:.1f}',
            record.built_at or '?',
            record.status))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print('  '.join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def artifact_checks(build: dict) -> tuple:
    """Return the artifact's CPU CamVid mIoU and argmax agreement with fp32, as text.

    From the engine sidecar's ``build.artifact.checks`` (the artifact's own sidecar); ``-``
    when the engine was not compiled from a checked artifact (TensorRT 8.x builds).
    """
    checks = ((build or {}).get('artifact') or {}).get('checks') or {}
    miou, agreement = checks.get('camvid_miou'), checks.get('argmax_agreement')
    if isinstance(agreement, (int, float)):  # a fraction, or already a percentage
        agreement = float(agreement) * (100 if agreement <= 1 else 1)
    return (f'{float(miou):.2f}' if isinstance(miou, (int, float)) else '-',
            f'{agreement:.2f}%' if isinstance(agreement, float) else '-')


def _clean(args) -> int:
    from evit_ros.runtime.engine_cache import EngineCache, EngineCacheError
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
