"""Replay a rosbag through the segmentation and score it: accuracy, latency, a label-map bag.

Two modes read the same bag and write the same outputs:

- ``offline``: frames go straight from the bag into :class:`evit_ros.runtime.Segmenter`;
- ``node``: the real ``segmentation_node`` runs in its own process; frames are published
  over DDS at the bag's recorded rate (or ``rate``) with ``/clock`` for ``use_sim_time``,
  and its label maps are matched to the inputs by header stamp. Frames the node dropped
  are counted and only what came back is scored.

Outputs in ``out``: ``report.json``, ``report.md``, ``frames.csv``, PNG plots, and the bag
``labels`` with ``<T>/label_map`` (mono8 at the input resolution, stamped like the inputs:
header and bag time) to play beside the original. SIGINT and SIGTERM end the run early
with a partial report and a readable bag.
"""

import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from evit_ros.eval.bags import (BagError, BagReader, BagWriter, camera_encoding, COMPRESSED,
                                encoding_for, Frame, STORAGES)
from evit_ros.eval.labels import IGNORE
from evit_ros.eval.make_bag import (label_map_topic, label_topic, LABEL_FORMAT_KEY,
                                    list_images, read_label)
from evit_ros.eval.mapping_file import resolve_mapping
from evit_ros.eval.progress import Progress
from evit_ros.eval.scoring import Scorer

MODES = ('offline', 'node')
#: What a run writes into its output folder (``--force`` removes only these).
OUTPUT_NAMES = ('report.json', 'report.md', 'frames.csv', 'per_class_iou.png', 'latency.png',
                'samples.png', 'labels', 'node.log')
#: Labels are matched to images by stamp; an unmatched image waits this long (bag time).
PAIRING_WINDOW_NS = 2_000_000_000
MAX_ERRORS_REPORTED = 20
#: Network sides are multiples of this (the model downsamples by 32).
SIZE_MULTIPLE = 32


def network_size_for(default: Tuple[int, int], frame: Tuple[int, int]) -> Tuple[int, int]:
    """Return the network ``(height, width)`` for frames of ``frame`` ``(height, width)``.

    The frame's aspect ratio at about the pixel count of the model's default size, each
    side rounded to a multiple of 32: the network costs about what the model's default
    costs and the picture is not stretched (a 360x480 frame gets 1248x1664, not the
    Cityscapes models' 2:1 1024x2048; a 2:1 frame gets the default itself).
    """
    pixels = default[0] * default[1]
    aspect = frame[0] / frame[1]

    def side(value: float) -> int:
        return max(SIZE_MULTIPLE, int(round(value / SIZE_MULTIPLE)) * SIZE_MULTIPLE)

    return side(math.sqrt(pixels * aspect)), side(math.sqrt(pixels / aspect))


class ReplayError(Exception):
    """A replay that cannot start; ``str()`` is one line saying what to do."""


@dataclass
class ReplayOptions:
    """Everything a replay needs; the CLI fills it from its arguments."""

    bag: Path
    image_topic: str
    out: Path
    label_topic: Optional[str] = None
    labels_dir: Optional[Path] = None
    label_format: Optional[str] = None
    mapping_file: Optional[Path] = None
    model: str = 'b0-cityscapes'
    weights: str = 'official'
    backend: str = 'torch'
    device: str = 'cpu'
    precision: str = 'fp32'
    #: a prebuilt TensorRT engine / ONNX artifact run as it is (Segmenter's ``engine``).
    engine: Optional[str] = None
    #: ``None``: :func:`network_size_for` the first frame (said in the report).
    network_size: Optional[Tuple[int, int]] = None
    mode: str = 'offline'
    rate: Optional[float] = None
    lockstep: bool = False
    max_frames: Optional[int] = None
    force: bool = False
    out_storage: str = 'mcap'
    qos_reliability: str = 'reliable'
    node_start_timeout_s: float = 180.0
    progress: bool = True


