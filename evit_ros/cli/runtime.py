"""``evit-ros export`` (checked ONNX) and ``evit-ros bench`` (latency of whole segment() calls)."""

import json
import sys
from pathlib import Path

from evit_ros.cli import CommandError, log_runtime_to_stderr
from evit_ros.cli.check_data import add_check_args, labelled_checks
from evit_ros.model.registry import get_entry, MODELS, UnknownModelError

BACKENDS = ('torch', 'onnxruntime', 'tensorrt', 'auto')
PRECISIONS = ('fp32', 'fp16', 'bf16', 'int8')


def register(subparsers) -> None:
    """Add ``export`` and ``bench`` to the ``evit-ros`` parser."""
    export = subparsers.add_parser(
        'export', help='export a precision artifact (ONNX fp32, fp16 or int8), checked first',
        description='Export at a fixed size: input "image" (Nx3xHxW float32, normalised RGB), '
                    'output "logits" (NxCxH/8xW/8 float32), any batch N. fp32 is compared '
                    'with PyTorch; fp16 (attention kept fp32) and int8 (explicit Q/DQ, '
                    'calibrated on --calib) are compared with fp32 on the CPU: finite on a '
                    'black and a real frame, argmax agreement, and with --check-data the '
                    'CamVid val mIoU within 0.3 (fp16) / 1.0 (int8) of fp32. The file and '
                    'its sidecar FILE.onnx.json are written only when the checks pass.')
    _model_args(export)
    export.add_argument('-o', '--output', required=True, metavar='FILE.onnx',
                        help='where to write the ONNX file (and FILE.onnx.json)')
    export.add_argument('--precision', default='fp32', metavar='{fp32,fp16,int8}',
                        help='numerics of the graph (default fp32)')
    export.add_argument('--calib', metavar='DIR|BAG',
                        help='int8: folder of images or rosbag2 bag to calibrate on')
    export.add_argument('--calib-frames', type=int, default=32, metavar='N',
                        help='int8: most calibration frames, spread over the source '
                             '(default 32)')
    export.add_argument('--calib-topic', metavar='TOPIC',
                        help="int8: the bag's image topic (default its only one)")
    add_check_args(export, 'write the artifact even when it misses its mIoU/agreement '
                           'bound (the sidecar records it)')
    export.add_argument('--opset', type=int, default=17, help='ONNX opset (default 17)')
    export.add_argument('--upsample', choices=('matmul', 'resize'), default='matmul',
                        help='head upsampling as constant matmuls (default: fast, and '
                             'parsed by any TensorRT) or cubic Resize (the release)')
    export.add_argument('--no-fold', action='store_true',
                        help='keep BatchNorm layers (default: folded into the convs)')
    export.add_argument('--image', metavar='FILE',
                        help='also check on this image (e.g. a frame of your camera)')
    export.set_defaults(func=_export)

    bench = subparsers.add_parser(
        'bench', help='time whole segment() calls on one backend',
        description='Warm up, then time RUNS segment() calls on one image (pre- and '
                    'post-processing included; the label map at the image size) and print '
                    'median / p90 / p99 latency and frames per second, with the machine and '
                    'library versions. Other processes on the CPU slow it down: compare '
                    'pipelines side by side in one run (bench/cpu_speed.py does).')
    _model_args(bench)
    bench.add_argument('--backend', choices=BACKENDS, default='auto',
                       help='inference backend (default auto: the fastest available, as the '
                            'node picks; the output says which ran)')
    bench.add_argument('--precision', choices=PRECISIONS, default='fp32',
                       help='precision (fp16/int8: tensorrt; fp16/bf16: torch)')
    bench.add_argument('--device', default='cpu', help='cpu, cuda or cuda:N')
    bench.add_argument('--threads', type=int, default=0,
                       help='intra-op threads (torch, onnxruntime); 0 = library default')
    bench.add_argument('--postprocess', choices=('auto', 'reference', 'fast'), default='auto',
                       help="logits to label map (default: the backend's choice)")
    bench.add_argument('--calib', metavar='DIR|BAG',
                       help='tensorrt int8: folder of images or rosbag2 bag to calibrate on')
    bench.add_argument('--image', metavar='FILE',
                       help='image to segment (default: a synthetic 1024x2048 street frame)')
    bench.add_argument('--runs', type=int, default=30, help='timed calls (default 30)')
    bench.add_argument('--warmup', type=int, default=3, help='untimed calls first (default 3)')
    bench.add_argument('--json', metavar='FILE', help='also write the results as JSON')
    bench.set_defaults(func=_bench)


