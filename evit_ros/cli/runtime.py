"""``evit-ros export`` (checked ONNX) and ``evit-ros bench`` (latency of whole segment() calls)."""

import json
import sys
from pathlib import Path

from evit_ros.cli import CommandError, log_runtime_to_stderr
from evit_ros.model.registry import get_entry, MODELS, UnknownModelError

BACKENDS = ('torch', 'onnxruntime', 'tensorrt', 'auto')
PRECISIONS = ('fp32', 'fp16', 'bf16', 'int8')


def register(subparsers) -> None:
    """Add ``export`` and ``bench`` to the ``evit-ros`` parser."""
    export = subparsers.add_parser(
        'export', help='export a model to ONNX, checked against PyTorch',
        description='Export at a fixed size: input "image" (1x3xHxW float32, normalised RGB), '
                    'output "logits" (1xCxH/8xW/8). The file is written only after '
                    'onnx.checker and a comparison with PyTorch through ONNX Runtime pass '
                    '(max |dlogit| <= 1e-3, argmax agreement >= 99.9%, finite on a black '
                    'frame).')
    _model_args(export)
    export.add_argument('-o', '--output', required=True, metavar='FILE.onnx',
                        help='where to write the ONNX file')
    export.add_argument('--opset', type=int, default=17, help='ONNX opset (default 17)')
    export.add_argument('--upsample', choices=('matmul', 'resize'), default='matmul',
                        help='head upsampling as constant matmuls (default: fast, and '
                             'parsed by any TensorRT) or cubic Resize (the release)')
    export.add_argument('--no-fold', action='store_true',
                        help='keep BatchNorm layers (default: folded into the convs)')
    export.add_argument('--image', metavar='FILE',
                        help='also check parity on this image (e.g. a frame of your camera)')
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
    from evit_ros.runtime.export import export_onnx, ExportError
    from evit_ros.runtime.preprocess import preprocess
    entry, weights, size = _network(args)
    model = _load_model(entry, weights)
    sample = preprocess(_read_rgb(args.image), size) if args.image else None
    try:
        report = export_onnx(model, size, args.output, opset=args.opset,
                             fold=not args.no_fold, upsample=args.upsample, sample=sample,
                             metadata={'model': entry.name,
                                       'weights': 'random' if weights is None else
                                       str(weights)})
    except ExportError as exc:
        raise CommandError(str(exc)) from None
    shape = 'x'.join(map(str, report.input_shape))
    out = 'x'.join(map(str, report.output_shape))
    print(f'{report.path}: {report.size_bytes / 1e6:.1f} MB, opset {report.opset}, input '
          f'"{report.input_name}" {shape} float32, output "{report.output_name}" {out}; '
          f'matches PyTorch: max |dlogit| {report.max_abs_diff:.2g}, argmax agreement '
          f'{report.argmax_agreement:.4%}')
    return 0


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
