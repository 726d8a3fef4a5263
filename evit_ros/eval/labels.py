"""Ground-truth label formats and class mappings between label sets.

A :class:`LabelMapping` turns a ground-truth image into the evaluation label set and, where
the model predicts another label set, turns predictions into it too. ``IGNORE`` (255) marks
pixels that are not scored.
"""

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

IGNORE = 255

#: Cityscapes ``labelIds`` -> train ids (the data set's official table; others ignored).
CITYSCAPES_ID_TO_TRAINID: Dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
    25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}

CAMVID_CLASSES: Tuple[str, ...] = (
    'Sky', 'Building', 'Pole', 'Road', 'Pavement', 'Tree', 'SignSymbol', 'Fence', 'Car',
    'Pedestrian', 'Bicyclist')

#: Cityscapes train id -> CamVid 11-class id, for scoring a Cityscapes model on CamVid.
CITYSCAPES_TO_CAMVID: Dict[int, int] = {
    0: 3,                   # road -> Road
    1: 4,                   # sidewalk -> Pavement
    2: 1, 3: 1,             # building, wall -> Building
    4: 7,                   # fence -> Fence
    5: 2,                   # pole -> Pole
    6: 6, 7: 6,             # traffic light, traffic sign -> SignSymbol
    8: 5, 9: 5,             # vegetation, terrain -> Tree
    10: 0,                  # sky -> Sky
    11: 9,                  # person -> Pedestrian
    12: 10, 17: 10, 18: 10,  # rider, motorcycle, bicycle -> Bicyclist
    13: 8, 14: 8, 15: 8, 16: 8,  # car, truck, bus, train -> Car
}


def lookup_table(mapping: Dict[int, int], size: int = 256) -> np.ndarray:
    """Return a uint8 table sending each key to its value and everything else to IGNORE."""
    table = np.full(size, IGNORE, dtype=np.uint8)
    for src, dst in mapping.items():
        table[src] = dst
    return table


@dataclass(frozen=True)
class LabelMapping:
    """How ground truth and predictions are brought into one evaluation label set.

    :param name: the name users select (``cityscapes``, ``camvid``, ``trainid``, ``ade20k``).
    :param class_names: the evaluation classes, or ``None`` for the model's own.
    :param gt_table: ground-truth pixel value -> evaluation id (``None``: values are ids).
    :param gt_offset: subtracted from ground truth first (ADE20K: png - 1, 0 -> ignore).
    :param pred_table: model class id -> evaluation id (``None``: identity).
    """

    name: str
    class_names: Optional[Tuple[str, ...]] = None
    gt_table: Optional[Tuple[int, ...]] = None
    gt_offset: int = 0
    pred_table: Optional[Tuple[int, ...]] = None

    def ground_truth(self, label: np.ndarray) -> np.ndarray:
        """Return ``label`` (uint8 image) in evaluation ids, IGNORE where unscored."""
        label = np.asarray(label)
        if self.gt_offset:
            shifted = label.astype(np.int32) - self.gt_offset
            label = np.where(shifted < 0, IGNORE, shifted).astype(np.uint8)
        if self.gt_table is not None:
            label = np.asarray(self.gt_table, dtype=np.uint8)[label.astype(np.int64)]
        return label.astype(np.uint8)

    def prediction(self, label_map: np.ndarray) -> np.ndarray:
        """Return a model's label map in evaluation ids."""
        if self.pred_table is None:
            return label_map
        return np.asarray(self.pred_table, dtype=np.uint8)[label_map.astype(np.int64)]

    def classes(self, model_classes: Sequence[str]) -> Tuple[str, ...]:
        """Return the evaluation class names, given the model's."""
        return tuple(self.class_names) if self.class_names else tuple(model_classes)


MAPPINGS: Dict[str, LabelMapping] = {
    'cityscapes': LabelMapping('cityscapes',
                               gt_table=tuple(lookup_table(CITYSCAPES_ID_TO_TRAINID))),
    'trainid': LabelMapping('trainid'),
    'ade20k': LabelMapping('ade20k', gt_offset=1),
    # CamVid's value 11 is void: only 0..10 are scored.
    'camvid': LabelMapping('camvid', CAMVID_CLASSES,
                           gt_table=tuple(lookup_table({i: i for i in range(11)})),
                           pred_table=tuple(lookup_table(CITYSCAPES_TO_CAMVID))),
}