def _model_args(parser) -> None:
    parser.add_argument('--model', required=True, help=f'model name ({", ".join(MODELS)})')
    parser.add_argument('--weights', default='official',
                        help='"official" (default), a checkpoint path, or "none" (random)')
    parser.add_argument('--height', type=int, help="network input height, a multiple of 32 "
                                                   "(default the model's)")
    parser.add_argument('--width', type=int, help='network input width, a multiple of 32')


def _network(args):
    """Return (entry, weights, (height, width)) from the common arguments."""
    from evit_ros.model import check_input_size
    try:
        entry = get_entry(args.model)
    except UnknownModelError as exc:
        raise CommandError(str(exc)) from None
    size = (args.height or entry.input_size[0], args.width or entry.input_size[1])
    try:
        check_input_size(*size)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    weights = None if args.weights == 'none' else args.weights
    return entry, weights, size


def _load_model(entry, weights):
    from evit_ros.model import CheckpointError, create_model
    from evit_ros.weights import WeightsNotFound
    try:
        return create_model(entry.name, weights=weights)
    except (CheckpointError, WeightsNotFound, OSError) as exc:
        raise CommandError(str(exc)) from None


def _read_rgb(path: str):
    import cv2
    bgr = cv2.imread(path, cv2.IMREAD_COLOR) if Path(path).is_file() else None
    if bgr is None:
        raise CommandError(f'cannot read image {path}: not a readable image file')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _export(args) -> int:
    from evit_ros.runtime.artifact import ArtifactError, PRECISIONS
    if args.precision not in PRECISIONS:
        raise CommandError(f'unknown precision {args.precision!r}; choose one of '
                           f'{", ".join(PRECISIONS)}')
    if args.precision != 'int8' and args.calib:
        raise CommandError(f'--calib is for int8 only, not {args.precision}')
    if args.precision == 'int8' and not args.calib:
        raise CommandError('int8 needs calibration frames: pass --calib DIR|BAG (a folder of '
                           'images or a rosbag2 bag from your camera)')
    for flag, value in (('--calib-frames', args.calib_frames),
                        ('--check-frames', args.check_frames)):
        if value is not None and value < 1:
            raise CommandError(f'{flag} must be >= 1, got {value}')
    entry, weights, size = _network(args)
    checks = labelled_checks(args, entry,
                             _read_rgb(args.image) if args.image else None) or True
    calibration = _calibration(args, size)
    model = _load_model(entry, weights)
    from evit_ros.runtime.artifact import export_artifact
    try:
        info = export_artifact(
            model, size, args.precision, args.output, calibration=calibration, entry=entry,
            checks=checks, opset=args.opset, fold=not args.no_fold, upsample=args.upsample,
            checkpoint_sha256=_checkpoint_sha256(entry, weights),
            metadata={'model': entry.name,
                      'weights': 'random' if weights is None else str(weights)},
            progress=lambda line: print(f'  {line} ...', file=sys.stderr, flush=True))
    except ArtifactError as exc:
        raise CommandError(str(exc)) from None
    print(artifact_summary(args.output, info))
    return 0


def artifact_summary(path, info) -> str:
    """Return the lines ``evit-ros export`` prints about a written artifact."""
    height, width = info['input_size']
    classes = info['output']['shape'][1]
    checks = info['checks']
    lines = [f'{path}: {info["precision"]}, {info["size_bytes"] / 1e6:.1f} MB, opset '
             f'{info["opset"]}, input "image" Nx3x{height}x{width} float32, output '
             f'"logits" Nx{classes}x{height // 8}x{width // 8} float32 (N: any batch)']
    if info['precision'] == 'fp32' and checks.get('pytorch_argmax_agreement') is not None:
        lines.append(f'  matches PyTorch: max |dlogit| {checks["pytorch_max_abs_diff"]:.2g}, '
                     f'argmax agreement {checks["pytorch_argmax_agreement"]:.4%}')
    if checks.get('skipped'):
        lines.append('  checks: none run')
    else:
        finite = ', '.join(checks['finite_inputs'])
        line = (f'  checks: finite on the {finite} frames; argmax agreement with fp32 '
                f'{checks["argmax_agreement"]:.2%} ({checks["agreement_on"]})')
        if checks.get('camvid_miou') is not None:
            line += (f'; CamVid mIoU {checks["camvid_miou"]:.2f} vs fp32 '
                     f'{checks["fp32_camvid_miou"]:.2f} on {checks["frames"]} frames (bound '
                     f'{checks["bound"]})')
        lines.append(line + ('' if checks.get('passed', True) else ' -- FAILED, forced'))
        for note in checks.get('notes', []):
            lines.append(f'  note: {note}')
    if info.get('calibration'):
        cal = info['calibration']
        lines.append(f'  calibrated on {cal["frames"]} frames of {cal["source"]}')
    lines.append(f'  sidecar: {path}.json')
    return '\n'.join(lines)


