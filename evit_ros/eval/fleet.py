"""Scoring many bags as one fleet: which bags, one bag's result, and how results are kept.

A fleet evaluation replays every bag offline exactly as ``evit-ros replay`` does (the same
:class:`evit_ros.eval.replay.Run` reads, pairs and scores the frames) and keeps, per bag, a
:class:`BagResult`: its confusion matrix, per-frame scores and latencies, and small
thumbnails of its worst frames. Summing the confusion matrices of all bags gives exactly
the confusion matrix of one replay over all their frames, so the fleet's mIoU is that of
the concatenated recordings.

Results are recorded one bag at a time under ``OUT/bags/<id>.npz`` + ``<id>.json``, each
written to a temporary name and renamed into place (the JSON last, so a JSON that exists
always has its arrays). A later run with the same settings reuses them.

Nothing here imports Dask: :mod:`evit_ros.eval.cluster` runs :func:`evaluate_bag` on workers.
"""

import glob
import hashlib
import json
import os
import re
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from evit_ros.eval.bags import BagError, BagReader
from evit_ros.eval.scoring import Scorer

#: Storage file suffixes that make a file a bag on its own.
BAG_FILES = ('.mcap', '.db3')
#: Worst frames kept per bag (and shown in the fleet's gallery).
WORST_FRAMES = 6
#: Width of a kept thumbnail in pixels.
THUMB_WIDTH = 240
#: What "worst" means for the gallery.
WORST_BY = 'per-frame mIoU (over the classes present in that frame), lowest first'
STATUSES = ('ok', 'failed', 'skipped')
RECORD_VERSION = 1


class FleetError(Exception):
    """A fleet run that cannot start or go on; ``str()`` is one line saying what to do."""


class ModelError(FleetError):
    """The model cannot be built where a bag was to be evaluated (no bag is to blame)."""


@dataclass(frozen=True)
class FleetSettings:
    """How every bag is evaluated; sent to each worker with each bag.

    :param image_topic: camera topic, the same in every bag.
    :param label_topic: ground-truth topic (default ``<topic>/label_gt`` when present).
    :param label_format: how label values read (default what make-bag stored, else trainid).
    :param weights: ``official`` or a checkpoint path readable on every worker.
    :param weights_hint: the checkpoint ``official`` resolved to where the run started;
        a worker that can read this path uses it, any other looks ``official`` up itself.
    :param threads: inference threads per worker (0: the worker's cores shared among the
        Dask threads on its machine).
    :param max_frames: replay only the first N frames of each bag.
    """

    image_topic: str
    label_topic: Optional[str] = None
    label_format: Optional[str] = None
    model: str = 'b0-cityscapes'
    weights: str = 'official'
    weights_hint: Optional[str] = None
    backend: str = 'auto'
    device: str = 'cpu'
    precision: str = 'fp32'
    network_size: Optional[Tuple[int, int]] = None
    max_frames: Optional[int] = None
    threads: int = 0

    def fingerprint(self) -> Dict[str, object]:
        """Return what a recorded result must have been made with to be reused."""
        keep = ('image_topic', 'label_topic', 'label_format', 'model', 'weights', 'backend',
                'device', 'precision', 'network_size', 'max_frames')
        values = {k: getattr(self, k) for k in keep}
        values['network_size'] = list(self.network_size) if self.network_size else None
        return values


@dataclass
class Thumbnail:
    """A downscaled frame for the gallery: input RGB, prediction and ground truth (eval ids)."""

    index: int
    stamp_ns: int
    miou: float
    pixel_accuracy: float
    rgb: np.ndarray
    prediction: np.ndarray
    ground_truth: np.ndarray


