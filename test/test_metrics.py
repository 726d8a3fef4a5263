"""Confusion-matrix metrics against the official Cityscapes evaluator and a naive count."""

import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from evit_ros.eval.labels import CITYSCAPES_ID_TO_TRAINID, IGNORE, MAPPINGS
from evit_ros.eval.metrics import ConfusionMatrix, frame_iou, latency_summary
from evit_ros.eval.sample import render_frame

TRAINID_TO_ID = {train: label for label, train in CITYSCAPES_ID_TO_TRAINID.items()}


def official_scores(tmp_path, predictions, ground_truths):
    """Run cityscapesscripts' evaluateImgLists on labelId PNGs; return class -> IoU, mean."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official
    from cityscapesscripts.helpers.labels import trainId2label
    pred_files, gt_files = [], []
    for i, (pred, gt) in enumerate(zip(predictions, ground_truths)):
        # Predictions go to the evaluator as labelIds; 255 ("no class") as 0 (unlabeled).
        table = np.zeros(256, np.uint8)
        for train, label in TRAINID_TO_ID.items():
            table[train] = label
        pred_files.append(str(tmp_path / f'pred_{i}.png'))
        gt_files.append(str(tmp_path / f'x_{i}_gtFine_labelIds.png'))
        cv2.imwrite(pred_files[-1], table[pred])
        cv2.imwrite(gt_files[-1], gt)
    args = official.args
    args.evalInstLevelScore = False
    args.evalPixelAccuracy = False
    args.JSONOutput = False
    args.quiet = True
    results = official.evaluateImgLists(pred_files, gt_files, args)
    names = {trainId2label[t].name: t for t in range(19)}
    per_class = {names[name]: score for name, score in results['classScores'].items()
                 if name in names}
    return per_class, results['averageScoreClasses']


def to_label_ids(trainids):
    """Cityscapes labelIds for a trainId image (255 -> 0, unlabeled)."""
    table = np.zeros(256, np.uint8)
    for train, label in TRAINID_TO_ID.items():
        table[train] = label
    return table[trainids]


def perturbed(label, rng):
    """A plausible prediction: the truth with blocks of other classes and some 'no class'."""
    pred = label.copy()
    h, w = pred.shape
    for _ in range(40):
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        # truck, bus, train, motorcycle, bicycle (14..18) are never predicted nor true.
        pred[y:y + rng.integers(4, 40), x:x + rng.integers(4, 60)] = rng.integers(0, 14)
    pred[rng.random(pred.shape) < 0.01] = IGNORE
    return pred


def test_miou_equals_official_cityscapes_evaluator_on_synthetic_frames(tmp_path):
    rng = np.random.default_rng(3)
    gts, preds = [], []
    matrix = ConfusionMatrix(19)
    mapping = MAPPINGS['cityscapes']
    for index in (0, 7, 15):
        trainids = render_frame(index, (128, 256))[1]
        gt_ids = to_label_ids(trainids)
        gt_ids[:6] = 0           # unlabeled rows: not scored by either
        gt_ids[-4:, :30] = 1     # ego vehicle: ignored in evaluation
        pred = perturbed(trainids, rng)
        gts.append(gt_ids)
        preds.append(pred)
        matrix.update(mapping.ground_truth(gt_ids), pred)
    per_class, mean = official_scores(tmp_path, preds, gts)
    ours = matrix.iou()
    for train, score in per_class.items():
        if math.isnan(score):
            assert math.isnan(ours[train])
        else:
            assert ours[train] == pytest.approx(score, abs=1e-6)
    assert matrix.miou() == pytest.approx(mean, abs=1e-6)
    # Classes in neither truth nor prediction are NaN and the mean skips them.
    assert np.isnan(ours[14:]).all() and not np.isnan(ours[:14]).any()


def test_miou_equals_official_evaluator_on_real_b0_prediction(tmp_path, official_weights):
    from conftest import require_shared
    from evit_ros.runtime import Segmenter
    folder = require_shared('data', 'cityscapes_val_sample')
    rgb = cv2.imread(str(folder / 'frankfurt_000000_000294_leftImg8bit.png'))
    gt_ids = cv2.imread(str(folder / 'frankfurt_000000_000294_gtFine_labelIds.png'),
                        cv2.IMREAD_UNCHANGED)
    segmenter = Segmenter('b0-cityscapes', input_size=(256, 512))
    pred = segmenter.segment(rgb, 'bgr8')
    matrix = ConfusionMatrix(19)
    matrix.update(MAPPINGS['cityscapes'].ground_truth(gt_ids), pred)
    per_class, mean = official_scores(tmp_path, [pred], [gt_ids])
    assert matrix.miou() == pytest.approx(mean, abs=1e-6)
    for train, score in per_class.items():
        if not math.isnan(score):
            assert matrix.iou()[train] == pytest.approx(score, abs=1e-6)


def naive_iou(gt, pred, n):
    """Per-class IoU by set counting, the slow way."""
    out = []
    valid = gt < n
    for c in range(n):
        inter = np.count_nonzero((gt == c) & (pred == c) & valid)
        union = np.count_nonzero(((gt == c) | (pred == c)) & valid)
        out.append(inter / union if union else float('nan'))
    return np.array(out)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6).flatmap(lambda n: st.tuples(
    st.just(n),
    arrays(np.uint8, (5, 7), elements=st.sampled_from(list(range(n)) + [IGNORE, n])),
    arrays(np.uint8, (5, 7), elements=st.sampled_from(list(range(n)) + [IGNORE])))))
def test_iou_matches_naive_count(case):
    n, gt, pred = case
    matrix = ConfusionMatrix(n)
    matrix.update(gt, pred)
    expected = naive_iou(gt, pred, n)
    assert np.allclose(matrix.iou(), expected, equal_nan=True)
    scored = gt < n
    assert matrix.pixels == np.count_nonzero(scored)
    if scored.any():
        assert matrix.pixel_accuracy() == pytest.approx(
            np.count_nonzero((gt == pred) & scored) / np.count_nonzero(scored))
    if np.isnan(expected).all():
        assert math.isnan(matrix.miou())
    else:
        assert matrix.miou() == pytest.approx(np.nanmean(expected))


def test_miou_sums_intersections_over_the_set_not_frame_means():
    # Frame 1: class 0 right on 1 pixel of 1; frame 2: class 0 wrong on 3 pixels of 3.
    first = ConfusionMatrix(2)
    first.update(np.array([[0]]), np.array([[0]]))
    second = ConfusionMatrix(2)
    second.update(np.array([[0, 0, 0]]), np.array([[1, 1, 1]]))
    both = ConfusionMatrix(2)
    both.merge(first)
    both.merge(second)
    # Over the set: class 0 IoU 1/4, class 1 IoU 0/3 -> mIoU 0.125, not the frames' mean.
    assert both.iou()[0] == pytest.approx(0.25)
    assert both.iou()[1] == 0.0
    assert both.miou() == pytest.approx(0.125)
    assert both.pixel_accuracy() == pytest.approx(0.25)
    assert frame_iou(np.array([[0]]), np.array([[0]]), 2) == 1.0


def test_unknown_predictions_are_misses_not_false_positives():
    matrix = ConfusionMatrix(2)
    matrix.update(np.array([0, 0, 1, IGNORE]), np.array([0, 200, 1, 1]))
    assert matrix.iou().tolist() == [0.5, 1.0]
    assert matrix.pixels == 3


def test_empty_and_mismatched_input():
    matrix = ConfusionMatrix(3)
    assert math.isnan(matrix.miou()) and math.isnan(matrix.pixel_accuracy())
    with pytest.raises(ValueError, match='differ'):
        matrix.update(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match='class names'):
        matrix.per_class_iou(['a'])
    with pytest.raises(ValueError):
        ConfusionMatrix(0)


def test_latency_summary_percentiles():
    stats = latency_summary(range(1, 101))
    assert stats == {'count': 100, 'p50': pytest.approx(50.5), 'p90': pytest.approx(90.1),
                     'p99': pytest.approx(99.01), 'max': 100.0, 'mean': pytest.approx(50.5)}
    assert latency_summary([])['p50'] is None
    assert latency_summary([7.0])['p99'] == 7.0
