#!/usr/bin/env python3
"""CPU speed of whole ``segment()`` calls: our CPU paths against the official pipeline.

Usage::

    .venv/bin/python bench/cpu_speed.py            # B0 at 512x1024, default and 1 thread
    .venv/bin/python bench/cpu_speed.py --models b0-cityscapes b1-cityscapes \\
        --sizes 512x1024 1024x2048 --json cpu_speed.json

Pipelines, all from a camera frame to a label map at the frame's resolution:

- ``reference``: what a user writes with the official code: the unmodified (BatchNorm
  unfolded) model in eager PyTorch fp32 under ``torch.inference_mode``, OpenCV bicubic
  resize, /255 and ImageNet normalisation, ``F.interpolate(bicubic)`` of the logits to the
  frame size, argmax.
- ``torch``: ``Segmenter(backend='torch')``: BatchNorm folded, release post-processing.
- ``torch+fast``: the same with ``postprocess='fast'`` (:func:`bicubic_argmax`).
- ``onnxruntime``: ``Segmenter(backend='onnxruntime')``: fp32 graph with BatchNorm folded
  and the head's bicubic upsampling as matmuls, fast post-processing.

Other processes share this CPU, so the pipelines run side by side: each round times
``--frames`` calls of every pipeline in turn, and medians are taken over all rounds.
The speed-up is median(reference) / median(pipeline); its range over rounds is printed too.
The frame is ``$EVIT_ROS_SHARED/data/frames/city_2048x1024.png`` (a real 1024x2048
street frame) when present, else a synthetic one. Official weights are used where found
(``$EVIT_ROS_WEIGHTS_DIR``), random ones otherwise (said in the output): with random weights
the label map, and so the fast post-processing's cost, is not representative.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from evit_ros.model import create_model
from evit_ros.runtime import Segmenter
from evit_ros.runtime.benchmark import library_versions, Latency, machine, synthetic_frame
from evit_ros.weights import WeightsNotFound

REPO = Path(__file__).resolve().parent.parent
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class ReferencePipeline:
    """The official pipeline, written as a user of the release would."""

    def __init__(self, model, input_size):
        self.model = model.eval()
        self.input_size = input_size

    def segment(self, rgb):
        """Return the label map of ``rgb`` at its own resolution."""
        height, width = self.input_size
        x = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_CUBIC)
        x = (x.astype(np.float32) / 255.0 - MEAN) / STD
        x = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None]))
        with torch.inference_mode():
            logits = self.model(x)
            logits = F.interpolate(logits, size=rgb.shape[:2], mode='bicubic',
                                   align_corners=False)
            return logits.argmax(1)[0].to(torch.uint8).numpy()


def load_frame():
    """Return (rgb, description): the real 1024x2048 frame, else a synthetic one."""
    shared = Path(os.environ.get('EVIT_ROS_SHARED', REPO.parent / 'shared'))
    path = shared / 'data' / 'frames' / 'city_2048x1024.png'
    if path.is_file():
        return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), str(path)
    return synthetic_frame(), 'synthetic 1024x2048 frame'


def load_model(name):
    """Return (model, weights description): official weights when found, else random."""
    try:
        return create_model(name, weights='official'), 'official'
    except WeightsNotFound:
        torch.manual_seed(0)
        return create_model(name), 'random (official checkpoint not found)'


def build_pipelines(model, size, threads):
    """Return ``{name: object with segment(rgb)}`` for one model, size and thread count."""
    options = {'threads': threads} if threads else {}
    pipelines = {
        'reference': ReferencePipeline(model, size),
        'torch': Segmenter(model, backend='torch', input_size=size, **options),
        'torch+fast': Segmenter(model, backend='torch', input_size=size,
                                postprocess='fast', **options),
        'onnxruntime': Segmenter(model, backend='onnxruntime', input_size=size, **options),
    }
    return pipelines


def run_case(model, size, threads, frame, rounds, frames):
    """Time every pipeline side by side; return the case's result dict."""
    torch.set_num_threads(threads or os.cpu_count())
    pipelines = build_pipelines(model, size, threads)
    reference_labels = pipelines['reference'].segment(frame)
    wall = {name: [] for name in pipelines}
    cpu = {name: [] for name in pipelines}
    per_round = {name: [] for name in pipelines}
    agreement = {}
    for name, pipeline in pipelines.items():        # warm-up, and the label maps
        for _ in range(2):
            labels = pipeline.segment(frame)
        agreement[name] = float((labels == reference_labels).mean())
    loads = [os.getloadavg()[0]]
    for _ in range(rounds):
        for name, pipeline in pipelines.items():
            times = []
            for _ in range(frames):
                start_cpu, start = time.process_time(), time.perf_counter()
                pipeline.segment(frame)
                times.append((time.perf_counter() - start) * 1e3)
                cpu[name].append((time.process_time() - start_cpu) * 1e3)
            wall[name] += times
            per_round[name].append(float(np.median(times)))
        loads.append(os.getloadavg()[0])
    stats = {name: Latency.of(wall[name], cpu[name]) for name in pipelines}
    ref = stats['reference'].median_ms
    result = {'input_size': list(size), 'threads': threads or os.cpu_count(),
              'load_average_1min': [round(x, 2) for x in loads], 'pipelines': {}}
    for name in pipelines:
        ratios = [r / p for r, p in zip(per_round['reference'], per_round[name])]
        result['pipelines'][name] = {
            **stats[name].as_dict(), 'speedup': ref / stats[name].median_ms,
            'speedup_per_round': [round(x, 2) for x in ratios],
            'label_agreement_with_reference': agreement[name]}
    return result