@dataclass
class BagResult:
    """One bag's outcome; ``confusion`` and the frame arrays are absent when it failed."""

    path: str
    status: str
    reason: Optional[str] = None
    frames: int = 0
    frames_scored: int = 0
    classes: List[str] = field(default_factory=list)
    label_format: Optional[str] = None
    label_source: Optional[str] = None
    confusion: Optional[np.ndarray] = None
    frame_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    frame_stamp: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    frame_miou: np.ndarray = field(default_factory=lambda: np.zeros(0))
    frame_accuracy: np.ndarray = field(default_factory=lambda: np.zeros(0))
    latency_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    palette: Optional[np.ndarray] = None
    worst: List[Thumbnail] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)
    backend: Optional[str] = None
    device: Optional[str] = None
    precision: Optional[str] = None
    network_size: Optional[List[int]] = None
    worker: Optional[str] = None
    model_builds: int = 0
    wall_s: float = 0.0

    def miou(self) -> Optional[float]:
        """Return the bag's own mIoU (over all its frames), ``None`` when nothing was scored."""
        from evit_ros.eval.metrics import ConfusionMatrix
        if self.confusion is None or not self.confusion.sum():
            return None
        matrix = ConfusionMatrix(self.confusion.shape[0])
        matrix.matrix[...] = self.confusion
        return matrix.miou()


def failed(path, reason: str) -> BagResult:
    """Return the result of a bag that could not be evaluated, with a one-line reason."""
    lines = str(reason).strip().splitlines()
    return BagResult(str(path), 'failed', reason=lines[0] if lines else 'unknown error')


# ---------------------------------------------------------------------------- which bags

def is_bag(path: Path) -> bool:
    """Whether ``path`` is a bag: a storage file, or a folder with metadata or storage files."""
    path = Path(path)
    if path.is_file():
        return path.suffix in BAG_FILES
    if not path.is_dir():
        return False
    return (path / 'metadata.yaml').is_file() or any(
        p.suffix in BAG_FILES for p in path.iterdir() if p.is_file())


def _is_list_file(path: Path) -> bool:
    return path.is_file() and path.suffix not in BAG_FILES


def find_bags(specs: Sequence[str]) -> List[Path]:
    """Expand the ``BAGS`` arguments into absolute bag paths, in order, without duplicates.

    Each argument is a bag (folder or ``.mcap`` / ``.db3`` file), a folder of bags (its
    entries that are bags), a glob (quoted, so the shell leaves it alone), or a list file:
    one path per line, ``#`` starts a comment, relative paths are relative to the file.
    Paths from a list file are taken as written, so a client that cannot see the bags can
    still hand them to workers that can.

    :raises FleetError: for an argument that names nothing.
    """
    found: List[Path] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if is_bag(path):
            found.append(path)
        elif path.is_dir():
            bags = sorted(p for p in path.iterdir() if is_bag(p))
            if not bags:
                raise FleetError(f'{path} holds no bags (folders with metadata.yaml or '
                                 f'.mcap / .db3 files, or such files)')
            found += bags
        elif _is_list_file(path):
            found += _read_list(path)
        elif glob.has_magic(spec):
            matches = sorted(Path(p) for p in glob.glob(str(path)) if is_bag(Path(p)))
            if not matches:
                raise FleetError(f'no bags match {spec}')
            found += matches
        else:
            raise FleetError(f'{spec} does not exist (give bags, folders of bags, globs or '
                             f'a list file of paths)')
    # Absolute, so that workers started elsewhere than the client read the same files.
    unique: Dict[str, Path] = {}
    for path in found:
        unique.setdefault(os.path.abspath(path), Path(os.path.abspath(path)))
    return list(unique.values())


def _read_list(path: Path) -> List[Path]:
    out = []
    for line in path.read_text().splitlines():
        line = line.split('#', 1)[0].strip()
        if line:
            entry = Path(line).expanduser()
            out.append(entry if entry.is_absolute() else path.parent / entry)
    if not out:
        raise FleetError(f'list file {path} names no bags')
    return out


def bag_id(path) -> str:
    """Return a stable file-name-safe id for a bag: its name and a hash of its full path."""
    full = os.path.abspath(str(path))
    name = re.sub(r'[^A-Za-z0-9_.-]+', '_', Path(full).name)[:60] or 'bag'
    return f'{name}-{hashlib.sha1(full.encode()).hexdigest()[:10]}'


