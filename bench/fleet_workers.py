#!/usr/bin/env python3
"""Frames per second of ``evit-ros evaluate`` on a local Dask cluster: 1 vs 2 workers.

Usage::

    .venv/bin/python bench/fleet_workers.py                        # CamVid, 352x480
    .venv/bin/python bench/fleet_workers.py --workers 1 2 --bags 4 --network-size 352x480
    .venv/bin/python bench/fleet_workers.py --repeat 3          # alternate, median of 3

The 101 real CamVid val frames (``$EVIT_ROS_SHARED/data/camvid``, default ``../shared``) are
split into ``--bags`` mcap bags, and the same fleet is evaluated once per worker count, one
after the other in this run, each into a fresh output folder (nothing is resumed). Each
worker has one Dask thread and ``cores // workers`` inference threads (the default of
``evit-ros evaluate``), so every row uses all the cores. Per row:

- **end to end**: frames / wall time of the whole run, the cluster's start-up (worker
  processes importing torch and building the model) included;
- **after start-up**: frames / time from the first frame done to the last, which is what a
  long fleet sees;
- the mIoU, which must not change with the worker count.

With ``--repeat N`` the worker counts alternate N times (so that load from other processes
falls on all alike) and the run of median wall time of each count is shown (the slower
of the middle two for an even N).

The weights come from ``EVIT_ROS_WEIGHTS_DIR`` (default ``$EVIT_ROS_SHARED/weights``). The
model is built once in this process before the rows, so that the ONNX export (cached on
disk, as the workers find it) is not timed as part of the first row.
"""

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from evit_ros.eval.cluster import available_cores, DaskRunner
from evit_ros.eval.fleet import FleetSettings, SegmenterCache
from evit_ros.eval.fleet_run import evaluate_fleet
from evit_ros.eval.make_bag import folder_frames, list_images, pair_labels, write_bag

TOPIC = '/camvid/image'


def make_fleet(shared: Path, folder: Path, bags: int) -> list:
    """Split the CamVid val frames into ``bags`` mcap bags under ``folder``."""
    images = list_images(shared / 'data' / 'camvid' / 'val')
    pairs = pair_labels(images, shared / 'data' / 'camvid' / 'valannot', 'camvid')
    size = -(-len(images) // bags)
    paths = []
    for i in range(bags):
        part = images[i * size:(i + 1) * size]
        path = folder / f'drive_{i}'
        write_bag(folder_frames(part, pairs), path, TOPIC, label_format='camvid',
                  start_ns=1_600_000_000 * 10**9 + i * size * 10**8)
        paths.append(path)
    return paths


class _FirstFrame:
    """Wrap a runner to note when the first frame of the run was done."""

    def __init__(self, runner):
        self.runner = runner
        self.first = None

    def start(self, bags):
        self.runner.start(bags)

    def describe(self):
        return self.runner.describe()

    def run(self, paths, settings, on_frames, stop):
        def frames(count):
            if self.first is None:
                self.first = time.monotonic()
            on_frames(count)
        yield from self.runner.run(paths, settings, frames, stop)

    def close(self):
        self.runner.close()


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--workers', type=int, nargs='+', default=[1, 2])
    parser.add_argument('--bags', type=int, default=4)
    parser.add_argument('--network-size', default='352x480')
    parser.add_argument('--backend', default='auto')
    parser.add_argument('--repeat', type=int, default=1,
                        help='rounds over the worker counts (alternating); the median row '
                             'of each count is shown')
    args = parser.parse_args()
    repo = Path(__file__).resolve().parent.parent
    shared = Path(os.environ.get('EVIT_ROS_SHARED', repo.parent / 'shared')).resolve()
    if not (shared / 'data' / 'camvid').is_dir():
        print(f'needs the CamVid frames in {shared}/data/camvid (set EVIT_ROS_SHARED)',
              file=sys.stderr)
        return 1
    os.environ.setdefault('EVIT_ROS_WEIGHTS_DIR', str(shared / 'weights'))
    height, width = (int(v) for v in args.network_size.split('x'))
    settings = FleetSettings(image_topic=TOPIC, backend=args.backend,
                             network_size=(height, width))
    # Build the model once here first, so that an ONNX export (cached on disk) is not
    # timed as part of whichever row runs first.
    SegmenterCache().get(settings, 1)
    rows = []
    with tempfile.TemporaryDirectory(prefix='fleet_bench_') as tmp:
        paths = make_fleet(shared, Path(tmp) / 'bags', args.bags)
        runs = {workers: [] for workers in args.workers}
        for round_ in range(max(1, args.repeat)):
            for workers in args.workers:
                runner = _FirstFrame(DaskRunner(workers=workers))
                start = time.monotonic()
                outcome = evaluate_fleet(paths, settings, Path(tmp) / f'out_{workers}_{round_}',
                                         runner, progress=False, say=lambda text: None)
                end = time.monotonic()
                report = outcome.report
                frames = report['frames']
                steady = frames / (end - runner.first) if runner.first else 0.0
                runs[workers].append((
                    workers, max(1, available_cores() // workers), frames, end - start,
                    frames / (end - start), steady, report['miou'],
                    f"{report['backend']}/{report['device']}/{report['precision']}"))
        for workers, results in runs.items():
            rows.append(sorted(results, key=lambda row: row[3])[len(results) // 2])
    print(f'# {platform.node()}: {available_cores()} cores, {platform.processor() or "cpu"}; '
          f'load average {os.getloadavg()[0]:.1f} at the end; b0-cityscapes at '
          f'{args.network_size}, {args.bags} bags of CamVid val, median of '
          f'{max(1, args.repeat)} alternating runs')
    header = ('workers', 'threads each', 'frames', 'wall s', 'fps end to end',
              'fps after start-up', 'mIoU', 'ran on')
    print('| ' + ' | '.join(header) + ' |')
    print('|' + '---|' * len(header))
    for workers, threads, frames, wall, fps, steady, miou, ran in rows:
        print(f'| {workers} | {threads} | {frames} | {wall:.1f} | {fps:.2f} | {steady:.2f} | '
              f'{miou * 100:.2f} | {ran} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
