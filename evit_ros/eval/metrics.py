"""Segmentation metrics over a whole set (confusion matrix, IoU) and latency statistics.

The mIoU is the data-set protocol used by the Cityscapes evaluator: intersections and unions
are summed over every frame first, then each class's IoU is taken, and the mean runs over
the classes whose union is not empty.
"""

from typing import Dict, Iterable, Optional, Sequence

import numpy as np

from evit_ros.eval.labels import IGNORE


class ConfusionMatrix:
    """Pixel counts ``[ground truth, prediction]`` accumulated over frames.

    Ground-truth pixels outside ``0..num_classes-1`` (``IGNORE`` included) are not scored.
    A prediction outside that range (a model class with no evaluation class) is counted in
    an extra last column: a miss for the true class, a false positive for none.

    :param num_classes: number of evaluation classes.
    """

    def __init__(self, num_classes: int):
        if num_classes < 1:
            raise ValueError(f'num_classes must be at least 1, got {num_classes}')
        self.num_classes = int(num_classes)
        self.matrix = np.zeros((self.num_classes, self.num_classes + 1), dtype=np.int64)

    def update(self, ground_truth: np.ndarray, prediction: np.ndarray) -> None:
        """Add one frame: ground truth and prediction in evaluation ids, same shape.

        :raises ValueError: when the shapes differ.
        """
        gt = np.asarray(ground_truth)
        pred = np.asarray(prediction)
        if gt.shape != pred.shape:
            raise ValueError(f'ground truth {gt.shape} and prediction {pred.shape} differ')
        n = self.num_classes
        gt = gt.reshape(-1).astype(np.int64)
        pred = pred.reshape(-1).astype(np.int64)
        valid = (gt >= 0) & (gt < n)
        pred = np.where((pred >= 0) & (pred < n), pred, n)
        counts = np.bincount(gt[valid] * (n + 1) + pred[valid], minlength=n * (n + 1))
        self.matrix += counts.reshape(n, n + 1)

    def merge(self, other: 'ConfusionMatrix') -> None:
        """Add another matrix of the same size."""
        self.matrix += other.matrix

    @property
    def pixels(self) -> int:
        """Number of scored pixels."""
        return int(self.matrix.sum())

    def intersection_union(self):
        """Return per-class ``(intersection, union)`` pixel counts as int64 arrays."""
        square = self.matrix[:, :self.num_classes]
        tp = np.diag(square)
        gt_total = self.matrix.sum(axis=1)
        pred_total = square.sum(axis=0)
        return tp, gt_total + pred_total - tp

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for a class that appears in neither ground truth nor prediction."""
        inter, union = self.intersection_union()
        with np.errstate(divide='ignore', invalid='ignore'):
            return np.where(union > 0, inter / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        """Mean IoU over classes with a non-empty union (NaN when nothing was scored)."""
        iou = self.iou()
        valid = ~np.isnan(iou)
        return float(iou[valid].mean()) if valid.any() else float('nan')

    def pixel_accuracy(self) -> float:
        """Correct pixels / scored pixels (NaN when nothing was scored)."""
        total = self.pixels
        return float(np.trace(self.matrix[:, :self.num_classes]) / total) if total else float(
            'nan')

    def per_class_iou(self, class_names: Sequence[str]) -> Dict[str, Optional[float]]:
        """Return class name -> IoU (``None`` where the class never appeared)."""
        if len(class_names) != self.num_classes:
            raise ValueError(f'{len(class_names)} class names for {self.num_classes} classes')
        return {name: (None if np.isnan(value) else float(value))
                for name, value in zip(class_names, self.iou())}


def frame_iou(ground_truth: np.ndarray, prediction: np.ndarray, num_classes: int) -> float:
    """Return the mIoU of a single frame (classes present in it)."""
    matrix = ConfusionMatrix(num_classes)
    matrix.update(ground_truth, prediction)
    return matrix.miou()


def latency_summary(values_ms: Iterable[float]) -> Dict[str, Optional[float]]:
    """Return ``count``, ``p50``, ``p90``, ``p99``, ``max``, ``mean`` of latencies in ms.

    Percentiles interpolate linearly between samples (numpy's default); all values are
    ``None`` when there are no samples.
    """
    values = np.asarray(list(values_ms), dtype=np.float64)
    if values.size == 0:
        return {'count': 0, 'p50': None, 'p90': None, 'p99': None, 'max': None, 'mean': None}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {'count': int(values.size), 'p50': float(p50), 'p90': float(p90),
            'p99': float(p99), 'max': float(values.max()), 'mean': float(values.mean())}


__all__ = ['ConfusionMatrix', 'IGNORE', 'frame_iou', 'latency_summary']