def count_frames(path, settings: FleetSettings) -> int:
    """Frames the bag will give (0 when it cannot be read here: the worker will say why)."""
    try:
        with BagReader(path) as reader:
            count = reader.count(settings.image_topic)
    except Exception:  # any unreadable bag is judged by its worker, not here
        return 0
    return min(count, settings.max_frames) if settings.max_frames else count


# ---------------------------------------------------------------------------- one bag

class WorstFrames(Scorer):
    """A :class:`Scorer` that keeps thumbnails of the ``keep`` worst-scored frames."""

    def __init__(self, *args, keep: int = WORST_FRAMES, **kwargs):
        super().__init__(*args, samples=0, **kwargs)
        self.keep = keep
        self.worst: List[Thumbnail] = []

    def add(self, index, stamp_ns, rgb, label_map, ground_truth, latency_ms=None,
            pipeline_latency_ms=None):
        """Score a frame as :meth:`Scorer.add` does, keeping it if among the worst."""
        record = super().add(index, stamp_ns, rgb, label_map, ground_truth, latency_ms,
                             pipeline_latency_ms)
        if record.miou is None or np.isnan(record.miou) or rgb is None or self.keep < 1:
            return record
        if len(self.worst) >= self.keep and record.miou >= self.worst[-1].miou:
            return record
        scale = min(1.0, THUMB_WIDTH / rgb.shape[1])
        size = (max(1, int(rgb.shape[1] * scale)), max(1, int(rgb.shape[0] * scale)))
        # Nearest-neighbour resizing commutes with the per-pixel id mapping, so the ids
        # are mapped on the small images.
        pred = cv2.resize(label_map, size, interpolation=cv2.INTER_NEAREST)
        gt = cv2.resize(ground_truth, size, interpolation=cv2.INTER_NEAREST)
        self.worst.append(Thumbnail(
            index, stamp_ns, float(record.miou), float(record.pixel_accuracy),
            cv2.resize(rgb, size, interpolation=cv2.INTER_AREA),
            self.mapping.prediction(pred).astype(np.uint8),
            self.mapping.ground_truth(gt).astype(np.uint8)))
        self.worst.sort(key=lambda t: (t.miou, t.pixel_accuracy, t.index))
        del self.worst[self.keep:]
        return record


class _FrameCounter:
    """The ``progress`` that :func:`evit_ros.eval.replay.run_offline` updates, forwarded."""

    def __init__(self, on_frames: Optional[Callable[[int], None]]):
        self.on_frames = on_frames

    def update(self, count: int = 1, note: Optional[str] = None) -> None:
        if self.on_frames:
            self.on_frames(count)

    def restart(self, start: Optional[float] = None) -> None:
        """Nothing to do: the fleet's own bar times the whole run, not one bag."""


def _replay_options(path, settings: FleetSettings):
    from evit_ros.eval.replay import ReplayOptions
    # ``out`` is required by ReplayOptions but unused: a fleet run writes no label-map bag.
    return ReplayOptions(
        bag=Path(path), image_topic=settings.image_topic, out=Path(os.devnull),
        label_topic=settings.label_topic, label_format=settings.label_format,
        model=settings.model, weights=settings.weights, backend=settings.backend,
        device=settings.device, precision=settings.precision,
        network_size=settings.network_size, max_frames=settings.max_frames, progress=False)


