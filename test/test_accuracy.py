"""Accuracy of the official B0 on real labelled frames, through the whole Segmenter path.

Reference: /work/shared/README.md measured the official implementation with the same
checkpoint on the same 101 CamVid frames (736x960 bicubic in, logits bicubic back to
360x480): mIoU 69.3, reproduced by a faithful implementation to within 0.1.
"""

from conftest import require_shared
import cv2
import numpy as np
import pytest

from evit_ros.eval.labels import CAMVID_CLASSES, IGNORE, MAPPINGS
from evit_ros.runtime import Segmenter

CAMVID_VOID = 11

# Per-class IoU (%) that the official implementation gets on these frames (shared README).
OFFICIAL_CAMVID_IOU = {
    'Sky': 92.2, 'Building': 86.8, 'Pole': 24.7, 'Road': 96.2, 'Pavement': 87.3,
    'Tree': 83.7, 'SignSymbol': 39.6, 'Fence': 24.6, 'Car': 89.2, 'Pedestrian': 58.9,
    'Bicyclist': 78.9,
}


@pytest.fixture(scope='module')
def weights():
    """Path of the official B0 Cityscapes checkpoint; skips when absent."""
    return str(require_shared('weights', 'efficientvit_seg_b0_cityscapes.pt'))


def read_rgb(path):
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def read_label(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def confusion(ground_truth, prediction, num_classes):
    """Return the ``num_classes`` square confusion matrix [truth, prediction] of scored pixels."""
    gt = ground_truth.reshape(-1).astype(np.int64)
    pred = prediction.reshape(-1).astype(np.int64)
    scored = gt < num_classes
    assert (pred[scored] < num_classes).all()
    counts = np.bincount(gt[scored] * num_classes + pred[scored],
                         minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def test_b0_on_a_cityscapes_val_frame(weights):
    folder = require_shared('data', 'cityscapes_val_sample')
    rgb = read_rgb(folder / 'frankfurt_000000_000294_leftImg8bit.png')
    train_ids = read_label(folder / 'frankfurt_000000_000294_gtFine_labelTrainIds.png')
    label_ids = read_label(folder / 'frankfurt_000000_000294_gtFine_labelIds.png')
    assert rgb.shape == (128, 256, 3)
    # Our labelIds -> train id table agrees with the data set's own train ids except on 77
    # boundary pixels (0.23%): the two label files were downscaled separately.
    mapped = MAPPINGS['cityscapes'].ground_truth(label_ids)
    assert (mapped == train_ids).mean() >= 0.997

    segmenter = Segmenter('b0-cityscapes', weights=weights, input_size=(512, 1024))
    label_map = segmenter.segment(rgb, 'rgb8')
    assert label_map.shape == train_ids.shape
    scored = train_ids != IGNORE
    accuracy = (label_map[scored] == train_ids[scored]).mean()
    # Measured 0.9573 (the shared README: "about 95%").
    assert accuracy >= 0.95


@pytest.fixture(scope='module')
def camvid_confusion(weights):
    """Confusion matrix of the official B0 over the 101 CamVid val frames at 736x960."""
    images = sorted(require_shared('data', 'camvid', 'val').glob('*.png'))
    labels = require_shared('data', 'camvid', 'valannot')
    assert len(images) == 101
    mapping = MAPPINGS['camvid']
    segmenter = Segmenter('b0-cityscapes', weights=weights, input_size=(736, 960))
    total = np.zeros((11, 11), np.int64)
    for path in images:
        label = read_label(labels / path.name)
        assert label.shape == (360, 480) and label.max() <= CAMVID_VOID
        label_map = segmenter.segment(read_rgb(path), 'rgb8')
        assert label_map.shape == (360, 480)
        total += confusion(mapping.ground_truth(label), mapping.prediction(label_map), 11)
    return total


def camvid_iou(matrix):
    inter = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - inter
    return 100.0 * inter / union


def test_b0_camvid_miou_reproduces_the_official_implementation(camvid_confusion):
    iou = camvid_iou(camvid_confusion)
    assert camvid_confusion.sum() > 101 * 360 * 480 * 0.9     # void is rare
    # Measured 69.273 (the official implementation: 69.3).
    assert iou.mean() == pytest.approx(69.3, abs=0.1)


def test_b0_camvid_per_class_iou_matches_the_official_implementation(camvid_confusion):
    iou = dict(zip(CAMVID_CLASSES, camvid_iou(camvid_confusion)))
    assert list(iou) == list(OFFICIAL_CAMVID_IOU)
    # Measured: Sky 92.3, Building 86.9, Pole 24.7, Road 96.2, Pavement 87.3, Tree 83.7,
    # SignSymbol 39.3, Fence 24.6, Car 89.3, Pedestrian 58.9, Bicyclist 78.8. SignSymbol, a
    # small class whose few pixels move with interpolation details, is 0.35 off.
    for name, official in OFFICIAL_CAMVID_IOU.items():
        assert iou[name] == pytest.approx(official, abs=0.5), name