class StopSignals:
    """Turn SIGINT and SIGTERM into a flag while a replay runs (main thread only)."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous: Dict[int, object] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame):
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __call__(self) -> bool:
        return self.signum is not None


def prepare_output(out: Path, force: bool) -> None:
    """Create ``out``; refuse an existing one unless ``force`` (then remove our files only).

    :raises ReplayError: when ``out`` exists and ``force`` is not set.
    """
    out = Path(out)
    if out.exists():
        if not force:
            raise ReplayError(f'output directory {out} exists; pass --force to overwrite it '
                              f'or choose another --out')
        if not out.is_dir():
            raise ReplayError(f'{out} is a file, not a directory; choose another --out')
        import shutil
        for name in OUTPUT_NAMES:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)


class LabelSource:
    """Ground truth for the frames: a bag topic, a folder (paired by order), or none."""

    def __init__(self, reader: BagReader, options: ReplayOptions):
        self.topic: Optional[str] = None
        self.files: List[Path] = []
        self.description = 'none'
        if options.labels_dir:
            files = list_images(options.labels_dir)
            if options.label_format in ('cityscapes', 'trainid'):
                suffix = '_labelIds' if options.label_format == 'cityscapes' else '_labelTrainIds'
                files = [f for f in files if f.stem.endswith(suffix)] or files
            self.files = files
            self.description = f'{options.labels_dir} ({len(files)} files, paired in order)'
        elif options.label_topic:
            reader.check_topic(options.label_topic, role='label')
            self.topic = options.label_topic
        elif label_topic(options.image_topic) in reader.topics:
            self.topic = label_topic(options.image_topic)
            reader.check_topic(self.topic, role='label')
        if self.topic:
            self.description = self.topic

    def for_index(self, index: int) -> Optional[np.ndarray]:
        """Return the label file paired with frame ``index`` (folder source)."""
        if index < len(self.files):
            return read_label(self.files[index])
        return None


def paired_frames(reader: BagReader, image_topic: str,
                  labels: LabelSource) -> Iterator[Tuple[Frame, Optional[np.ndarray]]]:
    """Yield ``(image frame, raw ground truth or None)`` in bag order.

    Labels from a topic are matched by header stamp; an image whose label does not show up
    within :data:`PAIRING_WINDOW_NS` of bag time is yielded without one.
    """
    if not labels.topic:
        for _, frame in reader.frames(image_topic):
            yield frame, (labels.for_index(frame.index) if labels.files else None)
        return
    waiting: Dict[int, List[Frame]] = {}
    spare: Dict[int, Tuple[np.ndarray, int]] = {}
    for topic, frame in reader.frames([image_topic, labels.topic]):
        if topic == labels.topic and topic != image_topic:
            if waiting.get(frame.stamp_ns):
                yield waiting[frame.stamp_ns].pop(0), frame.image
            else:
                spare[frame.stamp_ns] = (frame.image, frame.bag_time_ns)
        else:
            if frame.stamp_ns in spare:
                yield frame, spare.pop(frame.stamp_ns)[0]
            else:
                waiting.setdefault(frame.stamp_ns, []).append(frame)
        horizon = frame.bag_time_ns - PAIRING_WINDOW_NS
        for stamp in [s for s, frames in waiting.items()
                      if frames and frames[0].bag_time_ns < horizon]:
            for old in waiting.pop(stamp):
                yield old, None
        for stamp in [s for s, (_, t) in spare.items() if t < horizon]:
            del spare[stamp]
    rest = sorted((f for frames in waiting.values() for f in frames), key=lambda f: f.index)
    for frame in rest:
        yield frame, None


def _ground_truth(label: Optional[np.ndarray]) -> Optional[np.ndarray]:
    if label is None:
        return None
    if label.ndim == 3:
        label = label[:, :, 0]
    if label.dtype != np.uint8:
        label = np.where(label > 255, IGNORE, label).astype(np.uint8)
    return label


def _rgb(frame: Frame) -> Optional[np.ndarray]:
    from evit_ros.runtime.image import to_rgb
    try:
        return to_rgb(frame.image, camera_encoding(frame.encoding))
    except Exception:  # unsupported encodings are reported by the segmentation step
        return None


class Run:
    """State shared by both modes while a replay runs."""

    def __init__(self, options: ReplayOptions):
        from evit_ros.model import get_entry
        self.options = options
        self.entry = get_entry(options.model)
        self.reader = BagReader(options.bag)
        try:
            self.msgtype = self.reader.check_topic(options.image_topic)
            self.labels = LabelSource(self.reader, options)
        except BaseException:
            self.reader.close()
            raise
        fmt = (options.label_format or self.reader.custom_data.get(LABEL_FORMAT_KEY)
               or 'trainid')
        self.label_format = f'file:{options.mapping_file}' if options.mapping_file else fmt
        self.mapping = resolve_mapping(fmt, options.mapping_file)
        self.class_names = list(self.mapping.classes(self.entry.class_names))
        expected = self.reader.count(options.image_topic)
        if options.max_frames:
            expected = min(expected, options.max_frames)
        self.expected = expected
        self.scorer = Scorer(self.mapping, self.class_names, self.entry.palette, expected)
        self.out_topic = label_map_topic(options.image_topic)
        self.sink: Optional[BagWriter] = None
        self.frames = 0
        self.dropped = 0
        self.unsupported: List[str] = []
        self.latencies: List[float] = []
        self.pipeline: List[float] = []
        self.started = time.monotonic()
        self.finished: Optional[float] = None
        self.node_diagnostics: Dict[str, str] = {}
        self.backend_name = options.backend
        self.device = options.device
        self.precision = options.precision
        self.network_size = tuple(options.network_size or self.entry.input_size)
        #: How the network size was set: ``given``, or why it was chosen.
        self.network_size_source = 'given' if options.network_size else 'model default'
        self.segmenter = None

    def first_frame_size(self) -> Optional[Tuple[int, int]]:
        """Return ``(height, width)`` of the first readable image, or ``None``."""
        errors = len(self.reader.errors)
        frames = self.reader.frames(self.options.image_topic)
        try:
            for _, frame in frames:
                return tuple(int(v) for v in frame.image.shape[:2])
            return None
        finally:
            frames.close()
            del self.reader.errors[errors:]  # the replay itself reports them

    def choose_network_size(self) -> None:
        """Without ``network_size``: fit the network to the camera (:func:`network_size_for`)."""
        if self.options.network_size:
            return
        frame = self.first_frame_size()
        if frame is None:
            return
        self.network_size = network_size_for(self.entry.input_size, frame)
        default = self.entry.input_size
        self.network_size_source = (
            f'chosen for {frame[0]}x{frame[1]} frames: their aspect ratio at about the pixel '
            f'count of {self.entry.name}\'s default {default[0]}x{default[1]}; '
            f'--network-size sets another')

    def open_sink(self) -> None:
        """Create the label-map bag."""
        self.sink = BagWriter(Path(self.options.out) / 'labels', self.options.out_storage)

    def frames_in(self) -> Iterator[Tuple[Frame, Optional[np.ndarray]]]:
        """Yield the frames to replay with their ground truth, up to ``max_frames``."""
        for count, (frame, label) in enumerate(paired_frames(
                self.reader, self.options.image_topic, self.labels)):
            if self.options.max_frames and count >= self.options.max_frames:
                return
            yield frame, _ground_truth(label)

    def record(self, frame: Frame, label_map: np.ndarray, gt: Optional[np.ndarray],
               latency_ms: Optional[float], pipeline_ms: Optional[float] = None) -> None:
        """Write a frame's label map to the bag (when one is open) and score it."""
        if self.sink is not None:  # fleet runs score without writing label maps
            self.sink.write_image(self.out_topic, label_map, frame.stamp_ns, frame.frame_id,
                                  bag_time_ns=frame.bag_time_ns,
                                  encoding=encoding_for(label_map))
        if latency_ms is not None:
            self.latencies.append(latency_ms)
        if pipeline_ms is not None:
            self.pipeline.append(pipeline_ms)
        # frames.csv's latency_ms is the per-frame latency the mode can measure: the
        # Segmenter's call offline, publish to label map back through the node.
        self.scorer.add(frame.index, frame.stamp_ns, _rgb(frame), label_map, gt,
                        latency_ms=latency_ms if latency_ms is not None else pipeline_ms,
                        pipeline_latency_ms=pipeline_ms)

    def close(self) -> None:
        """Close the label-map bag and the input bag (always leaves a readable bag)."""
        if self.finished is None:
            self.finished = time.monotonic()
        if self.sink is not None:
            self.sink.close()
        self.reader.close()