def evaluate_bag(path, settings: FleetSettings, segmenter,
                 on_frames: Optional[Callable[[int], None]] = None,
                 stop: Callable[[], bool] = lambda: False, keep: int = WORST_FRAMES
                 ) -> BagResult:
    """Replay one bag offline through ``segmenter`` and return its result.

    Whatever makes the bag unusable (unreadable, no such topic, no readable frame, labels
    that cannot be read as asked) gives a ``failed`` result with a one-line reason instead
    of an exception, so the rest of a fleet goes on.

    :param on_frames: called with the number of frames just done (progress).
    :param stop: polled between frames; when it returns True the bag ends early and fails.
    """
    from evit_ros.eval.mapping_file import MappingError
    from evit_ros.eval.replay import Run, run_offline
    started = time.monotonic()
    try:
        run = Run(_replay_options(path, settings))
    except (BagError, MappingError, ValueError, OSError) as exc:
        return failed(path, str(exc))
    try:
        run.scorer = WorstFrames(run.mapping, run.class_names, run.entry.palette, run.expected,
                                 keep=keep)
        run.segmenter = segmenter
        run_offline(run, stop, _FrameCounter(on_frames))
    except Exception as exc:  # a damaged bag may fail in many ways; the fleet goes on
        return failed(path, f'{type(exc).__name__}: {exc}')
    finally:
        run.close()
    if stop():
        return failed(path, 'stopped before the end of the bag')
    records = run.scorer.records
    if not records:
        why = (run.reader.errors + run.unsupported)[:1]
        return failed(path, f'no frame of {settings.image_topic} could be segmented'
                            + (f': {why[0]}' if why else ' (the topic has no messages)'))

    def column(name, dtype):
        values = [getattr(r, name) for r in records]
        if dtype is float:
            values = [np.nan if v is None else v for v in values]
        return np.asarray(values, dtype=np.float64 if dtype is float else np.int64)

    return BagResult(
        str(path), 'ok', frames=run.frames, frames_scored=run.scorer.frames_scored,
        classes=list(run.class_names),
        label_format=run.label_format if run.labels.description != 'none' else None,
        label_source=run.labels.description,
        confusion=run.scorer.confusion.matrix.copy(),
        frame_index=column('index', int), frame_stamp=column('stamp_ns', int),
        frame_miou=column('miou', float), frame_accuracy=column('pixel_accuracy', float),
        latency_ms=np.asarray(run.latencies, np.float64), palette=run.scorer.palette(),
        worst=list(run.scorer.worst), errors=list(run.reader.errors) + list(run.unsupported),
        backend=segmenter.backend_name, device=_device(segmenter),
        precision=_precision(segmenter), network_size=[int(v) for v in segmenter.input_size],
        wall_s=time.monotonic() - started)


def _device(segmenter) -> str:
    return str(getattr(segmenter, 'device', None) or segmenter.backend.device)


def _precision(segmenter) -> str:
    return str(getattr(segmenter, 'precision', None) or segmenter.backend.precision)


# ---------------------------------------------------------------------------- the model

class SegmenterCache:
    """Segmenters built in this process, one per (model, weights, backend, ...) setting.

    A worker keeps its model between bags: building it (reading the checkpoint, for
    onnxruntime loading or exporting the graph) costs seconds, a bag often less.
    """

    def __init__(self):
        self._segmenters: Dict[Tuple, object] = {}
        #: how many Segmenters this process built (a worker reports it with each bag).
        self.builds = 0

    def get(self, settings: FleetSettings, threads: int):
        """Return the Segmenter for ``settings`` with ``threads`` inference threads.

        :raises ModelError: when it cannot be built here, with one line saying why.
        """
        weights = settings.weights
        if weights == 'official' and settings.weights_hint \
                and Path(settings.weights_hint).is_file():
            weights = settings.weights_hint
        key = (settings.model, weights, settings.backend, settings.device, settings.precision,
               tuple(settings.network_size or ()), threads)
        if key not in self._segmenters:
            self._segmenters[key] = build_segmenter(settings, weights, threads)
            self.builds += 1
        return self._segmenters[key]


def build_segmenter(settings: FleetSettings, weights: str, threads: int):
    """Build the Segmenter a fleet run uses.

    :raises ModelError: for missing weights, an unavailable backend or a bad network size.
    """
    from evit_ros.model import CheckpointError
    from evit_ros.runtime import BackendUnavailable, Segmenter
    from evit_ros.weights import WeightsNotFound
    options = {'threads': int(threads)} if threads else {}
    try:
        return Segmenter(settings.model, backend=settings.backend, device=settings.device,
                         input_size=settings.network_size, weights=weights,
                         precision=settings.precision, **options)
    except (WeightsNotFound, CheckpointError, BackendUnavailable, ValueError, OSError) as exc:
        text = str(exc).strip().splitlines()
        raise ModelError(f'cannot build the model on {socket.gethostname()}: '
                         f'{text[0] if text else type(exc).__name__}') from None


