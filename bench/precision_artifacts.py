#!/usr/bin/env python3
"""CamVid val accuracy of the fp32, fp16 and int8 artifacts of a model, side by side.

Usage::

    .venv/bin/python bench/precision_artifacts.py --check-data ../shared/data/camvid \\
        --calib ../shared/data/camvid/val                     # the README table (101 frames)
    .venv/bin/python bench/precision_artifacts.py --check-data ../shared/data/camvid \\
        --calib ../shared/data/frames --check-frames 20        # calibrated on another camera
    .venv/bin/python bench/precision_artifacts.py --check-data ../shared/data/camvid \\
        --calib ../shared/data/camvid/val --sensitivity        # how the int8 recipe was found

Each artifact is made by :func:`evit_ros.runtime.artifact.export_artifact` (``force``, so a
miss is reported instead of refused) at ``--height`` x ``--width`` (default 736x960, the
CamVid protocol), then scored with ONNX Runtime on the CPU against the fp32 graph on the
same frames: mIoU over the CamVid classes, pixel agreement of the label maps, per-class IoU.
int8 is scored twice: with Q/DQ applied as written (fusions off, what the artifact checks
use, closest to TensorRT's arithmetic) and as ONNX Runtime runs it by default (its own int8
kernels). ``--sensitivity`` quantizes each convolution / MatMul alone and prints the argmax
agreement with fp32 on a few frames: the measurement behind ``int8.RECIPE``.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from evit_ros.eval.labelled_images import LabelledImages
from evit_ros.model import create_model, get_entry
from evit_ros.runtime.artifact import ArtifactChecks, export_artifact, PRECISIONS


def parse_args(argv=None):
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', default='b0-cityscapes')
    parser.add_argument('--weights', default='official')
    parser.add_argument('--height', type=int, default=736)
    parser.add_argument('--width', type=int, default=960)
    parser.add_argument('--check-data', required=True, help='CamVid root (val/, valannot/)')
    parser.add_argument('--check-frames', type=int, help='frames checked (default all)')
    parser.add_argument('--calib', required=True, help='int8 calibration folder or bag')
    parser.add_argument('--calib-frames', type=int, default=32)
    parser.add_argument('--out', help='folder for the artifacts (default a temporary one)')
    parser.add_argument('--json', help='also write the results here')
    parser.add_argument('--precisions', nargs='+', default=list(PRECISIONS),
                        choices=PRECISIONS, help='artifacts to make (default all three)')
    parser.add_argument('--sensitivity', action='store_true',
                        help='per-layer int8 sensitivity scan instead of the table')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Make the three artifacts, score them, print the table."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    entry = get_entry(args.model)
    model = create_model(entry.name, weights=args.weights)
    size = (args.height, args.width)
    if args.sensitivity:
        return sensitivity(model, size, args)
    labelled = LabelledImages.camvid(args.check_data, frames=args.check_frames)
    out = Path(args.out or tempfile.mkdtemp(prefix='evit_ros_artifacts_'))
    rows = {}
    for precision in args.precisions:
        started = time.monotonic()
        info = export_artifact(
            model, size, precision, out / f'{entry.name}_{precision}.onnx', entry=entry,
            calibration=args.calib if precision == 'int8' else None,
            calibration_frames=args.calib_frames,
            checks=ArtifactChecks(labelled=labelled, force=True))
        rows[precision] = info
        print(f'{precision}: {time.monotonic() - started:.0f} s', file=sys.stderr)
    fused = (int8_with_ort_kernels(out / f'{entry.name}_int8.onnx', labelled, size)
             if 'int8' in rows else None)
    print_table(rows, fused, labelled, args)
    if args.json:
        kernels = fused and {'miou': fused['miou'], 'per_class': fused['per_class']}
        Path(args.json).write_text(json.dumps({'artifacts': rows, 'int8_ort_kernels': kernels,
                                               'command': ' '.join(sys.argv)}, indent=2) + '\n')
    return 0


def int8_with_ort_kernels(path, labelled, size):
    """Score the int8 artifact as ONNX Runtime runs it by default (QDQ fused to int8 ops)."""
    import onnxruntime as ort

    from evit_ros.runtime.preprocess import labels_from_logits, preprocess
    run = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])

    def segment(rgb):
        return labels_from_logits(run.run(None, {'image': preprocess(rgb, size)})[0],
                                  rgb.shape[:2])
    return labelled.score(segment)


def print_table(rows, fused, labelled, args) -> None:
    """Print the markdown table of the README."""
    first = next(iter(rows.values()))['checks']
    classes = list(first['fp32_camvid_per_class'])
    calibrated = (f'; int8 calibrated on {rows["int8"]["calibration"]["frames"]} frames of '
                  f'{args.calib}' if 'int8' in rows else '')
    print(f'{args.model} at {args.height}x{args.width}, {len(labelled)} CamVid val frames, '
          f'ONNX Runtime CPU{calibrated}')
    print('| artifact | CamVid mIoU | vs fp32 | label-map agreement with fp32 | '
          'largest per-class gap | int8 layers |')
    print('|---|---|---|---|---|---|')
    for precision, info in rows.items():
        checks = info['checks']
        gaps = {name: checks['camvid_per_class'][name] - checks['fp32_camvid_per_class'][name]
                for name in classes if checks['camvid_per_class'][name] is not None}
        worst = min(gaps, key=gaps.get)
        agreement = (checks['pytorch_argmax_agreement'] if precision == 'fp32'
                     else checks['argmax_agreement'])
        what = 'vs PyTorch, network output' if precision == 'fp32' else 'image resolution'
        print(f'| {precision} | {checks["camvid_miou"]:.2f} | '
              f'{checks["camvid_miou"] - checks["fp32_camvid_miou"]:+.2f} | '
              f'{agreement:.2%} ({what}) | {worst} {gaps[worst]:+.2f} | '
              f'{info["recipe"].get("int8_layers", "-")} |')
    if fused is None:
        return
    gap = fused['miou'] - first['fp32_camvid_miou']
    print(f'| int8, ONNX Runtime int8 kernels | {fused["miou"]:.2f} | {gap:+.2f} | - | - | '
          f'{rows["int8"]["recipe"]["int8_layers"]} |')


def sensitivity(model, size, args) -> int:
    """Quantize each Conv / MatMul alone; print its argmax agreement with fp32."""
    import onnxruntime as ort

    from evit_ros.runtime.calibration import CalibrationData
    from evit_ros.runtime.export import build_onnx
    from evit_ros.runtime.int8 import quantize_int8
    from evit_ros.runtime.preprocess import preprocess
    base, _ = build_onnx(model, size, check=False, dynamic_batch=True)
    calibration = CalibrationData(args.calib, size, max_images=min(args.calib_frames, 8))
    labelled = LabelledImages.camvid(args.check_data, frames=args.check_frames or 3)
    inputs = [preprocess(labelled.read_rgb(f), size) for f in labelled.files]
    options = ort.SessionOptions()
    options.add_session_config_entry('session.disable_quant_qdq', '1')

    def outputs(proto):
        run = ort.InferenceSession(proto.SerializeToString(), options,
                                   providers=['CPUExecutionProvider'])
        return [run.run(None, {'image': x})[0] for x in inputs]
    reference = outputs(base)
    print('| layer quantized alone | argmax agreement with fp32 |')
    print('|---|---|')
    for node in base.graph.node:
        if node.op_type not in ('Conv', 'MatMul'):
            continue
        quantized, _ = quantize_int8(base, calibration, only=[node.name])
        agreement = np.mean([(a.argmax(1) == b.argmax(1)).mean()
                             for a, b in zip(outputs(quantized), reference)])
        print(f'| {node.name} | {agreement:.4f} |', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