def run_offline(run: Run, stop: StopSignals, progress: Optional[Progress]) -> None:
    """Segment every frame in this process with the Segmenter."""
    from evit_ros.runtime import ImageError
    segmenter = run.segmenter
    run.started = time.monotonic()
    if progress:
        progress.restart(run.started)
    for frame, gt in run.frames_in():
        if stop():
            break
        run.frames += 1
        try:
            label_map = segmenter.segment(frame.image, camera_encoding(frame.encoding))
        except ImageError as exc:
            run.unsupported.append(f'frame {frame.index}: {exc}')
            continue
        run.record(frame, label_map, gt, segmenter.timings.total_ms)
        if progress:
            progress.update(1, _progress_note(run))
    run.finished = time.monotonic()


def make_segmenter(options: ReplayOptions, network_size: Optional[Tuple[int, int]] = None):
    """Build the offline Segmenter (at ``network_size``, default ``options.network_size``).

    :raises ReplayError: for missing weights, an unavailable backend or a bad network size.
    """
    from evit_ros.model import CheckpointError
    from evit_ros.runtime import BackendUnavailable, Segmenter
    from evit_ros.weights import WeightsNotFound
    try:
        return Segmenter(options.model, backend=options.backend, device=options.device,
                         input_size=network_size or options.network_size,
                         weights=options.weights, precision=options.precision,
                         engine=options.engine)
    except (WeightsNotFound, CheckpointError, BackendUnavailable, ValueError) as exc:
        raise ReplayError(str(exc)) from None