def worker_label() -> str:
    """Return ``host:pid`` of this process, to say where a bag ran."""
    return f'{socket.gethostname()}:{os.getpid()}'


# ---------------------------------------------------------------------------- records

def _write_atomic(path: Path, write: Callable[[object], None], mode: str = 'wb') -> None:
    tmp = path.with_name(path.name + '.part')
    with open(tmp, mode) as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save_result(folder: Path, result: BagResult, settings: FleetSettings) -> Path:
    """Record a finished bag under ``folder`` (arrays first, then the JSON that marks it done).

    :returns: the JSON record's path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ident = bag_id(result.path)
    arrays: Dict[str, np.ndarray] = {}
    if result.confusion is not None:
        arrays.update(confusion=result.confusion, frame_index=result.frame_index,
                      frame_stamp=result.frame_stamp, frame_miou=result.frame_miou,
                      frame_accuracy=result.frame_accuracy, latency_ms=result.latency_ms)
        if result.palette is not None:
            arrays['palette'] = result.palette
        for i, thumb in enumerate(result.worst):
            arrays[f'worst{i}_rgb'] = thumb.rgb
            arrays[f'worst{i}_prediction'] = thumb.prediction
            arrays[f'worst{i}_ground_truth'] = thumb.ground_truth
    if arrays:
        _write_atomic(folder / f'{ident}.npz', lambda h: np.savez_compressed(h, **arrays))
    elif (folder / f'{ident}.npz').exists():
        (folder / f'{ident}.npz').unlink()  # an earlier run's arrays no longer apply
    meta = {k: v for k, v in asdict(result).items()
            if not isinstance(v, np.ndarray) and k not in ('worst', 'confusion', 'palette')}
    meta.update(version=RECORD_VERSION, id=ident, settings=settings.fingerprint(),
                worst=[{'index': t.index, 'stamp_ns': t.stamp_ns, 'miou': t.miou,
                        'pixel_accuracy': t.pixel_accuracy} for t in result.worst],
                recorded=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()))
    json_path = folder / f'{ident}.json'
    _write_atomic(json_path, lambda h: h.write(json.dumps(meta, indent=1) + '\n'), 'w')
    return json_path


def read_record(folder: Path, path) -> Optional[Dict[str, object]]:
    """Return the JSON record of ``path`` under ``folder``, or None when there is none."""
    record = Path(folder) / f'{bag_id(path)}.json'
    try:
        return json.loads(record.read_text())
    except (OSError, ValueError):
        return None


def load_result(folder: Path, path) -> Optional[BagResult]:
    """Return the recorded result of a bag that finished ``ok``, or None (redo it)."""
    meta = read_record(folder, path)
    if not meta or meta.get('status') != 'ok' or meta.get('version') != RECORD_VERSION:
        return None
    try:
        with np.load(Path(folder) / f"{meta['id']}.npz", allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, KeyError):
        return None
    fields = {k: v for k, v in meta.items() if k in BagResult.__dataclass_fields__
              and k != 'worst'}
    result = BagResult(**fields)
    for name in ('confusion', 'frame_index', 'frame_stamp', 'frame_miou', 'frame_accuracy',
                 'latency_ms', 'palette'):
        if name in arrays:
            setattr(result, name, arrays[name])
    for i, info in enumerate(meta.get('worst') or []):
        result.worst.append(Thumbnail(
            int(info['index']), int(info['stamp_ns']), float(info['miou']),
            float(info['pixel_accuracy']), arrays[f'worst{i}_rgb'],
            arrays[f'worst{i}_prediction'], arrays[f'worst{i}_ground_truth']))
    return result


__all__ = ['BagResult', 'FleetError', 'FleetSettings', 'ModelError', 'SegmenterCache',
           'evaluate_bag', 'find_bags', 'load_result', 'save_result']
