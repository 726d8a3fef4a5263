#!/usr/bin/env python3
"""CPU inference: intra-op threads in one run vs concurrent single-threaded runs.

Usage::

    .venv/bin/python bench/cpu_streams.py                   # B0, 512x1024, onnxruntime
    .venv/bin/python bench/cpu_streams.py --size 256x512 --runs 20

Why the node has ``workers``: on a small CPU, does one inference spread over every core
(``cpu_threads: 0``) or several inferences at once, one core each (``workers``), segment
more frames per second? Each row runs the official B0 in onnxruntime on the CPU with
``threads`` intra-op threads per run, ``streams`` threads calling the same session at once,
and ``batch`` frames per run, ``--runs`` runs per stream after one warm-up run, and prints
frames per second and the milliseconds of one run. Inference only (a fixed preprocessed
input); the node adds decoding, post-processing and DDS to each frame.

The weights come from the evit_ros cache or ``EVIT_ROS_WEIGHTS_DIR``, as for the node; the
ONNX export is cached on disk by the first row. Other processes share this CPU: compare
only numbers from one run.
"""

import argparse
import os
import sys
import threading
import time

import numpy as np

#: (intra-op threads per run, concurrent streams, frames per run)
ROWS = ((0, 1, 1), (0, 1, 3), (1, 1, 1), (1, 2, 1), (1, 3, 1), (1, 2, 3))


def frames_per_second(backend, x: np.ndarray, streams: int, runs: int) -> float:
    """Run ``backend.infer(x)`` ``runs`` times in each of ``streams`` threads; frames/s."""
    backend.infer(x)

    def stream():
        for _ in range(runs):
            backend.infer(x)
    threads = [threading.Thread(target=stream) for _ in range(streams)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return streams * runs * x.shape[0] / (time.perf_counter() - start)


def main() -> int:
    """Print one row per configuration of :data:`ROWS`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', default='512x1024', help='network size HxW')
    parser.add_argument('--runs', type=int, default=12, help='runs per stream')
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split('x'))
    from evit_ros.runtime import Segmenter
    from evit_ros.runtime.benchmark import library_versions, machine
    print(f'machine: {machine()}')
    print(f'versions: {library_versions()}')
    inputs = np.random.default_rng(0).standard_normal((3, 3, height, width), np.float32)
    cores = os.cpu_count()
    print(f'B0 onnxruntime CPU at {height}x{width}, {args.runs} runs per stream, {cores} CPUs')
    print('| threads per run | streams | frames per run | frames/s | ms per run |')
    print('|---|---|---|---|---|')
    for threads, streams, batch in ROWS:
        options = {'threads': threads} if threads else {}
        segmenter = Segmenter('b0-cityscapes', backend='onnxruntime', device='cpu',
                              input_size=(height, width), weights='official', **options)
        fps = frames_per_second(segmenter.backend, inputs[:batch], streams, args.runs)
        per_run = 1e3 * streams * batch / fps
        print(f'| {threads or f"all ({cores})"} | {streams} | {batch} | {fps:.1f} | '
              f'{per_run:.0f} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