def running_on(segmenter) -> Tuple[str, str, str]:
    """Return ``(backend, device, precision)`` that a Segmenter actually runs."""
    backend = segmenter.backend
    return (segmenter.backend_name,
            str(getattr(segmenter, 'device', getattr(backend, 'device', '?'))),
            str(getattr(segmenter, 'precision', getattr(backend, 'precision', '?'))))


def _progress_note(run: Run) -> str:
    miou = run.scorer.confusion.miou() if run.scorer.confusion.pixels else None
    return f'mIoU {miou * 100:.1f}' if miou is not None else ''


def _node_parameters(options: ReplayOptions,
                     network_size: Optional[Tuple[int, int]] = None) -> Dict[str, object]:
    params: Dict[str, object] = {
        'model': options.model, 'backend': options.backend, 'device': options.device,
        'precision': options.precision, 'qos_reliability': options.qos_reliability,
        'qos_depth': 1, 'output_resolution': 'input', 'diagnostics_period': 0.5,
        # A replay judges latency itself; a generous budget keeps the node's log quiet.
        'latency_budget_ms': 600000.0,
    }
    if options.weights not in (None, '', 'official'):
        params['weights'] = str(Path(options.weights).expanduser().resolve())
    size = network_size or options.network_size
    if size:
        params['network_height'], params['network_width'] = (int(v) for v in size)
    if options.engine:
        params['engine'] = str(Path(options.engine).expanduser().resolve())
    return params


