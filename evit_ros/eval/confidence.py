"""Does ``~/confidence`` mean something? Error rates of pixels by their confidence.

For each frame the label map and the confidence (the winning class's softmax probability,
as the node publishes it) are compared with the ground truth: of the scored pixels under
:data:`LOW` confidence, and of those over :data:`HIGH`, which fraction is labelled wrong.
A useful confidence has a much higher error rate under :data:`LOW` than over :data:`HIGH`.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import cv2

from evit_ros.eval.labels import IGNORE, LabelMapping

LOW = 0.5
HIGH = 0.9


@dataclass
class ConfidenceErrors:
    """Pixel counts by confidence band: scored pixels and the wrongly labelled among them."""

    low_pixels: int = 0
    low_errors: int = 0
    high_pixels: int = 0
    high_errors: int = 0
    frames: int = 0

    @property
    def low_error_rate(self) -> float:
        """Fraction of scored pixels under :data:`LOW` confidence that are wrong."""
        return self.low_errors / max(self.low_pixels, 1)

    @property
    def high_error_rate(self) -> float:
        """Fraction of scored pixels over :data:`HIGH` confidence that are wrong."""
        return self.high_errors / max(self.high_pixels, 1)


def confidence_errors(segmenter, images: Iterable[Path], labels: Path,
                      mapping: LabelMapping) -> ConfidenceErrors:
    """Segment each image and count errors under :data:`LOW` and over :data:`HIGH`.

    :param segmenter: an :class:`evit_ros.runtime.Segmenter`.
    :param images: RGB image files; each one's label is ``labels / name``.
    :param mapping: brings ground truth and predictions into one label set.
    """
    from evit_ros.runtime.confidence import confidence_map
    result = ConfidenceErrors()
    for path in images:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        label = cv2.imread(str(labels / path.name), cv2.IMREAD_UNCHANGED)
        if bgr is None or label is None:
            raise FileNotFoundError(f'cannot read {path} or its label in {labels}')
        label_map = segmenter.segment(bgr, 'bgr8')
        confidence = confidence_map(segmenter.logits, label_map.shape) / 255.0
        truth = mapping.ground_truth(label if label.ndim == 2 else label[:, :, 0])
        wrong = mapping.prediction(label_map) != truth
        scored = truth != IGNORE
        low = scored & (confidence < LOW)
        high = scored & (confidence > HIGH)
        result.low_pixels += int(low.sum())
        result.low_errors += int((wrong & low).sum())
        result.high_pixels += int(high.sum())
        result.high_errors += int((wrong & high).sum())
        result.frames += 1
    return result