def _calibration(args, size):
    if not args.calib:
        return None
    from evit_ros.runtime.calibration import CalibrationData, CalibrationError
    try:
        return CalibrationData(args.calib, size, max_images=args.calib_frames,
                               topic=args.calib_topic)
    except CalibrationError as exc:
        raise CommandError(str(exc)) from None


def _checkpoint_sha256(entry, weights):
    """Return the sha256 of the checkpoint file the weights come from (None: random)."""
    if weights is None:
        return None
    from evit_ros.download import sha256_of
    if str(weights) == 'official':
        from evit_ros.weights import find_checkpoint
        return sha256_of(str(find_checkpoint(entry)))
    return sha256_of(str(weights))


def _bench(args) -> int:
    from evit_ros.runtime import BackendUnavailable, Segmenter
    from evit_ros.runtime.benchmark import (
        library_versions, machine, segmenter_phases, synthetic_frame, time_calls)
    entry, weights, size = _network(args)
    if args.runs < 1 or args.warmup < 0:
        raise CommandError('--runs must be >= 1 and --warmup >= 0')
    image = _read_rgb(args.image) if args.image else synthetic_frame()
    chosen = ''
    if args.image and not (args.height or args.width):
        from evit_ros.eval.replay import network_size_for
        size = network_size_for(entry.input_size, image.shape[:2])
        chosen = (f' (chosen for the image: its aspect ratio at about the pixel count of '
                  f'{entry.input_size[0]}x{entry.input_size[1]}; --height/--width set another)')
    log_runtime_to_stderr()
    options = {}
    if args.threads:
        options['threads'] = args.threads
    if args.calib:
        options['calib'] = args.calib
    from evit_ros.model import CheckpointError
    from evit_ros.weights import WeightsNotFound
    try:
        segmenter = Segmenter(entry.name, backend=args.backend, device=args.device,
                              input_size=size, weights=weights, precision=args.precision,
                              postprocess=args.postprocess, **options)
    except (BackendUnavailable, ValueError, CheckpointError, WeightsNotFound) as exc:
        raise CommandError(str(exc).splitlines()[0]) from None
    latency = time_calls(lambda: segmenter.segment(image), args.runs, args.warmup,
                         phases=lambda: segmenter_phases(segmenter))
    from evit_ros.eval.replay import running_on
    backend, device, precision = running_on(segmenter)
    result = {
        'model': entry.name, 'weights': 'random' if weights is None else str(weights),
        'backend': backend, 'device': device,
        'precision': precision, 'postprocess': segmenter.postprocess,
        'threads': args.threads, 'input_size': list(size),
        'image_size': list(image.shape[:2]), 'image': args.image or 'synthetic',
        'latency': latency.as_dict(), 'machine': machine(), 'versions': library_versions(),
        'command': 'evit-ros ' + ' '.join(sys.argv[1:]),
    }
    phases = '  '.join(f'{k} {v:.1f}' for k, v in latency.phases_ms.items())
    print(f'{entry.name} {size[0]}x{size[1]}{chosen} on {backend}/{device} {precision} '
          f'({segmenter.postprocess} post), image {image.shape[1]}x{image.shape[0]}:')
    print(f'  segment(): {latency.summary()}')
    print(f'  phases (median ms): {phases}')
    print(f'  machine: {result["machine"]["cpu"]}, {result["machine"]["cores_available"]} '
          f'cores, load {result["machine"]["load_average_1_5_15"]}')
    print('  versions: ' + ', '.join(f'{k} {v}' for k, v in result['versions'].items()))
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(result, indent=2) + '\n')
        except OSError as exc:
            raise CommandError(f'cannot write {args.json}: {exc.strerror or exc}') from None
    return 0