def run_node(run: Run, stop: StopSignals, progress: Optional[Progress]) -> None:
    """Publish the frames to a real segmentation_node and score what comes back."""
    from evit_ros.eval.node_session import NodeError, NodeSession
    options = run.options
    compressed = run.msgtype == COMPRESSED
    # Scoring a returned frame converts its image with evit_ros.runtime, whose first import
    # (torch) takes seconds: pay it now, not while frames are in flight and Ctrl-C waits.
    import evit_ros.runtime.image  # noqa: F401
    try:
        session = NodeSession(options.image_topic, compressed,
                              _node_parameters(options, run.network_size),
                              Path(options.out) / 'node.log', options.qos_reliability)
    except (OSError, ImportError) as exc:
        raise ReplayError(f'cannot start segmentation_node: {exc}') from None
    in_flight: Dict[int, List[Tuple[Frame, Optional[np.ndarray], float]]] = {}
    timeout_s = 30.0

    def collect(wait_s: float) -> None:
        for stamp, label_map, received in session.drain(wait_s):
            entries = in_flight.get(stamp)
            if not entries:
                continue  # a late duplicate, or a frame already counted as dropped
            frame, gt, sent = entries.pop(0)
            if not entries:
                del in_flight[stamp]
            run.record(frame, label_map, gt, None, (received - sent) * 1e3)

    def expire(now: float) -> None:
        for stamp in list(in_flight):
            keep = [e for e in in_flight[stamp] if now - e[2] < timeout_s]
            run.dropped += len(in_flight[stamp]) - len(keep)
            if keep:
                in_flight[stamp] = keep
            else:
                del in_flight[stamp]

    def check_node() -> None:
        if session.returncode is not None and not stop():
            raise NodeError(session.node_failure())

    try:
        session.wait_ready(options.node_start_timeout_s, stop)
        run.started = time.monotonic()
        if progress:
            progress.restart(run.started)
        first_bag_time = None
        for count, (frame, gt) in enumerate(run.frames_in()):
            if first_bag_time is None:
                first_bag_time = frame.bag_time_ns
            if options.rate:
                due = run.started + count / options.rate
            else:
                due = run.started + (frame.bag_time_ns - first_bag_time) / 1e9
            while not stop() and time.monotonic() < due:
                collect(min(0.05, max(0.0, due - time.monotonic())))
                check_node()
            if stop():
                break
            raw = (frame.raw_format, frame.raw) if compressed else None
            sent = session.publish(frame, raw)
            run.frames += 1
            if progress:
                progress.update(1, _progress_note(run))
            in_flight.setdefault(frame.stamp_ns, []).append((frame, gt, sent))
            if options.lockstep:
                while frame.stamp_ns in in_flight and not stop():
                    collect(0.05)
                    check_node()
                    expire(time.monotonic())
            collect(0.0)
            expire(time.monotonic())
        # Wait for the last outputs: until all are back or none came for a while.
        last_seen = time.monotonic()
        while in_flight and not stop():
            before = len(run.scorer.records)
            collect(0.1)
            check_node()
            now = time.monotonic()
            if len(run.scorer.records) != before:
                last_seen = now
            if now - last_seen > max(5.0, 4 * _typical_ms(run.pipeline) / 1e3):
                break
        run.finished = time.monotonic()
        run.dropped += sum(len(entries) for entries in in_flight.values())
        in_flight.clear()
        # One more /diagnostics so the node's figures include the last frames (not when
        # stopped by a signal: a stopped replay must exit within 2 s).
        seen = session.diagnostics_count
        deadline = time.monotonic() + 2.0
        while (session.diagnostics_count < seen + 2 and time.monotonic() < deadline
               and not stop()):
            time.sleep(0.05)
        run.node_diagnostics = dict(session.diagnostics)
        _what_the_node_ran(run)
    except NodeError as exc:
        raise ReplayError(str(exc)) from None
    finally:
        run.dropped += sum(len(entries) for entries in in_flight.values())
        session.close(quick=stop())