def print_case(model_name, weights, result):
    """Print one case as a table."""
    size = 'x'.join(map(str, result['input_size']))
    print(f'\n{model_name} ({weights} weights) at {size}, {result["threads"]} thread(s), '
          f'load {result["load_average_1min"]}')
    print(f'  {"pipeline":18s} {"median ms":>9s} {"p90 ms":>8s} {"fps":>6s} {"cpu ms":>8s} '
          f'{"speed-up":>8s} {"per round":>18s} {"labels = ref":>12s}')
    for name, row in result['pipelines'].items():
        rounds = f'{min(row["speedup_per_round"]):.2f}-{max(row["speedup_per_round"]):.2f}'
        print(f'  {name:18s} {row["median_ms"]:9.1f} {row["p90_ms"]:8.1f} {row["fps"]:6.2f} '
              f'{row["cpu_ms"]:8.1f} {row["speedup"]:7.2f}x {rounds:>18s} '
              f'{row["label_agreement_with_reference"]:12.4%}')


def parse_size(text):
    """Parse ``HxW``."""
    height, width = text.lower().split('x')
    return int(height), int(width)


def main(argv=None):
    """Run the comparison; print tables and optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', nargs='+', default=['b0-cityscapes'])
    parser.add_argument('--sizes', nargs='+', type=parse_size, default=[(512, 1024)])
    parser.add_argument('--threads', nargs='+', type=int, default=[0, 1],
                        help='thread settings to compare (0: library default = all cores)')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--frames', type=int, default=5, help='timed calls per round')
    parser.add_argument('--json', help='write all results here')
    args = parser.parse_args(argv)
    frame, frame_source = load_frame()
    print(f'frame: {frame_source} ({frame.shape[1]}x{frame.shape[0]})')
    info = {'machine': machine(), 'versions': library_versions(), 'frame': frame_source,
            'command': ' '.join([Path(sys.argv[0]).name] + sys.argv[1:]), 'cases': []}
    print(f'machine: {info["machine"]}')
    print(f'versions: {info["versions"]}')
    for name in args.models:
        model, weights = load_model(name)
        for size in args.sizes:
            for threads in args.threads:
                result = run_case(model, size, threads, frame, args.rounds, args.frames)
                result.update(model=name, weights=weights)
                print_case(name, weights, result)
                info['cases'].append(result)
                if args.json:   # keep what is done even if a later case is interrupted
                    Path(args.json).write_text(json.dumps(info, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
