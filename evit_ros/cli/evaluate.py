"""``evit-ros evaluate BAGS...``: replay many bags on a Dask cluster into one merged report."""

import argparse
import sys
from pathlib import Path
from typing import Tuple

from evit_ros.cli import CommandError

DEFAULT_BACKEND = 'auto'


def _network_size(text: str) -> Tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected HxW such as 736x960, got {text!r}') from None
    return height, width


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a whole number, got {text!r}') from None
    if value < 0:
        raise argparse.ArgumentTypeError(f'must be 0 or more, got {value}')
    return value


def register(subparsers) -> None:
    """Add ``evaluate`` to the ``evit-ros`` parser."""
    parser = subparsers.add_parser(
        'evaluate', help='replay many bags (folders, globs, list files) on a Dask cluster; '
                         'one merged report',
        description='Replay every bag offline as `replay` does, on a local Dask cluster '
                    '(worker processes on 127.0.0.1) or an existing one (--scheduler), and '
                    'write into --out: report.json / report.md for the whole fleet (mIoU '
                    'from the confusion matrices of all frames summed, per-bag table, '
                    'per-class IoU, confusion matrix, worst frames) and a record per bag in '
                    'OUT/bags. A re-run skips bags recorded with the same settings; --force '
                    'redoes them. Exit status 1 when any bag failed.')
    parser.add_argument('bags', nargs='+', metavar='BAGS',
                        help='bags (folder or .mcap/.db3), folders of bags, quoted globs, or '
                             'list files (one path per line, # comments)')
    parser.add_argument('--image-topic', required=True, help='camera topic in every bag')
    parser.add_argument('--label-topic',
                        help='ground-truth topic (default <TOPIC>/label_gt when present)')
    parser.add_argument('--label-format',
                        help='how label values read (default: what make-bag stored, else '
                             'trainid)')
    parser.add_argument('--model', default='b0-cityscapes', help='model (b0-cityscapes)')
    parser.add_argument('--weights', default='official',
                        help='"official" (EVIT_ROS_WEIGHTS_DIR or the cache, on each worker) '
                             'or a checkpoint path readable on every worker')
    parser.add_argument('--backend', default=DEFAULT_BACKEND,
                        help='inference backend (auto: the fastest that works on each worker)')
    parser.add_argument('--device', default='cpu', help='cpu or cuda[:N]')
    parser.add_argument('--precision', default='fp32', help='fp32 (fp16 on CUDA)')
    parser.add_argument('--network-size', type=_network_size,
                        help="network input HxW, multiples of 32 (default the model's)")
    parser.add_argument('--max-frames', type=_count, help='replay only the first N of each bag')
    parser.add_argument('--out', required=True, help='output folder (reused: resumes)')
    parser.add_argument('--force', action='store_true',
                        help='redo bags recorded by an earlier run into --out')
    where = parser.add_mutually_exclusive_group()
    where.add_argument('--workers', type=_count,
                       help='local cluster worker processes (default: the cores, at most one '
                            'per bag); 0 evaluates in this process without Dask')
    where.add_argument('--scheduler', metavar='tcp://HOST:PORT',
                       help='use this running Dask scheduler and its workers')
    parser.add_argument('--threads', type=_count, default=0,
                        help='inference threads per worker (default: the cores of its machine '
                             'shared among the workers there)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    parser.set_defaults(func=_evaluate)


def _check(args: argparse.Namespace) -> None:
    from evit_ros.eval.labels import MAPPINGS
    from evit_ros.model import check_input_size, get_entry
    from evit_ros.model.registry import UnknownModelError
    from evit_ros.runtime.backends.selection import BACKENDS
    if args.backend not in BACKENDS:
        raise CommandError(f'unknown backend {args.backend!r}; choose one of '
                           f'{", ".join(BACKENDS)}')
    if args.label_format and args.label_format not in MAPPINGS:
        raise CommandError(f'unknown label format {args.label_format!r}; choose one of '
                           f'{", ".join(MAPPINGS)}')
    if args.max_frames == 0:
        raise CommandError('--max-frames must be at least 1')
    try:
        get_entry(args.model)
        if args.network_size:
            check_input_size(*args.network_size)
    except (UnknownModelError, ValueError) as exc:
        raise CommandError(str(exc)) from None


def _weights_hint(model: str, weights: str):
    """Resolve ``official`` here so that workers on this machine read the same file."""
    if weights != 'official':
        return None
    from evit_ros import weights as lookup
    from evit_ros.model import get_entry
    try:
        return str(lookup.find_checkpoint(get_entry(model)).resolve())
    except lookup.WeightsNotFound:
        return None


def _evaluate(args: argparse.Namespace) -> int:
    from evit_ros.eval.cluster import DaskRunner, LocalRunner
    from evit_ros.eval.fleet import find_bags, FleetError, FleetSettings
    from evit_ros.eval.fleet_run import evaluate_fleet
    _check(args)
    weights = args.weights
    if weights != 'official':
        weights = str(Path(weights).expanduser().resolve())
    settings = FleetSettings(
        image_topic=args.image_topic, label_topic=args.label_topic,
        label_format=args.label_format, model=args.model, weights=weights,
        weights_hint=_weights_hint(args.model, weights), backend=args.backend,
        device=args.device, precision=args.precision,
        network_size=tuple(args.network_size) if args.network_size else None,
        max_frames=args.max_frames, threads=args.threads)
    try:
        paths = find_bags(args.bags)
        if args.workers == 0:
            runner = LocalRunner()
        else:
            runner = DaskRunner(scheduler=args.scheduler, workers=args.workers)
        outcome = evaluate_fleet(paths, settings, Path(args.out), runner, force=args.force,
                                 progress=not args.no_progress)
    except FleetError as exc:
        raise CommandError(str(exc)) from None
    report = outcome.report
    print(summary(report))
    if report.get('interrupted'):
        print(f"interrupted by {report['interrupted']}: {report['error']}", file=sys.stderr)
        return 130 if report['interrupted'] == 'SIGINT' else 143
    return 1 if outcome.failed else 0


def summary(report: dict) -> str:
    """Return the lines printed after a fleet evaluation: bags, accuracy, where things went."""
    size = report['network_size']
    lines = [f"evaluated {len(report['bags'])} bags: {report['bags_ok']} now, "
             f"{report['bags_skipped']} recorded earlier (skipped), {report['bags_failed']} "
             f"failed; {report['frames']} frames ({report['frames_scored']} scored)",
             f"ran on: {report['backend']} / {report['device']} / {report['precision']}, "
             f"{report['model']}, network {f'{size[0]}x{size[1]}' if size else '–'}", '']
    rows = [['bag', 'status', 'frames', 'mIoU', 'p50 ms']]
    for bag in report['bags']:
        miou = '–' if bag['miou'] is None else f"{bag['miou'] * 100:.2f}"
        p50 = bag['latency_ms']['p50']
        rows.append([Path(bag['path']).name, bag['status'], str(bag['frames']), miou,
                     '–' if p50 is None else f'{p50:.1f}'])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        lines.append('  '.join(cell.ljust(w) if i < 2 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))))
    lines.append('')
    if report['miou'] is not None:
        lines.append(f"mIoU {report['miou'] * 100:.2f}  pixel accuracy "
                     f"{report['pixel_accuracy'] * 100:.2f}  over all frames of all bags "
                     f"({len(report['classes'])} classes)")
    latency = report['latency_ms']
    if latency['p50'] is not None:
        lines.append(f"latency p50 {latency['p50']:.1f} ms  p90 {latency['p90']:.1f} ms; "
                     f"throughput {report['throughput_fps']:.2f} frames/s this run")
    out = Path(report['outputs']['report_md']).parent
    lines.append(f"report: {out / 'report.json'}, {report['outputs']['report_md']}")
    for bag in report['bags']:
        if bag['status'] == 'failed':
            lines.append(f"failed: {bag['path']}: {bag['reason']}")
    return '\n'.join(lines)