def _what_the_node_ran(run: Run) -> None:
    """Take backend, device and precision from the node's /diagnostics (what ran)."""
    diagnostics = run.node_diagnostics
    run.backend_name = diagnostics.get('backend') or run.backend_name
    run.device = diagnostics.get('device') or run.device
    run.precision = diagnostics.get('precision') or run.precision


def _typical_ms(values: List[float]) -> float:
    return float(np.median(values)) if values else 1000.0


def _remove_outputs(out: Path, created: bool) -> None:
    """Undo :func:`prepare_output` after a run that never started."""
    prepare_output(out, force=True)
    if created and not any(out.iterdir()):
        out.rmdir()


def _check_options(options: ReplayOptions) -> None:
    from evit_ros.model import check_input_size, get_entry
    from evit_ros.model.registry import UnknownModelError
    if options.mode not in MODES:
        raise ReplayError(f'unknown mode {options.mode!r}; choose offline or node')
    if options.out_storage not in STORAGES:
        raise ReplayError(f'unknown storage {options.out_storage!r}; choose mcap or sqlite3')
    if options.rate is not None and options.rate <= 0:
        raise ReplayError(f'--rate must be positive, got {options.rate}')
    try:
        entry = get_entry(options.model)
        if options.network_size:
            check_input_size(*options.network_size)
    except (UnknownModelError, ValueError) as exc:
        raise ReplayError(str(exc)) from None
    if options.mode == 'node' and options.weights in (None, '', 'official'):
        from evit_ros.weights import find_checkpoint, WeightsNotFound
        try:
            find_checkpoint(entry)
        except WeightsNotFound as exc:
            raise ReplayError(str(exc)) from None


def replay(options: ReplayOptions) -> Dict[str, object]:
    """Run a replay and write its outputs; return the report (see module doc).

    A run stopped by SIGINT / SIGTERM, or by the node dying part-way, still writes a
    partial report and a readable label-map bag.

    :raises ReplayError: for an unusable output folder, model, weights or node.
    :raises evit_ros.eval.bags.BagError: for a bag that cannot be read as asked.
    :raises evit_ros.eval.mapping_file.MappingError: for a bad label format or mapping.
    """
    _check_options(options)
    if Path(options.out).exists() and not options.force:
        prepare_output(options.out, False)  # raises the one-line refusal before any work
    run = Run(options)
    failure: Optional[ReplayError] = None
    created = not Path(options.out).exists()
    try:
        run.choose_network_size()
        if options.mode == 'offline':
            run.segmenter = make_segmenter(options, run.network_size)
            run.backend_name, run.device, run.precision = running_on(run.segmenter)
            run.network_size = run.segmenter.input_size
        prepare_output(options.out, options.force)
        run.open_sink()
    except BaseException:
        run.close()
        raise
    progress = Progress(run.expected, 'replay') if options.progress else None
    with StopSignals() as stop:
        try:
            if options.mode == 'offline':
                run_offline(run, stop, progress)
            else:
                run_node(run, stop, progress)
        except ReplayError as exc:
            failure = exc
        finally:
            run.close()
            if progress:
                from evit_ros.eval.report import throughput
                progress.note = _progress_note(run)  # node mode: frames back since the last
                progress.close(*throughput(run))
    if failure is not None and run.frames == 0:
        _remove_outputs(Path(options.out), created)
        raise failure
    from evit_ros.eval.report import build_report, write_report
    report = build_report(run, interrupted=stop.signum, error=str(failure) if failure else None)
    if stop.signum is not None:
        report['plots'] = 'skipped: the run was interrupted'
    write_report(Path(options.out), report, run, plots=stop.signum is None)
    if failure is not None:
        raise ReplayError(f'{failure} (partial report of {run.frames} frames in '
                          f'{options.out})')
    return report


__all__ = ['BagError', 'MODES', 'ReplayError', 'ReplayOptions', 'replay']
