"""Segment the shared reference frames and save label maps, logits and timings.

Architecture-neutral worker of the ARM check: ``check_arm64.py`` runs it once with the
x86 interpreter and once with an emulated aarch64 one, then compares what both saved.
It needs only the runtime layer's imports (torch, numpy, opencv, pyyaml; onnxruntime
for that backend), so it also serves as a smoke test of a real ARM install::

    python bench/arm64/segment_frames.py --out /tmp/labels_here

Writes ``<out>/<backend>_<H>x<W>_<frame>.labels.npy`` (uint8 label map at the frame's
resolution), ``... .logits.npy`` (1xCxH/8xW/8 float32) and ``<out>/manifest.json``
(versions, timings, and which backend ``backend='auto'`` picks on this machine).
"""

import argparse
import json
import os
from pathlib import Path
import platform
import sys
import time

START = time.perf_counter()

# Frames at the small network size, and the one full-resolution frame at the large size.
SMALL_FRAMES = ('data/frames/aachen_000000_000019_leftImg8bit.png',
                'data/frames/aachen_000001_000019_leftImg8bit.png',
                'data/frames/aachen_000002_000019_leftImg8bit.png',
                'data/frames/aachen_000003_000019_leftImg8bit.png',
                'data/frames/frankfurt_000000_002196_leftImg8bit.png',
                'data/cityscapes_val_sample/frankfurt_000000_000294_leftImg8bit.png')
LARGE_FRAMES = ('data/frames/city_2048x1024.png',)


def parse_size(text: str):
    """Return ``(height, width)`` from ``HxW``."""
    height, width = text.lower().split('x')
    return int(height), int(width)


def versions() -> dict:
    """Return the interpreter, machine and library versions of this process."""
    import cv2
    import numpy
    import torch
    found = {'machine': platform.machine(), 'python': platform.python_version(),
             'torch': torch.__version__, 'numpy': numpy.__version__, 'cv2': cv2.__version__,
             'torch_threads': torch.get_num_threads()}
    try:
        import onnxruntime
        found['onnxruntime'] = onnxruntime.__version__
    except ImportError:
        found['onnxruntime'] = None
    return found


def jobs(shared: Path, small, large, limit: int):
    """Return the ``(size, frame path)`` pairs to segment, in order."""
    planned = [(small, shared / name) for name in SMALL_FRAMES[:limit]]
    if large:
        planned += [(large, shared / name) for name in LARGE_FRAMES]
    missing = [str(path) for _, path in planned if not path.is_file()]
    if missing:
        raise SystemExit(f'missing frames: {", ".join(missing)} (set EVIT_ROS_SHARED)')
    return planned


def run_backend(backend: str, planned, out: Path, threads: int) -> dict:
    """Segment every planned frame with one backend; return its manifest entry."""
    import cv2
    import numpy as np
    from evit_ros.runtime import BackendUnavailable, Segmenter

    entry = {'available': True, 'frames': []}
    segmenters = {}
    for size, path in planned:
        if size not in segmenters:
            built = time.perf_counter()
            options = {'threads': threads} if threads else {}
            try:
                segmenters[size] = Segmenter('b0-cityscapes', backend=backend,
                                             input_size=size, **options)
            except (BackendUnavailable, ValueError, ImportError) as error:
                return {'available': False, 'reason': f'{type(error).__name__}: {error}'}
            entry.setdefault('build_s', {})[f'{size[0]}x{size[1]}'] = round(
                time.perf_counter() - built, 3)
        segmenter = segmenters[size]
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        began = time.perf_counter()
        label_map = segmenter.segment(bgr, encoding='bgr8')
        wall_ms = (time.perf_counter() - began) * 1e3
        stem = f'{backend}_{size[0]}x{size[1]}_{path.stem}'
        np.save(out / f'{stem}.labels.npy', label_map)
        np.save(out / f'{stem}.logits.npy', segmenter.logits.numpy().astype(np.float32))
        timings = segmenter.timings
        entry['frames'].append({
            'name': stem, 'frame': path.name, 'input_size': list(size),
            'label_shape': list(label_map.shape), 'wall_ms': round(wall_ms, 1),
            'preprocess_ms': round(timings.preprocess_ms, 1),
            'inference_ms': round(timings.inference_ms, 1),
            'postprocess_ms': round(timings.postprocess_ms, 1)})
        print(f'{backend:12s} {stem}: {wall_ms:9.1f} ms', flush=True)
    return entry


def resolve_auto(size) -> dict:
    """Return the backend ``auto`` picks here and the log lines saying why."""
    import logging
    from evit_ros.runtime import BackendUnavailable, Segmenter

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__(logging.INFO)
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    collect = Collect()
    logger = logging.getLogger('evit_ros.runtime')
    logger.addHandler(collect)
    logger.setLevel(logging.INFO)
    try:
        chosen = Segmenter('b0-cityscapes', backend='auto', input_size=size).backend_name
    except (BackendUnavailable, ValueError) as error:
        chosen = f'none ({type(error).__name__}: {error})'
    finally:
        logger.removeHandler(collect)
    return {'backend': chosen, 'log': collect.lines}


def main(argv=None) -> int:
    """Segment the frames with each requested backend and write the manifest."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', required=True, type=Path, help='folder for the .npy files')
    parser.add_argument('--shared', type=Path, default=Path(os.environ.get(
        'EVIT_ROS_SHARED', Path(__file__).resolve().parents[2].parent / 'shared')),
        help='the shared reference folder (default $EVIT_ROS_SHARED or ../shared)')
    parser.add_argument('--backends', default='torch,onnxruntime',
                        help='comma-separated backends; unavailable ones are recorded, '
                             'not fatal')
    parser.add_argument('--small', type=parse_size, default=(256, 512),
                        help='network size for the 512x256 frames (default 256x512)')
    parser.add_argument('--large', default='512x1024',
                        help='network size for the 2048x1024 frame, or "none" to skip it')
    parser.add_argument('--limit', type=int, default=len(SMALL_FRAMES),
                        help='use only the first N small frames')
    parser.add_argument('--threads', type=int, default=0,
                        help='backend threads (0: the backend default)')
    parser.add_argument('--no-auto', dest='auto', action='store_false',
                        help='do not record which backend "auto" picks')
    args = parser.parse_args(argv)
    large = None if args.large.lower() == 'none' else parse_size(args.large)
    if not os.environ.get('EVIT_ROS_WEIGHTS_DIR'):
        os.environ['EVIT_ROS_WEIGHTS_DIR'] = str(args.shared / 'weights')
    planned = jobs(args.shared, args.small, large, args.limit)
    args.out.mkdir(parents=True, exist_ok=True)

    imported = time.perf_counter()
    import evit_ros.runtime  # noqa: F401  (timed: imports are slow under emulation)
    manifest = {'versions': versions(),
                'import_s': round(time.perf_counter() - imported, 3), 'backends': {}}
    for backend in args.backends.split(','):
        began = time.perf_counter()
        manifest['backends'][backend] = run_backend(backend, planned, args.out, args.threads)
        manifest['backends'][backend]['total_s'] = round(time.perf_counter() - began, 3)
    if args.auto:
        manifest['auto'] = resolve_auto(args.small)
    manifest['process_s'] = round(time.perf_counter() - START, 3)
    (args.out / 'manifest.json').write_text(json.dumps(manifest, indent=1) + '\n')
    print(json.dumps({'versions': manifest['versions'], 'process_s': manifest['process_s']}),
          flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
