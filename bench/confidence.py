"""Error rate of CamVid val pixels by the node's confidence: under 50 % vs over 90 %.

Runs the official B0 (Cityscapes) on the CamVid val frames of the shared folder at 736x960,
as the accuracy test does, and prints the two error rates and the share of pixels in
each band::

    python bench/confidence.py [--frames N] [--backend auto]
"""

import argparse
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parent.parent.parent / 'shared'


def main() -> int:
    """Print the error rates of low- and high-confidence pixels."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--frames', type=int, default=0, help='first N frames (0: all 101)')
    parser.add_argument('--backend', default='auto')
    parser.add_argument('--shared', type=Path, default=SHARED)
    args = parser.parse_args()
    camvid = args.shared / 'data' / 'camvid'
    weights = args.shared / 'weights' / 'efficientvit_seg_b0_cityscapes.pt'
    if not weights.is_file() or not (camvid / 'val').is_dir():
        print(f'error: needs {weights} and {camvid}/val', file=sys.stderr)
        return 1
    from evit_ros.eval.confidence import confidence_errors, HIGH, LOW
    from evit_ros.eval.labels import MAPPINGS
    from evit_ros.runtime import Segmenter
    segmenter = Segmenter('b0-cityscapes', backend=args.backend, weights=str(weights),
                          input_size=(736, 960))
    images = sorted((camvid / 'val').glob('*.png'))
    if args.frames:
        images = images[:args.frames]
    start = time.perf_counter()
    result = confidence_errors(segmenter, images, camvid / 'valannot', MAPPINGS['camvid'])
    total = result.low_pixels + result.high_pixels
    print(f'b0-cityscapes on {segmenter.backend_name}, {result.frames} CamVid val frames '
          f'at 736x960 ({time.perf_counter() - start:.0f} s)')
    print(f'confidence < {LOW:.0%}: error rate {result.low_error_rate:.1%} '
          f'({result.low_pixels} pixels)')
    print(f'confidence > {HIGH:.0%}: error rate {result.high_error_rate:.1%} '
          f'({result.high_pixels} pixels)')
    print(f'pixels in the two bands: {total}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
