"""Scoring a stream of label maps against ground truth, frame by frame.

A :class:`Scorer` brings each prediction and its ground truth into the evaluation label set
(through a :class:`~evit_ros.eval.labels.LabelMapping`), adds them to one confusion matrix
for the whole run, and keeps per-frame numbers and a few downscaled frames for the report.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from evit_ros.eval.labels import IGNORE, LabelMapping
from evit_ros.eval.metrics import ConfusionMatrix

SAMPLE_WIDTH = 480


@dataclass
class FrameRecord:
    """Per-frame outcome, one row of ``frames.csv``."""

    index: int
    stamp_ns: int
    scored: bool
    miou: Optional[float] = None
    pixel_accuracy: Optional[float] = None
    latency_ms: Optional[float] = None
    pipeline_latency_ms: Optional[float] = None


@dataclass
class Sample:
    """A downscaled frame for the report's strip: input RGB, prediction, ground truth."""

    index: int
    rgb: np.ndarray
    prediction: np.ndarray
    ground_truth: Optional[np.ndarray]


@dataclass
class Scorer:
    """Accumulate a run's accuracy.

    :param mapping: how predictions and ground truth reach the evaluation ids.
    :param class_names: evaluation class names (their count sets the matrix size).
    :param model_palette: RGB per model class, used to colour evaluation classes.
    :param expected_frames: frames the run expects (to spread the kept samples).
    :param samples: how many frames to keep for the strip.
    """

    mapping: LabelMapping
    class_names: Sequence[str]
    model_palette: Sequence[Tuple[int, int, int]] = ()
    expected_frames: int = 0
    samples: int = 4
    confusion: ConfusionMatrix = field(init=False)
    records: List[FrameRecord] = field(init=False, default_factory=list)
    kept: List[Sample] = field(init=False, default_factory=list)
    resized: int = field(init=False, default=0)

    def __post_init__(self):
        self.confusion = ConfusionMatrix(len(self.class_names))
        total = max(1, self.expected_frames)
        count = min(self.samples, total)
        self._wanted = {int(round(i * (total - 1) / max(1, count - 1))) for i in range(count)}
        self._last: Optional[Sample] = None

    @property
    def frames_scored(self) -> int:
        """Number of frames that had ground truth."""
        return sum(1 for r in self.records if r.scored)

    def add(self, index: int, stamp_ns: int, rgb: Optional[np.ndarray], label_map: np.ndarray,
            ground_truth: Optional[np.ndarray], latency_ms: Optional[float] = None,
            pipeline_latency_ms: Optional[float] = None) -> FrameRecord:
        """Score one frame (``ground_truth`` raw, as the label file holds it; may be None).

        A label map of another size than its ground truth is resized (nearest) to it.
        """
        record = FrameRecord(index, stamp_ns, ground_truth is not None, latency_ms=latency_ms,
                             pipeline_latency_ms=pipeline_latency_ms)
        prediction = self.mapping.prediction(label_map)
        gt = None
        if ground_truth is not None:
            gt = self.mapping.ground_truth(ground_truth)
            if prediction.shape != gt.shape:
                self.resized += 1
                prediction = cv2.resize(prediction, (gt.shape[1], gt.shape[0]),
                                        interpolation=cv2.INTER_NEAREST)
            frame = ConfusionMatrix(self.confusion.num_classes)
            frame.update(gt, prediction)
            self.confusion.merge(frame)
            record.miou = frame.miou()
            record.pixel_accuracy = frame.pixel_accuracy()
        self.records.append(record)
        if rgb is not None:
            self._keep(index, rgb, prediction, gt)
        return record

    def _keep(self, index, rgb, prediction, gt) -> None:
        if len(self.kept) >= self.samples:
            return
        scale = min(1.0, SAMPLE_WIDTH / rgb.shape[1])
        size = (max(1, int(rgb.shape[1] * scale)), max(1, int(rgb.shape[0] * scale)))

        def small(img, interpolation):
            return cv2.resize(img, size, interpolation=interpolation) if scale < 1 else img.copy()

        sample = Sample(index, small(rgb, cv2.INTER_AREA), small(prediction, cv2.INTER_NEAREST),
                        None if gt is None else small(gt, cv2.INTER_NEAREST))
        if index in self._wanted:
            self.kept.append(sample)
        else:
            self._last = sample

    def final_samples(self) -> List[Sample]:
        """Return the kept samples; the last frame seen fills in when the run ended early."""
        kept = list(self.kept)
        if len(kept) < min(self.samples, len(self.records)) and self._last is not None:
            kept.append(self._last)
        return sorted(kept, key=lambda s: s.index)

    def palette(self) -> np.ndarray:
        """Return a ``256x3`` uint8 RGB colour table for evaluation ids (IGNORE black)."""
        table = np.zeros((256, 3), np.uint8)
        rng = np.random.default_rng(0)
        for i in range(len(self.class_names)):
            table[i] = rng.integers(40, 255, 3)
        model = np.asarray(self.model_palette, np.uint8).reshape(-1, 3)
        if self.mapping.pred_table is None:
            table[:len(model)] = model[:256]
        else:
            done = set()
            for model_id, eval_id in enumerate(self.mapping.pred_table[:len(model)]):
                if eval_id != IGNORE and eval_id not in done:
                    table[eval_id] = model[model_id]
                    done.add(eval_id)
        table[IGNORE] = 0
        return table

    def summary(self) -> Dict[str, object]:
        """Return ``miou``, ``pixel_accuracy`` and ``per_class_iou`` (``None`` when unscored)."""
        if not self.confusion.pixels:
            return {'miou': None, 'pixel_accuracy': None, 'per_class_iou': {}}
        return {'miou': self.confusion.miou(), 'pixel_accuracy': self.confusion.pixel_accuracy(),
                'per_class_iou': self.confusion.per_class_iou(self.class_names)}
